"""StrongPose losses and the packing of the codec's targets into ``y_true``.

``y_true`` per output (:func:`pack_targets`; masks travel with the targets, no sample weights):

* ``heatmaps``: ``[..., K + 1]`` = the K disk maps and the loss weight W (crowds and people
  without keypoints 0) -> :class:`MaskedLogisticLoss`: the logistic loss averaged over the
  image positions, weighted by W.
* ``body``: ``[..., 2]`` = the body heat map and W -> :class:`MaskedLogisticLoss`.
* ``short_offsets``: ``[..., 3K]`` = the 2K offsets and their K disk masks (the heat maps) ->
  :class:`OffsetL1Loss`: L1 over the positions inside the disks only, divided by the radius R
  (StrongPose: "normalizing them and making a dynamic range compatible with the heat map
  classification loss"), averaged over those positions.
* ``mid_offsets``: ``[..., 6E]`` = the 4E offsets and the 2E masks -> :class:`OffsetL1Loss`.

Each loss returns one value per sample (normalised within the sample); Keras averages them
over the batch. :data:`LOSS_WEIGHTS` are the reference code's weights.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

__all__ = ["MaskedLogisticLoss", "OffsetL1Loss", "pack_targets", "strongpose_losses", "LOSS_WEIGHTS", "PACKING"]

# Heat map 4, segmentation 2, short-range 1, mid-range 0.4 (StrongPose's reference code; PersonLab).
LOSS_WEIGHTS = {"heatmaps": 4.0, "body": 2.0, "short_offsets": 1.0, "mid_offsets": 0.4}


# output -> the codec targets concatenated (last axis) into its y_true: the values, then their mask
PACKING = {
    "heatmaps": ("heatmaps", "weights"),
    "body": ("body", "weights"),
    "short_offsets": ("short_offsets", "heatmaps"),
    "mid_offsets": ("mid_offsets", "mid_mask"),
}


def pack_targets(targets: dict) -> dict[str, np.ndarray]:
    """Codec targets (``StrongPoseCodec.encode``, with or without a batch axis) -> float32
    ``y_true`` per output (numpy: the data pipeline calls it per sample)."""
    need = ("heatmaps", "short_offsets", "mid_offsets", "mid_mask", "body", "weights")
    missing = [k for k in need if k not in targets]
    if missing:
        raise ValueError(f"targets: missing {', '.join(missing)} (expected the keys of StrongPoseCodec.encode)")
    t = {k: np.asarray(targets[k], np.float32) for k in need}
    for key in need:
        if t[key].ndim != t["heatmaps"].ndim or t[key].shape[:-1] != t["heatmaps"].shape[:-1]:
            raise ValueError(f"targets[{key!r}]: expected shape {t['heatmaps'].shape[:-1]} + (channels,), got "
                             f"{t[key].shape}")
    k = t["heatmaps"].shape[-1]
    if t["short_offsets"].shape[-1] != 2 * k or t["weights"].shape[-1] != 1 or t["body"].shape[-1] != 1:
        raise ValueError(f"targets: expected short_offsets [..., {2 * k}], body and weights [..., 1], got "
                         f"{t['short_offsets'].shape}, {t['body'].shape}, {t['weights'].shape}")
    if t["mid_offsets"].shape[-1] != 2 * t["mid_mask"].shape[-1]:
        raise ValueError(f"targets: mid_offsets {t['mid_offsets'].shape} needs twice the channels of "
                         f"mid_mask {t['mid_mask'].shape}")
    return {out: np.concatenate([t[a], t[b]], axis=-1) for out, (a, b) in PACKING.items()}


def _per_sample_sum(x):
    return ops.sum(ops.reshape(x, (ops.shape(x)[0], -1)), axis=1)


@keras.saving.register_keras_serializable(package="kerapose")
class MaskedLogisticLoss(keras.losses.Loss):
    """Logistic loss on logits, weighted by W and averaged over the weighted positions and channels.

    ``y_true [..., C + 1]`` (targets, then W), ``y_pred [..., C]`` logits; per sample
    ``sum(W * bce) / max(1e-6, C * sum(W))``.
    """

    def __init__(self, name: str = "masked_logistic", reduction="sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, "float32")
        y_pred = ops.cast(y_pred, "float32")
        c = y_pred.shape[-1]
        if y_true.shape[-1] is not None and c is not None and y_true.shape[-1] != c + 1:
            raise ValueError(f"y_true: expected {c + 1} channels (targets + W) for {c} logits, got {y_true.shape[-1]}")
        target, weight = y_true[..., :-1], y_true[..., -1:]
        # stable binary cross-entropy from logits
        bce = ops.maximum(y_pred, 0.0) - y_pred * target + ops.log1p(ops.exp(-ops.abs(y_pred)))
        count = _per_sample_sum(weight) * float(c)
        return _per_sample_sum(bce * weight) / ops.maximum(count, 1e-6)

    def get_config(self) -> dict:
        return {"name": self.name, "reduction": self.reduction}


@keras.saving.register_keras_serializable(package="kerapose")
class OffsetL1Loss(keras.losses.Loss):
    """L1 of 2-D offsets inside their masks, divided by ``radius``, averaged over masked positions.

    ``y_true [..., 3C]`` (the 2C offsets, x then y per field, then the C masks), ``y_pred
    [..., 2C]``; per sample ``sum(mask * (|dx| + |dy|)) / radius / max(1, sum(mask))``.
    """

    def __init__(self, radius: float = 16.0, name: str = "offset_l1", reduction="sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if not radius > 0:
            raise ValueError(f"radius: expected a positive number, got {radius!r}")
        self.radius = float(radius)

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, "float32")
        y_pred = ops.cast(y_pred, "float32")
        c2 = y_pred.shape[-1]
        if y_true.shape[-1] is not None and c2 is not None and 2 * y_true.shape[-1] != 3 * c2:
            raise ValueError(f"y_true: expected {3 * c2 // 2} channels (offsets + masks) for {c2} offset "
                             f"channels, got {y_true.shape[-1]}")
        target, mask = y_true[..., :c2], y_true[..., c2:]
        error = ops.abs(y_pred - target) * ops.repeat(mask, 2, axis=-1)
        return _per_sample_sum(error) / self.radius / ops.maximum(_per_sample_sum(mask), 1.0)

    def get_config(self) -> dict:
        return {"radius": self.radius, "name": self.name, "reduction": self.reduction}


def strongpose_losses(radius: float = 16.0) -> dict[str, keras.losses.Loss]:
    """Output name -> loss, for ``model.compile(loss=..., loss_weights=LOSS_WEIGHTS)``."""
    return {
        "heatmaps": MaskedLogisticLoss(name="heatmaps_loss"),
        "body": MaskedLogisticLoss(name="body_loss"),
        "short_offsets": OffsetL1Loss(radius, name="short_offsets_loss"),
        "mid_offsets": OffsetL1Loss(radius, name="mid_offsets_loss"),
    }
