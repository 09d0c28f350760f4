"""Geometric augmentation: one affine warp per sample (rotation, scale, crop, flip).

Coordinate conventions (the same as :mod:`kerapose.codecs.grid` and OpenCV):

* **Keypoints** are COCO pixel coordinates with pixel *centres* at integers: pixel ``(i, j)``
  is the point ``x = j, y = i``. A 2x3 matrix ``M`` maps an input point ``p`` to the output
  point ``M @ [x, y, 1]``; ``cv2.warpAffine(image, M, ...)`` samples output pixel ``q`` at
  input point ``M^-1 q`` in the same convention, so a keypoint and the image content under it
  move together exactly.
* **Boxes** are edge coordinates (an image spans ``[0, W] x [0, H]``, COCO's box range), half
  a pixel off the centre frame: a box corner ``b`` maps to ``M @ (b - 0.5) + 0.5``. With this a
  2x enlargement maps the box ``[0, W]`` to ``[0, 2W]``, as it should.
* **Flips** mirror about the output's centre column, ``x' = W_out - 1 - x``, applied after
  ``M``, and relabel left/right keypoints with the keypoint set's ``flip_index``.

:func:`random_affine` draws the crop (centre, scale, rotation, jitter) as a 2x3 matrix;
:func:`apply_affine` warps an image, its keypoints, boxes and masks with it (and an optional
flip); :func:`augment` does both for an :class:`~kerapose.data.coco.ImageRecord` and also
returns an ``ImageRecord`` of the crop whose segmentations are RLEs of the warped masks, so
the target codecs (heatmaps, PAFs, segmentation, boxes, PRN) encode the crop unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import cv2
import numpy as np

from kerapose.data.coco import ImageRecord
from kerapose.skeleton import KeypointSet, get_keypoint_set

__all__ = [
    "AugmentConfig",
    "random_affine",
    "crop_matrix",
    "flip_matrix",
    "compose",
    "transform_points",
    "transform_keypoints",
    "transform_boxes",
    "apply_affine",
    "record_masks",
    "augment",
]

CENTER_MODES = ("crowd", "person", "image")


@dataclass(frozen=True)
class AugmentConfig:
    """Parameters of the random crop.

    Args:
        output_size: (H, W) of the crop.
        rotation_deg: rotation drawn uniformly from ``[-rotation_deg, rotation_deg]``
            (positive = counter-clockwise on screen, OpenCV's ``getRotationMatrix2D`` sense).
        scale_range: random scale multiplier drawn uniformly from this range.
        flip_prob: probability of a horizontal flip.
        pad_value: image fill outside the source (0 for MultiPoseNet, 128 for the
            OpenPose / FTN recipes); a scalar or one value per channel.
        center: ``"crowd"``: the centroid of the non-crowd people's box centres (MultiPoseNet);
            ``"person"``: the box centre of one random non-crowd person, preferring people
            with labelled keypoints (OpenPose / FTN); ``"image"``: the image centre. Without
            people, ``"crowd"`` and ``"person"`` fall back to the image centre.
        target_height: if set, the base scale makes the centred person (for ``"crowd"``: the
            mean non-crowd box height) this many output pixels tall before the random
            multiplier (e.g. 220 for FTN). Otherwise the base scale is 1 (native resolution),
            or the largest scale at which the whole image fits when ``fit_image`` is true.
        fit_image: base scale ``min(H_out / H, W_out / W)`` when ``target_height`` is unset.
        center_jitter: the crop centre moves by up to this many *output* pixels in x and y.
    """

    output_size: tuple[int, int] = (480, 480)
    rotation_deg: float = 40.0
    scale_range: tuple[float, float] = (0.8, 1.2)
    flip_prob: float = 0.5
    pad_value: float | tuple[float, ...] = 0
    center: str = "crowd"
    target_height: float | None = None
    fit_image: bool = False
    center_jitter: float = 0.0

    def __post_init__(self) -> None:
        size = tuple(int(v) for v in self.output_size)
        if len(size) != 2 or min(size) < 1 or tuple(self.output_size) != size:
            raise ValueError(f"output_size: expected (H, W) positive integers, got {self.output_size!r}")
        object.__setattr__(self, "output_size", size)
        lo, hi = (float(v) for v in self.scale_range)
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range: expected 0 < low <= high, got {self.scale_range!r}")
        object.__setattr__(self, "scale_range", (lo, hi))
        if not 0 <= self.flip_prob <= 1:
            raise ValueError(f"flip_prob: expected a probability in [0, 1], got {self.flip_prob!r}")
        if self.rotation_deg < 0:
            raise ValueError(f"rotation_deg: expected >= 0, got {self.rotation_deg!r}")
        if self.center not in CENTER_MODES:
            raise ValueError(f"center: expected one of {CENTER_MODES}, got {self.center!r}")
        if self.target_height is not None and not self.target_height > 0:
            raise ValueError(f"target_height: expected a positive pixel height or None, got {self.target_height!r}")
        if self.center_jitter < 0:
            raise ValueError(f"center_jitter: expected >= 0, got {self.center_jitter!r}")


# ------------------------------------------------------------------------- matrices


def compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """2x3 matrix of ``outer(inner(p))``."""
    a = np.vstack([np.asarray(outer, np.float64), [0.0, 0.0, 1.0]])
    b = np.vstack([np.asarray(inner, np.float64), [0.0, 0.0, 1.0]])
    return (a @ b)[:2]


def flip_matrix(width: int) -> np.ndarray:
    """Horizontal mirror of a ``width``-pixel-wide image in the pixel-centre frame."""
    return np.array([[-1.0, 0.0, width - 1.0], [0.0, 1.0, 0.0]])


def crop_matrix(
    center: tuple[float, float],
    scale: float,
    rotation_deg: float,
    output_size: tuple[int, int],
    shift: tuple[float, float] = (0.0, 0.0),
) -> np.ndarray:
    """2x3 matrix taking input point ``center`` (x, y) to the output centre (plus ``shift``),
    scaling by ``scale`` and rotating by ``rotation_deg`` about it."""
    h, w = output_size
    t = math.radians(rotation_deg)
    # y points down, so this rotation is counter-clockwise on screen (as getRotationMatrix2D).
    c, s = math.cos(t) * scale, math.sin(t) * scale
    lin = np.array([[c, s], [-s, c]])
    out_c = np.array([(w - 1) / 2.0 + shift[0], (h - 1) / 2.0 + shift[1]])
    return np.hstack([lin, (out_c - lin @ np.asarray(center, np.float64))[:, None]])


def _sizes(record_or_sizes) -> tuple[int, int, np.ndarray, np.ndarray, np.ndarray]:
    """-> (height, width, boxes, iscrowd, labelled) of a record or an (H, W) pair."""
    if isinstance(record_or_sizes, ImageRecord):
        r = record_or_sizes
        boxes = np.asarray(r.boxes, np.float64).reshape(-1, 4)
        crowd = np.asarray(r.iscrowd, bool).reshape(-1)
        if crowd.shape[0] != boxes.shape[0]:
            raise ValueError(f"record {r.image_id}: {crowd.shape[0]} iscrowd flags for {boxes.shape[0]} boxes")
        return int(r.height), int(r.width), boxes, crowd, np.asarray(r.num_keypoints_labelled) > 0
    try:
        h, w = (int(v) for v in record_or_sizes)
    except (TypeError, ValueError):
        raise ValueError(
            f"record_or_sizes: expected an ImageRecord or (height, width), got {record_or_sizes!r}"
        ) from None
    if h < 1 or w < 1:
        raise ValueError(f"record_or_sizes: image size must be positive, got ({h}, {w})")
    empty = np.zeros((0,), bool)
    return h, w, np.zeros((0, 4)), empty, empty


def random_affine(
    record_or_sizes: ImageRecord | tuple[int, int], cfg: AugmentConfig, rng: np.random.Generator
) -> np.ndarray:
    """Draw a crop as a 2x3 float64 matrix (input pixel -> output pixel), without the flip.

    ``record_or_sizes`` is an :class:`ImageRecord` (its boxes choose the centre and the
    ``target_height`` scale) or an ``(H, W)`` pair (image centre). Draw the flip separately,
    e.g. ``rng.random() < cfg.flip_prob`` as :func:`augment` does, and pass it to
    :func:`apply_affine`.
    """
    h, w, boxes, crowd, labelled = _sizes(record_or_sizes)
    people = np.flatnonzero(~crowd & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]))
    center = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
    ref_height = None
    if cfg.center != "image" and people.size:
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2.0 - 0.5  # box edge frame -> pixel-centre frame
        heights = boxes[:, 3] - boxes[:, 1]
        if cfg.center == "crowd":
            center, ref_height = centres[people].mean(axis=0), float(heights[people].mean())
        else:
            pool = people[labelled[people]] if labelled[people].any() else people
            i = int(rng.choice(pool))
            center, ref_height = centres[i], float(heights[i])
    out_h, out_w = cfg.output_size
    if cfg.target_height is not None and ref_height:
        base = cfg.target_height / ref_height
    elif cfg.fit_image:
        base = min(out_h / h, out_w / w)
    else:
        base = 1.0
    scale = base * rng.uniform(*cfg.scale_range)
    angle = rng.uniform(-cfg.rotation_deg, cfg.rotation_deg) if cfg.rotation_deg else 0.0
    shift = rng.uniform(-cfg.center_jitter, cfg.center_jitter, size=2) if cfg.center_jitter else (0.0, 0.0)
    return crop_matrix(tuple(center), scale, angle, cfg.output_size, tuple(shift))


# ---------------------------------------------------------------------- transforms


def _check_matrix(matrix) -> np.ndarray:
    m = np.asarray(matrix, np.float64)
    if m.shape != (2, 3) or not np.isfinite(m).all():
        raise ValueError(f"matrix: expected a finite 2x3 affine matrix, got shape {m.shape}")
    if abs(np.linalg.det(m[:, :2])) < 1e-12:
        raise ValueError("matrix: the 2x2 linear part is singular")
    return m


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """``[..., 2]`` points (x, y) -> ``M @ [x, y, 1]``, float64."""
    p = np.asarray(points, np.float64)
    m = np.asarray(matrix, np.float64)
    return p @ m[:, :2].T + m[:, 2]


def transform_keypoints(
    keypoints: np.ndarray,
    matrix: np.ndarray,
    output_size: tuple[int, int],
    flip_index: np.ndarray | None = None,
) -> np.ndarray:
    """Warp ``[N, K, 3]`` keypoints; relabel with ``flip_index`` when the warp mirrors.

    A keypoint is kept when it is labelled (v > 0) and its transformed position lies on an
    output pixel (``-0.5 <= x < W - 0.5``, likewise y); every other keypoint becomes
    ``(0, 0, 0)``, COCO's "not labelled", so ``v == 0`` always means zero coordinates.
    """
    kp = np.asarray(keypoints, np.float64)
    if kp.ndim != 3 or kp.shape[-1] != 3:
        raise ValueError(f"keypoints: expected [N, K, 3], got shape {kp.shape}")
    h, w = output_size
    xy = transform_points(kp[..., :2], matrix)
    inside = (xy[..., 0] >= -0.5) & (xy[..., 0] < w - 0.5) & (xy[..., 1] >= -0.5) & (xy[..., 1] < h - 0.5)
    keep = (kp[..., 2] > 0) & inside & np.isfinite(xy).all(-1)
    out = np.where(keep[..., None], np.concatenate([xy, kp[..., 2:]], axis=-1), 0.0)
    if flip_index is not None:
        fi = np.asarray(flip_index, np.int64)
        if fi.shape != (kp.shape[1],):
            raise ValueError(f"flip_index: expected {kp.shape[1]} entries (one per keypoint), got shape {fi.shape}")
        out = out[:, fi]
    return out.astype(np.float32)


def transform_boxes(boxes: np.ndarray, matrix: np.ndarray, output_size: tuple[int, int]) -> np.ndarray:
    """``[N, 4]`` edge-frame boxes -> axis-aligned boxes of their warped corners, clipped to
    ``[0, W] x [0, H]`` (a box that leaves the crop becomes empty, x1 == x2 or y1 == y2)."""
    b = np.asarray(boxes, np.float64)
    if b.ndim != 2 or b.shape[-1] != 4:
        raise ValueError(f"boxes: expected [N, 4] (x1, y1, x2, y2), got shape {b.shape}")
    corners = np.stack([b[:, [0, 1]], b[:, [2, 1]], b[:, [0, 3]], b[:, [2, 3]]], axis=1)
    warped = transform_points(corners - 0.5, matrix) + 0.5
    h, w = output_size
    lo = np.clip(warped.min(axis=1), 0, [w, h])
    hi = np.clip(warped.max(axis=1), 0, [w, h])
    return np.concatenate([lo, hi], axis=1).astype(np.float32)


def _border(pad_value, channels: int):
    pv = np.atleast_1d(np.asarray(pad_value, np.float64))
    if pv.size == 1:
        pv = np.repeat(pv, max(channels, 1))
    if pv.size != max(channels, 1) or pv.size > 4:
        raise ValueError(f"pad_value: expected a scalar or {channels} values (<= 4 channels), got {pad_value!r}")
    return tuple(float(v) for v in pv) + (0.0,) * (4 - pv.size)


def _warp_masks(masks, matrix: np.ndarray, output_size: tuple[int, int]) -> np.ndarray:
    h, w = output_size
    if masks is None:
        return np.zeros((0, h, w), np.uint8)
    ms = [np.asarray(m) for m in masks] if isinstance(masks, (list, tuple)) else list(np.asarray(masks))
    if not ms:
        return np.zeros((0, h, w), np.uint8)
    shape = ms[0].shape
    if any(m.ndim != 2 or m.shape != shape for m in ms):
        raise ValueError(f"masks: expected [M, h, w] masks of one size, got shapes {sorted({m.shape for m in ms})}")
    # One mask per warp: OpenCV's 2-channel and >4-channel nearest-neighbour paths round
    # near-tie samples differently from its single-channel path, which picks the exact nearest
    # pixel (measured: ~0.2 % of pixels differ on random rotations).
    out = np.empty((len(ms), h, w), np.uint8)
    for i, mk in enumerate(ms):
        out[i] = cv2.warpAffine(
            np.ascontiguousarray(mk, dtype=np.uint8), matrix, (w, h),
            flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0,
        )
    return out


def apply_affine(
    image: np.ndarray,
    keypoints: np.ndarray,
    boxes: np.ndarray,
    masks,
    matrix: np.ndarray,
    output_size: tuple[int, int],
    flip: bool = False,
    flip_index: np.ndarray | None = None,
    pad_value: float | tuple[float, ...] = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Warp a sample with one affine map (``matrix``, then a mirror when ``flip``).

    Args:
        image: ``[H, W]`` or ``[H, W, C]`` (C <= 4), any dtype OpenCV warps; bilinear, the
            outside filled with ``pad_value``.
        keypoints: ``[N, K, 3]``; see :func:`transform_keypoints` for what leaves the crop.
        boxes: ``[N, 4]`` x1, y1, x2, y2; see :func:`transform_boxes`.
        masks: ``[M, H, W]`` array or list of ``[H, W]`` masks (or None); nearest-neighbour.
        matrix: 2x3 input -> output matrix (:func:`random_affine`).
        output_size: (H_out, W_out).
        flip: mirror horizontally after ``matrix`` and swap left/right keypoints.
        flip_index: the keypoint set's ``flip_index``; required when ``flip``.

    Returns:
        ``(image, keypoints [N, K, 3] float32, boxes [N, 4] float32, masks [M, H_out, W_out]
        uint8)``; annotations are never dropped, so indices stay aligned.
    """
    m = _check_matrix(matrix)
    try:
        out_h, out_w = (int(v) for v in output_size)
    except (TypeError, ValueError):
        raise ValueError(f"output_size: expected (H, W), got {output_size!r}") from None
    img = np.asarray(image)
    if img.ndim not in (2, 3) or img.shape[0] < 1 or img.shape[1] < 1:
        raise ValueError(f"image: expected [H, W] or [H, W, C], got shape {img.shape}")
    if flip:
        if flip_index is None:
            raise ValueError("flip=True needs flip_index (the keypoint set's left/right permutation)")
        m = compose(flip_matrix(out_w), m)
    channels = img.shape[2] if img.ndim == 3 else 1
    warped = cv2.warpAffine(
        img, m, (out_w, out_h), flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT, borderValue=_border(pad_value, channels),
    )
    if img.ndim == 3 and warped.ndim == 2:  # OpenCV drops a trailing 1-channel axis
        warped = warped[..., None]
    kp = transform_keypoints(keypoints, m, (out_h, out_w), flip_index if flip else None)
    bx = transform_boxes(boxes, m, (out_h, out_w))
    if len(kp) != len(bx):
        raise ValueError(f"keypoints and boxes disagree on the number of annotations: {len(kp)} vs {len(bx)}")
    return warped, kp, bx, _warp_masks(masks, m, (out_h, out_w))


# ---------------------------------------------------------------------- records


def record_masks(record: ImageRecord) -> np.ndarray:
    """``[N, H, W]`` uint8 full-resolution mask of each annotation (pycocotools), box-shaped
    for annotations without a segmentation (the fallback of the segmentation codec)."""
    from kerapose.codecs.segmentation import region_mask

    n = len(record.boxes)
    out = np.zeros((n, int(record.height), int(record.width)), np.uint8)
    for i in range(n):
        out[i] = region_mask(record, np.arange(n) == i)
    return out


def _encode_rles(masks: np.ndarray) -> list:
    from pycocotools import mask as mask_utils

    if len(masks) == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(np.moveaxis(masks, 0, -1).astype(np.uint8)))
    return list(rles)


