"""VGG-19 front end of the PAF family: the first 10 conv layers of VGG-19 plus the two CPM convs.

This is the feature extractor of OpenPose (Cao et al. 2017) and of the Feature Transfer / Multi-
level networks (Huang et al.): block1_conv1 .. block4_conv2 of VGG-19 with three 2x2 max-pools
(stride 8), then ``conv4_3_CPM`` (3x3, 256, ReLU) and ``conv4_4_CPM`` (3x3, 128, ReLU).

The VGG layers keep keras.applications' names, so the keras.applications ImageNet file
(``vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5``) loads by name; the CPM convs have no
ImageNet counterpart and stay randomly initialised. Their names are the original Caffe model's.
"""

from __future__ import annotations

import keras
from keras import layers

from kerapose.weights.applications import load_applications_weights
from kerapose.layers import Preprocess, SizeCheck

__all__ = ["vgg19_backbone", "scaled_width", "VGG19_CONV_LAYERS", "CPM_LAYERS", "VGG_STRIDE", "VGG_OUTPUTS"]

VGG_STRIDE = 8
# (name, filters) of the 10 VGG-19 convs kept; None marks a 2x2 max-pool (keras.applications names).
VGG19_CONV_LAYERS: tuple[tuple[str, int] | None, ...] = (
    ("block1_conv1", 64), ("block1_conv2", 64), None,
    ("block2_conv1", 128), ("block2_conv2", 128), None,
    ("block3_conv1", 256), ("block3_conv2", 256), ("block3_conv3", 256), ("block3_conv4", 256), None,
    ("block4_conv1", 512), ("block4_conv2", 512),
)
CPM_LAYERS: tuple[tuple[str, int], ...] = (("conv4_3_CPM", 256), ("conv4_4_CPM", 128))
# Output dict keys: the stride-8 maps a PAF head may read.
VGG_OUTPUTS = ("block3_pool", "block4_conv2", "features")


def scaled_width(channels: int, multiplier: float) -> int:
    """``channels * multiplier`` rounded, at least 1 (1.0 returns ``channels`` unchanged)."""
    return max(1, int(round(channels * multiplier)))


def vgg19_backbone(
    input_shape: tuple = (None, None, 3),
    weights: str | None = None,
    preprocessing: str = "caffe",
    name: str = "vgg19_cpm",
    width_multiplier: float = 1.0,
) -> keras.Model:
    """VGG-19 (10 convs) + CPM convs: RGB float 0..255 in, stride-8 feature maps out.

    Outputs (a dict, all at stride 8):

    - ``features`` [B, H/8, W/8, 128]: conv4_4_CPM, what the PAF stages consume.
    - ``block4_conv2`` [B, H/8, W/8, 512]: the last VGG conv.
    - ``block3_pool`` [B, H/8, W/8, 256]: the lower-level map (after the third pool) that the
      Multi-level Network aggregates.

    Args:
        input_shape: (H, W, 3); H and W may be None, otherwise multiples of 8.
        weights: ``None`` for random init, or the path of a keras.applications VGG19 weight file
            (full or ``notop``), loaded by layer name into the 10 VGG convs; every one of them
            must be in the file. The CPM convs stay random.
        preprocessing: normalisation inside the model (:data:`kerapose.layers.PREPROCESS_MODES`);
            ``"caffe"`` is what keras.applications VGG weights expect.
        width_multiplier: scales every conv's channel count (:func:`scaled_width`); values
            below 1 give narrow networks for fast tests and small devices. ImageNet weights
            need 1.0.
    """
    input_shape = tuple(input_shape)
    if not (isinstance(width_multiplier, (int, float)) and 0 < width_multiplier <= 4):
        raise ValueError(f"width_multiplier: expected a number in (0, 4], got {width_multiplier!r}")
    if weights is not None and width_multiplier != 1.0:
        raise ValueError(f"weights: keras.applications VGG19 weights need width_multiplier=1.0, got {width_multiplier}")
    SizeCheck.validate_shape(input_shape, VGG_STRIDE)
    inputs = keras.Input(shape=input_shape, name="image")
    x = Preprocess(preprocessing, name="preprocess")(inputs)
    pools = 0
    block3_pool = None
    for spec in VGG19_CONV_LAYERS:
        if spec is None:
            pools += 1
            x = layers.MaxPooling2D(2, strides=2, name=f"block{pools}_pool")(x)
            if pools == 3:
                block3_pool = x
            continue
        lname, filters = spec
        x = layers.Conv2D(scaled_width(filters, width_multiplier), 3, padding="same", activation="relu", name=lname)(x)
    block4_conv2 = x
    for lname, filters in CPM_LAYERS:
        x = layers.Conv2D(scaled_width(filters, width_multiplier), 3, padding="same", activation="relu", name=lname)(x)
    outputs = {"block3_pool": block3_pool, "block4_conv2": block4_conv2, "features": x}
    model = keras.Model(inputs, outputs, name=name)
    if weights is not None:
        # Load through a view that holds only the VGG layers (shared with `model`), so a file
        # that lacks one of them fails loudly while the CPM convs are allowed to be absent.
        vgg_part = keras.Model(inputs, block4_conv2, name=f"{name}_vgg_part")
        load_applications_weights(vgg_part, weights)
    return model
