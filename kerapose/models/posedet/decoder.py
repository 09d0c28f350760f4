"""In-graph PoseDet decoding and the end-to-end graph (uint8 image of any size -> people).

Every candidate's refined pose and score -> top-k pre-selection -> greedy OKS-NMS (or IoU-NMS
on the poses' extent boxes, the paper's ablation) -> the M best poses, padded, in the original
image's pixels. Only TFLite builtin ops (top_k, gathers, a while loop of element-wise ops and
reductions) and ops tf2onnx converts at opset 17.

Greedy NMS as a fixed point: with the candidates sorted by score and ``S[i, j] = 1`` where
candidate i (higher) would suppress j (overlap above the threshold), the greedy result is the
unique ``keep`` with ``keep[j] = valid[j] and not any_i<j (keep[i] and S[i, j])``. Iterating
that map from ``keep = valid`` makes one more position final per step, so it reaches the greedy
answer after at most k steps and stops as soon as ``keep`` no longer changes (a handful of steps
in practice: the length of the longest suppression chain). Each step is one [k, k] reduction.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from kerapose import float_math
from kerapose.codecs.posedet import DEFAULT_OKS_NMS_THRESHOLD, MIN_NMS_AREA
from kerapose.layers import Letterbox
from kerapose.skeleton import get_keypoint_set

__all__ = ["NMS_KINDS", "PoseDetDecoder", "greedy_nms_tf", "pairwise_oks_tf", "pairwise_iou_tf",
           "pose_boxes_tf", "posedet_end_to_end"]

NMS_KINDS = ("oks", "iou")


def pose_boxes_tf(xy):
    """``[..., K, 2]`` poses -> ``[..., 4]`` extent boxes (x1, y1, x2, y2)."""
    lo = tf.reduce_min(xy, axis=-2)
    hi = tf.reduce_max(xy, axis=-2)
    return tf.concat([lo, hi], axis=-1)


def pairwise_oks_tf(xy, sigmas, min_area: float = MIN_NMS_AREA):
    """``[B, N, K, 2]`` -> ``[B, N, N]`` OKS between poses, as :func:`kerapose.evaluation.oks_nms`
    computes it: all K joints, the mean of the two poses' areas, areas = extent box clamped to
    ``min_area`` (:func:`kerapose.codecs.posedet.pose_areas`)."""
    box = pose_boxes_tf(xy)
    area = tf.maximum((box[..., 2] - box[..., 0]) * (box[..., 3] - box[..., 1]), min_area)  # [B, N]
    mean_area = (area[:, :, None] + area[:, None, :]) / 2.0
    d2 = tf.reduce_sum(tf.square(xy[:, :, None] - xy[:, None, :]), axis=-1)  # [B, N, N, K]
    var = tf.constant((2.0 * np.asarray(sigmas, np.float64)) ** 2, tf.float32)
    e = d2 / var / mean_area[..., None] / 2.0
    return tf.reduce_mean(tf.exp(-e), axis=-1)


def pairwise_iou_tf(boxes):
    """``[B, N, 4]`` (x1, y1, x2, y2) -> ``[B, N, N]`` IoU."""
    x1, y1, x2, y2 = (boxes[..., i] for i in range(4))
    area = tf.maximum(x2 - x1, 0.0) * tf.maximum(y2 - y1, 0.0)
    iw = tf.maximum(tf.minimum(x2[:, :, None], x2[:, None, :]) - tf.maximum(x1[:, :, None], x1[:, None, :]), 0.0)
    ih = tf.maximum(tf.minimum(y2[:, :, None], y2[:, None, :]) - tf.maximum(y1[:, :, None], y1[:, None, :]), 0.0)
    inter = iw * ih
    union = area[:, :, None] + area[:, None, :] - inter
    return inter / tf.maximum(union, 1e-9)


def greedy_nms_tf(similarity, valid, threshold: float):
    """Greedy NMS over candidates sorted best first (see the module docstring).

    Args:
        similarity: ``[B, N, N]`` pairwise overlap (OKS or IoU).
        valid: ``[B, N]`` float 1/0: candidates that take part (score above the threshold).
        threshold: overlap above which the lower-ranked candidate is suppressed.

    Returns ``[B, N]`` float 1/0 keep mask.
    """
    n = tf.shape(similarity)[1]
    rank = tf.range(n)
    earlier = tf.cast(rank[:, None] < rank[None, :], tf.float32)  # i before j
    suppress = tf.cast(similarity > threshold, tf.float32) * earlier[None]  # [B, i, j]

    def body(i, keep, _):
        new = valid * (1.0 - tf.reduce_max(keep[:, :, None] * suppress, axis=1))
        changed = tf.reduce_max(tf.abs(new - keep)) > 0.0
        return i + 1, new, changed

    _, keep, _ = tf.while_loop(lambda i, keep, changed: tf.logical_and(changed, i < n), body,
                               (tf.constant(0), valid, tf.constant(True)))
    return keep


@keras.saving.register_keras_serializable(package="kerapose")
class PoseDetDecoder(keras.layers.Layer):
    """Network outputs -> people: top-k, NMS, the M best poses in the original image's pixels.

    Call ``decoder(poses, logits, scale, image_hw)``: ``poses`` [B, A, K, 2] (network pixels),
    ``logits`` [B, A, 1], ``scale`` [B] (network pixels per image pixel, from
    :class:`kerapose.layers.Letterbox`) and ``image_hw`` [2] int (the original size; joints are
    clipped into it). Returns ``keypoints`` [B, M, K, 3] (x, y, score), ``scores`` [B, M],
    ``boxes`` [B, M, 4] (the joints' extent) and ``num_poses`` [B]; rows past ``num_poses`` are 0.

    Every keypoint's score is its pose's score: PoseDet regresses joints without a per-joint
    confidence (the authors' code writes 1; the pose score carries the ranking either way).

    Args:
        keypoint_set: its OKS sigmas drive OKS-NMS.
        max_people: M.
        score_threshold: candidates scoring at most this take no part.
        nms: ``"oks"`` (the paper) or ``"iou"`` (on the poses' extent boxes, the ablation).
        oks_threshold: OKS above which a lower-scoring pose is suppressed (COCO OKS; the
            default is :data:`kerapose.codecs.posedet.DEFAULT_OKS_NMS_THRESHOLD`).
        iou_threshold: the same for ``nms="iou"``.
        pre_nms_top_k: candidates kept by score before NMS (over all levels).
    """

    keeps_float = True  # int8 export keeps it float32: coordinates and scores are never int8

    def __init__(self, keypoint_set: str = "coco17", max_people: int = 20, score_threshold: float = 0.3,
                 nms: str = "oks", oks_threshold: float | None = None, iou_threshold: float = 0.5,
                 pre_nms_top_k: int = 100, **kwargs):
        super().__init__(**kwargs)
        if nms not in NMS_KINDS:
            raise ValueError(f"nms: expected one of {', '.join(NMS_KINDS)}, got {nms!r}")
        if int(max_people) != max_people or max_people < 1:
            raise ValueError(f"max_people: expected a positive integer, got {max_people!r}")
        if int(pre_nms_top_k) != pre_nms_top_k or pre_nms_top_k < 1:
            raise ValueError(f"pre_nms_top_k: expected a positive integer, got {pre_nms_top_k!r}")
        oks_threshold = DEFAULT_OKS_NMS_THRESHOLD if oks_threshold is None else float(oks_threshold)
        for arg, v in (("oks_threshold", oks_threshold), ("iou_threshold", iou_threshold)):
            if not 0.0 < v <= 1.0:
                raise ValueError(f"{arg}: expected a value in (0, 1], got {v!r}")
        kps = get_keypoint_set(keypoint_set)
        self.keypoint_set = kps.name
        self.sigmas = kps.sigmas_array
        self.num_keypoints = kps.num_keypoints
        self.max_people = int(max_people)
        self.score_threshold = float(score_threshold)
        self.nms = nms
        self.oks_threshold = oks_threshold
        self.iou_threshold = float(iou_threshold)
        self.pre_nms_top_k = int(pre_nms_top_k)

    def call(self, poses, logits, scale, image_hw):
        poses = tf.cast(poses, tf.float32)
        num = poses.shape[1]
        if num is None:
            raise ValueError("PoseDetDecoder: the number of candidates must be static (a fixed network input size)")
        k = min(self.pre_nms_top_k, int(num))
        m = min(self.max_people, k)
        scores = float_math.sigmoid(tf.cast(tf.reshape(logits, [tf.shape(logits)[0], -1]), tf.float32))  # [B, A]
        top, idx = tf.math.top_k(scores, k=k)  # best first; ties: lower index first
        xy = tf.gather(poses, idx, batch_dims=1)  # [B, k, K, 2]
        valid = tf.cast(top > self.score_threshold, tf.float32)
        if self.nms == "oks":
            sim, threshold = pairwise_oks_tf(xy, self.sigmas), self.oks_threshold
        else:
            sim, threshold = pairwise_iou_tf(pose_boxes_tf(xy)), self.iou_threshold
        keep = greedy_nms_tf(sim, valid, threshold)
        # the kept candidates in score order: kept ones rank by score (>= 0), the rest below
        _, pick = tf.math.top_k(keep * (top + 1.0) - 1.0, k=m)
        count = tf.minimum(tf.cast(tf.reduce_sum(keep, axis=1), tf.int32), m)  # [B]
        filled = tf.sequence_mask(count, m, dtype=tf.float32)  # [B, m]
        scores = tf.gather(top, pick, batch_dims=1) * filled
        xy = tf.gather(xy, pick, batch_dims=1)
        # to the original image: undo the letterbox scale, clip into the image
        hw = tf.cast(image_hw, tf.float32)
        limit = tf.stack([hw[1] - 1.0, hw[0] - 1.0])
        xy = tf.minimum(tf.maximum(xy / scale[:, None, None, None], 0.0), limit)
        xy = xy * filled[..., None, None]
        keypoints = tf.concat([xy, tf.broadcast_to(scores[..., None, None], tf.shape(xy[..., :1]))], axis=-1)
        boxes = pose_boxes_tf(xy) * filled[..., None]
        pad = self.max_people - m
        if pad:
            keypoints = tf.pad(keypoints, [[0, 0], [0, pad], [0, 0], [0, 0]])
            scores = tf.pad(scores, [[0, 0], [0, pad]])
            boxes = tf.pad(boxes, [[0, 0], [0, pad], [0, 0]])
        return {"keypoints": keypoints, "scores": scores, "boxes": boxes, "num_poses": count}

    def compute_output_spec(self, poses, logits, scale, image_hw):
        b, m, k = poses.shape[0], self.max_people, self.num_keypoints
        return {
            "keypoints": keras.KerasTensor((b, m, k, 3), "float32"),
            "scores": keras.KerasTensor((b, m), "float32"),
            "boxes": keras.KerasTensor((b, m, 4), "float32"),
            "num_poses": keras.KerasTensor((b,), "int32"),
        }

    def get_config(self) -> dict:
        return {**super().get_config(), "keypoint_set": self.keypoint_set, "max_people": self.max_people,
                "score_threshold": self.score_threshold, "nms": self.nms, "oks_threshold": self.oks_threshold,
                "iou_threshold": self.iou_threshold, "pre_nms_top_k": self.pre_nms_top_k}


@keras.saving.register_keras_serializable(package="kerapose")
class ImageSize(keras.layers.Layer):
    """Image batch ``[B, H, W, C]`` -> its ``(H, W)`` as int32 ``[2]``."""

    keeps_float = True  # int8 export keeps it float32: coordinates and scores are never int8

    def call(self, image):
        return tf.shape(image)[1:3]

    def compute_output_spec(self, image):
        return keras.KerasTensor((2,), "int32")


def posedet_end_to_end(model, input_size=(512, 512), max_people: int = 20, score_threshold: float = 0.3,
                       nms: str = "oks", oks_threshold: float | None = None, iou_threshold: float = 0.5,
                       pre_nms_top_k: int = 100) -> keras.Model:
    """Wrap a :class:`kerapose.models.posedet.PoseDet` into the end-to-end serving model.

    Input ``image`` uint8 [B, H, W, 3] of any size, letterboxed into ``input_size`` (multiples
    of the model's ``size_multiple``); outputs ``keypoints`` [B, M, K, 3], ``scores`` [B, M],
    ``boxes`` [B, M, 4] and ``num_poses`` [B] in the original image's pixels (DESIGN.md's
    serving contract). The decoder's options: :class:`PoseDetDecoder`.
    """
    try:
        h, w = (int(v) for v in input_size)
    except (TypeError, ValueError):
        raise ValueError(f"input_size: expected (H, W) integers, got {input_size!r}") from None
    multiple = model.size_multiple
    if h <= 0 or w <= 0 or h % multiple or w % multiple:
        raise ValueError(f"input_size {input_size} is not accepted: both sides must be positive multiples "
                         f"of {multiple}")
    decoder = PoseDetDecoder(model.keypoint_set.name, max_people=max_people, score_threshold=score_threshold,
                             nms=nms, oks_threshold=oks_threshold, iou_threshold=iou_threshold,
                             pre_nms_top_k=pre_nms_top_k, name="decoder", dtype="float32")
    image = keras.Input(shape=(None, None, 3), dtype="uint8", name="image")
    # float32 whatever the global policy: decoding under mixed_float16 would lose pixel precision
    resized, scale = Letterbox((h, w), name="letterbox", dtype="float32")(image)
    out = model(resized)
    people = decoder(out["poses"], out["logits"], scale, ImageSize(name="image_size")(image))
    people = {key: keras.layers.Identity(name=key, dtype=v.dtype)(v) for key, v in people.items()}
    return keras.Model(image, people, name=f"{model.name}_end_to_end")
