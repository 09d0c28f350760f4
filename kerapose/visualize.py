"""Drawing poses on images: skeleton limbs, keypoints and boxes, one colour per person.

Pure array in, array out (no file I/O), so the CLI, the on-device runner and notebooks share it.
"""

from __future__ import annotations

import numpy as np

from kerapose.skeleton import KeypointSet, get_keypoint_set

__all__ = ["PALETTE", "draw_poses", "person_color"]

# A fixed RGB palette (well separated hues), so person i has the same colour in every frame.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
    (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
    (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128),
)


def person_color(index: int) -> tuple[int, int, int]:
    """The RGB colour of person ``index`` (cycles through :data:`PALETTE`)."""
    return PALETTE[int(index) % len(PALETTE)]


def draw_poses(
    image_rgb: np.ndarray,
    keypoints: np.ndarray,
    boxes: np.ndarray | None = None,
    scores: np.ndarray | None = None,
    keypoint_set: str | KeypointSet = "coco17",
    min_score: float = 0.1,
) -> np.ndarray:
    """A copy of ``image_rgb`` with the people drawn on it.

    Args:
        image_rgb: RGB uint8 ``[H, W, 3]`` (left unchanged).
        keypoints: ``[N, K, 3]`` (x, y, score) in the image's pixels.
        boxes: optional ``[N, 4]`` (x1, y1, x2, y2) pixels.
        scores: optional ``[N]`` pose scores, written beside each box.
        keypoint_set: the set whose limbs are drawn (K must match).
        min_score: keypoints scoring below this (and limbs touching them) are not drawn.
    """
    import cv2

    img = np.asarray(image_rgb)
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"image_rgb: expected RGB [H, W, 3], got shape {img.shape}")
    if img.dtype != np.uint8:
        raise ValueError(f"image_rgb: expected dtype uint8, got {img.dtype}")
    kps = get_keypoint_set(keypoint_set)
    kp = np.asarray(keypoints, dtype=np.float64)
    if kp.size == 0:
        kp = kp.reshape(0, kps.num_keypoints, 3)
    if kp.ndim != 3 or kp.shape[1:] != (kps.num_keypoints, 3):
        raise ValueError(f"keypoints: expected [N, {kps.num_keypoints}, 3] for keypoint set {kps.name!r}, "
                         f"got shape {kp.shape}")
    n = kp.shape[0]
    if boxes is not None:
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) if np.size(boxes) else np.zeros((0, 4))
        if boxes.shape[0] != n:
            raise ValueError(f"boxes: expected [{n}, 4] (one per person), got shape {boxes.shape}")
    if scores is not None:
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        if scores.shape[0] != n:
            raise ValueError(f"scores: expected [{n}] (one per person), got shape {scores.shape}")

    out = np.ascontiguousarray(img).copy()
    h, w = out.shape[:2]
    # line widths grow with the image so drawings stay visible on large photos
    thick = max(1, round(max(h, w) / 320))
    radius = thick + 1

    lim = 4 * max(h, w)  # OpenCV takes int32 points: clip wild coordinates far outside the image

    def pt(p) -> tuple[int, int]:
        return int(round(min(max(p[0], -lim), lim))), int(round(min(max(p[1], -lim), lim)))

    for i in range(n):
        color = person_color(i)
        pose = kp[i]
        ok = np.isfinite(pose).all(axis=1) & (pose[:, 2] >= min_score)
        if boxes is not None and np.isfinite(boxes[i]).all():
            x1, y1, x2, y2 = boxes[i]
            cv2.rectangle(out, pt((x1, y1)), pt((x2, y2)), color, thick, cv2.LINE_AA)
            if scores is not None and np.isfinite(scores[i]):
                cv2.putText(out, f"{scores[i]:.2f}", (pt((x1, y1))[0], max(pt((x1, y1))[1] - 3, 10)),
                            cv2.FONT_HERSHEY_SIMPLEX, 0.35 * thick, color, thick, cv2.LINE_AA)
        for a, b in kps.limbs:
            if ok[a] and ok[b]:
                cv2.line(out, pt(pose[a]), pt(pose[b]), color, thick + 1, cv2.LINE_AA)
        for j in np.flatnonzero(ok):
            cv2.circle(out, pt(pose[j]), radius, color, -1, cv2.LINE_AA)
            cv2.circle(out, pt(pose[j]), radius, (255, 255, 255), 1, cv2.LINE_AA)
    return out
