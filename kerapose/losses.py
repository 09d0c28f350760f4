"""Training losses (Keras 3, ``keras.ops``), usable in ``model.fit`` with dict outputs.

Contracts for masks and ignored entries are carried in ``y_true`` (no sample weights), so a
``tf.data`` pipeline yields ``(image, {output_name: packed_target})``:

* :class:`MaskedL2` (heatmaps, segmentation, PAFs): ``y_true`` is the target with the loss
  weight W appended on the channel axis: ``[..., C + 1]`` (one W channel broadcast over the
  C channels, OpenPose's mask), ``[..., 2C]`` (one W channel per target channel), or plain
  ``[..., C]`` (W = 1). Build it with :func:`pack_weights`.
* :class:`RetinaFocalLoss`: ``y_true [B, A, 1]`` anchor states from
  :class:`kerapose.codecs.boxes.BoxCodec` (1 positive, 0 negative, -1 ignored).
* :class:`RetinaSmoothL1`: ``y_true [B, A, 5]`` = the codec's box target ``[B, A, 4]`` with the
  anchor state appended (fizyr keras-retinanet's layout); :func:`pack_box_targets`.

Every loss casts predictions and targets to float32 first (mixed precision). Losses return
one value per sample and rely on Keras' default ``"sum_over_batch_size"`` reduction for the
normalisation each one documents; other reductions scale the result accordingly.
"""

from __future__ import annotations

import keras
from keras import ops

__all__ = [
    "MaskedL2",
    "RetinaFocalLoss",
    "RetinaSmoothL1",
    "prn_loss",
    "pack_weights",
    "pack_box_targets",
]


def pack_weights(target, weight):
    """``target [..., C]`` and ``weight [..., 1 or C]`` (or ``[...]``) -> ``y_true`` for :class:`MaskedL2`."""
    target = ops.convert_to_tensor(target, "float32")
    weight = ops.convert_to_tensor(weight, "float32")
    if len(weight.shape) == len(target.shape) - 1:
        weight = ops.expand_dims(weight, -1)
    if weight.shape[-1] not in (1, target.shape[-1]):
        raise ValueError(
            f"weight: expected 1 or {target.shape[-1]} channels (target has {target.shape[-1]}), "
            f"got shape {tuple(weight.shape)}"
        )
    return ops.concatenate([target, weight], axis=-1)


def pack_box_targets(box_target, cls_target):
    """Box-codec targets ``[..., A, 4]`` and anchor states ``[..., A, 1]`` -> ``[..., A, 5]``."""
    box_target = ops.convert_to_tensor(box_target, "float32")
    cls_target = ops.convert_to_tensor(cls_target, "float32")
    if len(cls_target.shape) == len(box_target.shape) - 1:
        cls_target = ops.expand_dims(cls_target, -1)
    if box_target.shape[-1] != 4 or cls_target.shape[-1] != 1:
        raise ValueError(
            f"expected box_target [..., 4] and cls_target [..., 1], got {tuple(box_target.shape)} "
            f"and {tuple(cls_target.shape)}"
        )
    return ops.concatenate([box_target, cls_target], axis=-1)


def _per_sample_sum(x):
    """Sum over every axis but the batch axis."""
    return ops.sum(ops.reshape(x, (ops.shape(x)[0], -1)), axis=1)


def _batch_normalised(per_sample_sum, count):
    """Per-sample values whose batch mean is ``sum(per_sample_sum) / max(1, count)``.

    RetinaNet divides the batch's summed loss by the batch's number of positive anchors;
    scaling each sample by ``B / max(1, count)`` makes Keras' mean over the batch equal that.
    """
    batch = ops.cast(ops.shape(per_sample_sum)[0], "float32")
    return per_sample_sum * batch / ops.maximum(count, 1.0)