def augment(
    record: ImageRecord,
    image: np.ndarray,
    cfg: AugmentConfig,
    rng: np.random.Generator,
    keypoint_set: str | KeypointSet,
    with_masks: bool = True,
) -> dict:
    """One random crop of an annotated image: everything the codecs need for the crop.

    Returns a dict with ``image`` (``cfg.output_size`` + channels, input dtype),
    ``keypoints [N, K, 3]``, ``boxes [N, 4]``, ``iscrowd [N]``, ``masks [N, H_out, W_out]``
    uint8 (each annotation's region, rasterised at the original size then warped; empty
    ``[0, ...]`` when ``with_masks`` is false), ``matrix`` (2x3, flip included: input ->
    crop pixels), ``flipped``, and ``record``: an :class:`ImageRecord` of the crop (size
    ``cfg.output_size``, areas scaled by the warp, segmentations the masks' RLEs; ``path``
    still names the source file) for the codecs that take records. A person whose labelled
    keypoints all leave the crop keeps its (possibly partly visible) mask, so
    :func:`kerapose.codecs.segmentation.ignore_mask` then masks it out of the loss.
    """
    if not isinstance(record, ImageRecord):
        raise ValueError(f"record: expected an ImageRecord, got {type(record).__name__}")
    kps = get_keypoint_set(keypoint_set)
    img = np.asarray(image)
    if img.ndim < 2 or img.shape[:2] != (record.height, record.width):
        raise ValueError(
            f"image: shape {img.shape} does not match record {record.image_id} "
            f"({record.height}, {record.width})"
        )
    if record.keypoints.shape[1:] != (kps.num_keypoints, 3):
        raise ValueError(
            f"record.keypoints: expected [N, {kps.num_keypoints}, 3] for keypoint set {kps.name!r}, "
            f"got {record.keypoints.shape}"
        )
    matrix = random_affine(record, cfg, rng)
    flip = bool(rng.random() < cfg.flip_prob)
    masks = record_masks(record) if with_masks else None
    out_img, kp, boxes, out_masks = apply_affine(
        img, record.keypoints, record.boxes, masks, matrix, cfg.output_size,
        flip=flip, flip_index=kps.flip_index, pad_value=cfg.pad_value,
    )
    full = compose(flip_matrix(cfg.output_size[1]), matrix) if flip else matrix
    iscrowd = np.asarray(record.iscrowd, bool).copy()
    crop = replace(
        record,
        height=cfg.output_size[0],
        width=cfg.output_size[1],
        keypoints=kp,
        boxes=boxes,
        iscrowd=iscrowd,
        areas=(np.asarray(record.areas, np.float64) * abs(np.linalg.det(full[:, :2]))).astype(np.float32),
        ann_ids=np.asarray(record.ann_ids).copy(),
        # Without masks, fall back to the warped boxes (the codecs' own fallback).
        segmentations=_encode_rles(out_masks) if with_masks else [None] * len(boxes),
    )
    return {
        "image": out_img,
        "keypoints": kp,
        "boxes": boxes,
        "iscrowd": iscrowd,
        "masks": out_masks,
        "matrix": full,
        "flipped": flip,
        "record": crop,
    }
