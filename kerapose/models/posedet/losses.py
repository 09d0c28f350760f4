"""PoseDet's training losses (paper eq. 4), usable in ``model.fit`` with :attr:`PoseDet.training_model`.

``Loss = L2(coarse) + L2(refined) + FL(scores) + L2(heatmaps)``:

- coarse: every candidate the codec assigned a person to (:class:`kerapose.codecs.posedet.PoseDetCodec`,
  one candidate per person) regresses that person's labelled joints;
- refined: every candidate whose *coarse* pose has OKS >= ``refine_oks`` (0.7) with some person
  regresses that person's joints (through the refinement only: the coarse part is a stop-gradient);
- classification: focal loss, positive where the coarse pose's best OKS >= ``positive_oks`` (0.6),
  negative below ``negative_oks`` (0.5), ignored in between and on negatives the codec marks as
  ignored (crowd regions, people without keypoints);
- heatmaps: :class:`kerapose.losses.MaskedL2` against the codec's Gaussian maps on every level.

A joint's regression loss is the authors': the Euclidean distance to its target divided by
``4 * stride`` of the candidate's level, clipped at 5, summed over the person's labelled joints;
each term is divided by its number of positive candidates in the batch (at least 1). OKS is
COCO's (:func:`kerapose.evaluation.oks`: ``exp(-d^2 / (2 area (2 sigma)^2))`` averaged over the
person's labelled joints, ``area`` = the annotation's area), computed in the graph between every
candidate's coarse pose and every person of its image.

``y_true`` layout of the ``candidates`` output (``PoseDetCodec.pack``), ``[B, A + G, 3K + 1]``:

- rows ``0 .. A-1`` (A = the candidates of ``y_pred``): ``(gt_index, stride, cls_weight, 0...)``:
  the person the codec assigned (-1: none), the candidate's level stride, 0 to ignore it as a
  classification negative;
- rows ``A .. A+G-1``: the image's people, ``(x0, y0, v0, ..., x_{K-1}, y_{K-1}, v_{K-1}, area)``
  in input pixels; padding rows are zero (no labelled joint: never matched).

``y_pred`` is the training model's ``candidates`` ``[B, A, 4K + 1]``: coarse pose (x0, y0, x1,
..., 2K values), refined pose (2K), logit.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from kerapose.codecs.posedet import DEFAULT_STRIDES, level_names
from kerapose.losses import MaskedL2
from kerapose.skeleton import KeypointSet, get_keypoint_set

__all__ = ["PoseDetLoss", "posedet_losses", "posedet_loss_terms", "candidate_oks"]


def candidate_oks(poses, gt_keypoints, gt_areas, sigmas):
    """COCO OKS ``[B, A, G]`` between poses ``[B, A, K, 2]`` and people ``[B, G, K, 3]`` (areas ``[B, G]``).

    As :func:`kerapose.evaluation.oks` without boxes: the mean over the person's labelled
    joints, 0 for a person without any.
    """
    var = ops.convert_to_tensor((2.0 * np.asarray(sigmas, np.float64)) ** 2, "float32")
    d = ops.expand_dims(poses, 2) - ops.expand_dims(gt_keypoints[..., :2], 1)  # [B, A, G, K, 2]
    d2 = ops.sum(ops.square(d), axis=-1)
    e = d2 / var / (gt_areas[:, None, :, None] + float(np.spacing(np.float32(1)))) / 2.0
    vis = ops.cast(gt_keypoints[..., 2] > 0, "float32")[:, None]  # [B, 1, G, K]
    count = ops.sum(vis, axis=-1)
    return ops.where(count > 0, ops.sum(ops.exp(-e) * vis, axis=-1) / ops.maximum(count, 1.0), 0.0)


def _joint_distance(pred, target, stride, clip: float, scale: float):
    """Per-joint ``||pred - target|| / (scale * stride)``, clipped; ``[B, A, K]``."""
    d2 = ops.sum(ops.square(pred - target[..., :2]), axis=-1)
    dist = ops.sqrt(d2 + 1e-12) / (scale * stride[..., None])
    return ops.minimum(dist, clip)


def _batch_normalised(per_sample, count):
    """Per-sample values whose batch mean is ``sum(per_sample) / max(1, count)``."""
    batch = ops.cast(ops.shape(per_sample)[0], "float32")
    return per_sample * batch / ops.maximum(count, 1.0)


def posedet_loss_terms(y_true, y_pred, sigmas, refine_oks: float = 0.7, positive_oks: float = 0.6,
                       negative_oks: float = 0.5, alpha: float = 0.25, gamma: float = 2.0,
                       distance_scale: float = 4.0, distance_clip: float = 5.0) -> dict:
    """The three candidate terms, each ``[B]`` and already divided by its batch positive count.

    Returns ``{"coarse", "refine", "cls"}`` and the counts ``{"num_coarse", "num_refine",
    "num_cls"}`` (scalars). See the module docstring for the layouts.
    """
    y_pred = ops.cast(y_pred, "float32")
    y_true = ops.cast(y_true, "float32")
    k = len(sigmas)
    if y_pred.shape[-1] != 4 * k + 1 or y_true.shape[-1] != 3 * k + 1:
        raise ValueError(f"PoseDetLoss: expected y_pred [..., {4 * k + 1}] and y_true [..., {3 * k + 1}] for K={k}, "
                         f"got {tuple(y_pred.shape)} and {tuple(y_true.shape)}")
    b, a = ops.shape(y_pred)[0], ops.shape(y_pred)[1]
    coarse = ops.reshape(y_pred[..., : 2 * k], (b, a, k, 2))
    refined = ops.reshape(y_pred[..., 2 * k: 4 * k], (b, a, k, 2))
    logits = y_pred[..., 4 * k]
    cand, people = y_true[:, :a], y_true[:, a:]
    gt_kp = ops.reshape(people[..., : 3 * k], (b, -1, k, 3))
    gt_area = people[..., 3 * k]
    gt_index = ops.cast(ops.round(cand[..., 0]), "int32")
    stride, cls_weight = cand[..., 1], cand[..., 2]

    def gather_people(index):  # [B, A] -> [B, A, K, 3]
        return tf.gather(gt_kp, ops.maximum(index, 0), batch_dims=1)

    # coarse: the codec's one candidate per person
    assigned = ops.cast(gt_index >= 0, "float32")
    target = gather_people(gt_index)
    weight = ops.cast(target[..., 2] > 0, "float32") * assigned[..., None]
    coarse_sum = ops.sum(_joint_distance(coarse, target, stride, distance_clip, distance_scale) * weight, (1, 2))
    num_coarse = ops.sum(assigned)

    # later stages: by the OKS of the coarse pose with every person
    oks = candidate_oks(ops.stop_gradient(coarse), gt_kp, gt_area, sigmas)  # [B, A, G]
    best = ops.max(oks, axis=-1)
    match = ops.cast(ops.argmax(oks, axis=-1), "int32")
    refine_pos = ops.cast(best >= refine_oks, "float32")
    target = gather_people(match)
    weight = ops.cast(target[..., 2] > 0, "float32") * refine_pos[..., None]
    refine_sum = ops.sum(_joint_distance(refined, target, stride, distance_clip, distance_scale) * weight, (1, 2))
    num_refine = ops.sum(refine_pos)

    positive = ops.cast(best >= positive_oks, "float32")
    negative = ops.cast(best < negative_oks, "float32") * cls_weight
    focal = keras.losses.binary_focal_crossentropy(
        ops.expand_dims(positive, -1), ops.expand_dims(logits, -1), apply_class_balancing=True, alpha=alpha,
        gamma=gamma, from_logits=True)  # [B, A]
    cls_sum = ops.sum(focal * (positive + negative), axis=1)
    num_cls = ops.sum(positive)
    return {
        "coarse": _batch_normalised(coarse_sum, num_coarse),
        "refine": _batch_normalised(refine_sum, num_refine),
        "cls": _batch_normalised(cls_sum, num_cls),
        "num_coarse": num_coarse, "num_refine": num_refine, "num_cls": num_cls,
    }


@keras.saving.register_keras_serializable(package="kerapose")
class PoseDetLoss(keras.losses.Loss):
    """``coarse_weight * coarse + refine_weight * refine + cls_weight * focal`` on the ``candidates``
    output (weights 0.1, 0.2, 1: the authors'). Thresholds and layouts: module docstring.

    One value per sample; Keras' ``sum_over_batch_size`` reduction then gives each term's
    batch sum divided by its number of positives.
    """

    def __init__(self, keypoint_set: str | KeypointSet = "coco17", coarse_weight: float = 0.1,
                 refine_weight: float = 0.2, cls_weight: float = 1.0, refine_oks: float = 0.7,
                 positive_oks: float = 0.6, negative_oks: float = 0.5, alpha: float = 0.25, gamma: float = 2.0,
                 distance_scale: float = 4.0, distance_clip: float = 5.0, name: str = "posedet_loss",
                 reduction="sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        kps = get_keypoint_set(keypoint_set)
        for arg, v in (("coarse_weight", coarse_weight), ("refine_weight", refine_weight),
                       ("cls_weight", cls_weight), ("gamma", gamma)):
            if not v >= 0:
                raise ValueError(f"{arg}: expected a non-negative value, got {v!r}")
        for arg, v in (("refine_oks", refine_oks), ("positive_oks", positive_oks), ("negative_oks", negative_oks),
                       ("alpha", alpha)):
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{arg}: expected a value in [0, 1], got {v!r}")
        if negative_oks > positive_oks:
            raise ValueError(f"negative_oks ({negative_oks}) must not exceed positive_oks ({positive_oks})")
        if not (distance_scale > 0 and distance_clip > 0):
            raise ValueError(f"distance_scale and distance_clip must be positive, got {distance_scale}, "
                             f"{distance_clip}")
        self.keypoint_set = kps.name
        self.sigmas = tuple(float(s) for s in kps.sigmas)
        self.term_weights = (float(coarse_weight), float(refine_weight), float(cls_weight))
        self.options = {"refine_oks": float(refine_oks), "positive_oks": float(positive_oks),
                        "negative_oks": float(negative_oks), "alpha": float(alpha), "gamma": float(gamma),
                        "distance_scale": float(distance_scale), "distance_clip": float(distance_clip)}

    def call(self, y_true, y_pred):
        t = posedet_loss_terms(y_true, y_pred, self.sigmas, **self.options)
        wc, wr, wl = self.term_weights
        return wc * t["coarse"] + wr * t["refine"] + wl * t["cls"]

    def get_config(self) -> dict:
        wc, wr, wl = self.term_weights
        return {**super().get_config(), "keypoint_set": self.keypoint_set, "coarse_weight": wc,
                "refine_weight": wr, "cls_weight": wl, **self.options}


def posedet_losses(keypoint_set: str | KeypointSet = "coco17", strides=DEFAULT_STRIDES,
                   heatmap_scale: float = 0.01, **loss_options) -> dict:
    """``{output name: loss}`` for ``PoseDet.training_model.compile(loss=...)``: :class:`PoseDetLoss`
    on ``candidates`` and :class:`kerapose.losses.MaskedL2` (``scale=heatmap_scale``) on every
    ``heatmaps_p*`` (``y_true``: the codec's Gaussian maps).

    MaskedL2 sums over the cells: at the near-zero initial prediction a labelled joint costs
    ``heatmap_scale * pi * sigma^2`` (0.13 for sigma 2 cells) per level, so the default keeps
    the auxiliary maps of a few people at the scale of the candidate terms (about 1 each at
    the start, divided by their positive counts) instead of swamping them."""
    heatmap = MaskedL2(scale=heatmap_scale, name="heatmap_l2")
    return {"candidates": PoseDetLoss(keypoint_set, **loss_options), **{n: heatmap for n in level_names(strides)}}