@keras.saving.register_keras_serializable(package="kerapose")
class MaskedL2(keras.losses.Loss):
    """Weighted squared error, ``scale * sum(W * (pred - target)^2) / batch``.

    OpenPose and MultiPoseNet use ``scale = 0.5``: each sample contributes half its summed
    masked squared error over H, W and channels, and Keras' ``sum_over_batch_size`` reduction
    divides by the batch size. ``y_true`` packs target and W (module docstring). The same
    loss object serves every supervised output (``heatmaps`` and the intermediate
    ``heatmaps_k2`` .. ``heatmaps_k5`` of MultiPoseNet, each stage of a PAF network).
    """

    def __init__(self, scale: float = 0.5, name: str = "masked_l2", reduction="sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if not scale > 0:
            raise ValueError(f"scale: expected a positive factor, got {scale!r}")
        self.scale = float(scale)

    def call(self, y_true, y_pred):
        y_pred = ops.cast(y_pred, "float32")
        y_true = ops.cast(y_true, "float32")
        c, packed = y_pred.shape[-1], y_true.shape[-1]
        if c is None or packed is None:
            raise ValueError("MaskedL2: the channel axis of y_true and y_pred must be known")
        if packed == c:
            target, weight = y_true, 1.0
        elif packed == c + 1:
            target, weight = y_true[..., :c], y_true[..., c:]
        elif packed == 2 * c:
            target, weight = y_true[..., :c], y_true[..., c:]
        else:
            raise ValueError(
                f"MaskedL2: y_true has {packed} channels; for {c} predicted channels expected "
                f"{c} (no weights), {c + 1} (one shared W channel) or {2 * c} (per-channel W)"
            )
        return self.scale * _per_sample_sum(weight * ops.square(y_pred - target))

    def get_config(self) -> dict:
        return {**super().get_config(), "scale": self.scale}


@keras.saving.register_keras_serializable(package="kerapose")
class RetinaFocalLoss(keras.losses.Loss):
    """RetinaNet classification loss over anchors with ignores.

    Keras' ``binary_focal_crossentropy`` (``apply_class_balancing=True``: weight ``alpha``
    on positives, ``1 - alpha`` on negatives; focal factor ``(1 - p_t)^gamma``) per anchor;
    anchors whose state is -1 contribute nothing; the batch's sum is divided by its number
    of positive anchors (at least 1, so zero-positive and all-ignored batches stay finite).

    ``y_true [B, A, C]`` with 1 / 0 / -1, ``y_pred [B, A, C]`` logits (``from_logits=True``)
    or probabilities.
    """

    def __init__(
        self,
        alpha: float = 0.25,
        gamma: float = 2.0,
        from_logits: bool = True,
        name: str = "retina_focal",
        reduction="sum_over_batch_size",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha: expected a weight in [0, 1], got {alpha!r}")
        if gamma < 0:
            raise ValueError(f"gamma: expected >= 0, got {gamma!r}")
        self.alpha, self.gamma, self.from_logits = float(alpha), float(gamma), bool(from_logits)

    def call(self, y_true, y_pred):
        y_pred = ops.cast(y_pred, "float32")
        y_true = ops.cast(y_true, "float32")
        valid = ops.cast(ops.not_equal(y_true, -1.0), "float32")
        positive = ops.cast(ops.equal(y_true, 1.0), "float32")
        labels = y_true * valid  # ignored -> 0, so the per-element formula stays finite
        focal = keras.losses.binary_focal_crossentropy(
            ops.expand_dims(labels, -1),
            ops.expand_dims(y_pred, -1),
            apply_class_balancing=True,
            alpha=self.alpha,
            gamma=self.gamma,
            from_logits=self.from_logits,
        )  # the trailing axis of size 1 keeps one value per element
        return _batch_normalised(_per_sample_sum(focal * valid), ops.sum(positive))

    def get_config(self) -> dict:
        return {**super().get_config(), "alpha": self.alpha, "gamma": self.gamma, "from_logits": self.from_logits}


@keras.saving.register_keras_serializable(package="kerapose")
class RetinaSmoothL1(keras.losses.Loss):
    """RetinaNet box regression: smooth L1 over positive anchors, divided by their number.

    ``f(x) = 0.5 * (sigma * x)^2`` if ``|x| < 1 / sigma^2`` else ``|x| - 0.5 / sigma^2``,
    summed over the 4 box coordinates (fizyr keras-retinanet, ``sigma = 3``). In the
    ``beta`` form of torchvision / Detectron, ``beta = 1 / sigma^2 = 1/9``:
    ``0.5 * x^2 / beta`` if ``|x| < beta`` else ``|x| - 0.5 * beta``.

    ``y_true [B, A, 5]``: box target and anchor state (:func:`pack_box_targets`);
    ``y_pred [B, A, 4]``. The batch's sum is divided by its number of positive anchors
    (at least 1).
    """

    def __init__(self, sigma: float = 3.0, name: str = "retina_smooth_l1", reduction="sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if not sigma > 0:
            raise ValueError(f"sigma: expected a positive value, got {sigma!r}")
        self.sigma = float(sigma)

    def call(self, y_true, y_pred):
        y_pred = ops.cast(y_pred, "float32")
        y_true = ops.cast(y_true, "float32")
        if y_true.shape[-1] != 5 or y_pred.shape[-1] != 4:
            raise ValueError(
                f"RetinaSmoothL1: expected y_true [..., 5] (box target + anchor state) and "
                f"y_pred [..., 4], got {tuple(y_true.shape)} and {tuple(y_pred.shape)}"
            )
        positive = ops.cast(ops.equal(y_true[..., 4], 1.0), "float32")
        beta = 1.0 / (self.sigma * self.sigma)
        # Zero both sides at non-positive anchors *before* subtracting: masking the difference
        # afterwards would still let a NaN / inf target there poison the gradient.
        pos = ops.expand_dims(positive, -1) > 0
        diff = ops.abs(ops.where(pos, y_pred, 0.0) - ops.where(pos, y_true[..., :4], 0.0))
        per = ops.where(diff < beta, 0.5 * ops.square(diff) / beta, diff - 0.5 * beta)
        return _batch_normalised(_per_sample_sum(per), ops.sum(positive))

    def get_config(self) -> dict:
        return {**super().get_config(), "sigma": self.sigma}


def prn_loss(name: str = "prn_loss") -> keras.losses.Loss:
    """Pose Residual Network loss: Keras' binary cross-entropy on the spatial-softmax outputs.

    Per element ``-(t log p + (1 - t) log(1 - p))`` with ``p`` clipped to
    ``[1e-7, 1 - 1e-7]``, averaged over the K channels and then over batch and cells
    (``sum_over_batch_size``). Keras losses convert inputs to float32 first.
    """
    return keras.losses.BinaryCrossentropy(from_logits=False, name=name)
