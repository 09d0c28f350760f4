"""ResNet-18/-50/-101/-152 backbones returning C2..C5 (strides 4, 8, 16, 32).

ResNet-50/-101/-152 follow keras.applications layer for layer, with the same layer names, so the
keras.applications ImageNet weight files load by name and the parameter counts are equal.
ResNet-18 uses basic blocks (two 3x3 convs) with the same naming scheme; no Keras file exists
for it, but any file in that format with those names loads the same way.
"""

from __future__ import annotations

import keras
from keras import layers

from kerapose.weights.applications import load_applications_weights
from kerapose.layers import Preprocess

__all__ = ["RESNET_DEPTHS", "resnet_backbone", "BACKBONE_LEVELS", "OUTPUT_STRIDES", "atrous_schedule"]

# depth -> (block kind, blocks per stage)
RESNET_DEPTHS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
OUTPUT_STRIDES = (8, 16, 32)  # 16 and 8 replace the last stages' striding by atrous convolution
BACKBONE_LEVELS: dict[str, int] = {"C2": 4, "C3": 8, "C4": 16, "C5": 32}  # level -> stride
_BN_EPS = 1.001e-5  # keras.applications' value


def _bottleneck(x, filters: int, stride: int, conv_shortcut: bool, name: str, dilation: int = 1):
    if conv_shortcut:
        shortcut = layers.Conv2D(4 * filters, 1, strides=stride, name=name + "_0_conv")(x)
        shortcut = layers.BatchNormalization(epsilon=_BN_EPS, name=name + "_0_bn")(shortcut)
    else:
        shortcut = x
    x = layers.Conv2D(filters, 1, strides=stride, name=name + "_1_conv")(x)
    x = layers.BatchNormalization(epsilon=_BN_EPS, name=name + "_1_bn")(x)
    x = layers.Activation("relu", name=name + "_1_relu")(x)
    x = layers.Conv2D(filters, 3, padding="same", dilation_rate=dilation, name=name + "_2_conv")(x)
    x = layers.BatchNormalization(epsilon=_BN_EPS, name=name + "_2_bn")(x)
    x = layers.Activation("relu", name=name + "_2_relu")(x)
    x = layers.Conv2D(4 * filters, 1, name=name + "_3_conv")(x)
    x = layers.BatchNormalization(epsilon=_BN_EPS, name=name + "_3_bn")(x)
    x = layers.Add(name=name + "_add")([shortcut, x])
    return layers.Activation("relu", name=name + "_out")(x)


def _basic(x, filters: int, stride: int, conv_shortcut: bool, name: str, dilation: int = 1):
    if conv_shortcut:
        shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False, name=name + "_0_conv")(x)
        shortcut = layers.BatchNormalization(epsilon=_BN_EPS, name=name + "_0_bn")(shortcut)
    else:
        shortcut = x
    x = layers.Conv2D(filters, 3, strides=stride, padding="same", dilation_rate=dilation, use_bias=False,
                      name=name + "_1_conv")(x)
    x = layers.BatchNormalization(epsilon=_BN_EPS, name=name + "_1_bn")(x)
    x = layers.Activation("relu", name=name + "_1_relu")(x)
    x = layers.Conv2D(filters, 3, padding="same", dilation_rate=dilation, use_bias=False, name=name + "_2_conv")(x)
    x = layers.BatchNormalization(epsilon=_BN_EPS, name=name + "_2_bn")(x)
    x = layers.Add(name=name + "_add")([shortcut, x])
    return layers.Activation("relu", name=name + "_out")(x)


def atrous_schedule(output_stride: int = 32) -> dict[str, tuple[int, int]]:
    """Level -> (stride of its first block, dilation of its 3x3 convs) for a C5 ``output_stride``.

    A stage whose stride-2 step would go past ``output_stride`` keeps stride 1 and multiplies
    the dilation by 2 instead, for all its blocks (DeepLab's atrous ResNet with unit multi-grid).
    """
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride: expected one of {OUTPUT_STRIDES}, got {output_stride!r}")
    current, dilation, out = 4, 1, {"C2": (1, 1)}
    for level in ("C3", "C4", "C5"):
        if current * 2 <= output_stride:
            current *= 2
            out[level] = (2, dilation)
        else:
            dilation *= 2
            out[level] = (1, dilation)
    return out


def _channels(filters: int, width: float) -> int:
    return max(8, int(round(filters * width / 8)) * 8)  # multiples of 8 keep the kernels vectorised


def resnet_backbone(
    depth: int = 50,
    input_shape: tuple = (None, None, 3),
    weights: str | None = None,
    preprocessing: str = "caffe",
    name: str | None = None,
    width: float = 1.0,
    output_stride: int = 32,
) -> keras.Model:
    """A ResNet backbone: RGB float 0..255 in, ``{"C2", "C3", "C4", "C5"}`` out.

    Args:
        depth: 18, 50, 101 or 152.
        input_shape: (H, W, 3); H and W may be None.
        weights: ``None`` for random init, or the path of a keras.applications-format weight
            file (see :mod:`kerapose.weights.applications`), loaded by layer name.
        preprocessing: normalisation inside the model (:data:`kerapose.layers.PREPROCESS_MODES`);
            ``"caffe"`` is what keras.applications ResNet weights expect.
        width: channel multiplier of every convolution (1.0: the standard network, the only
            width the keras.applications weight files fit).
        output_stride: stride of C5: 32 (the plain network), 16 or 8. Below 32 the stages
            that would bring the stride past it keep stride 1 and dilate their 3x3
            convolutions instead (atrous convolution, DeepLab), so C4 and C5 stay at
            ``output_stride``. The layers, their names and the parameter count do not change:
            the same weights run at every output stride.
    """
    schedule = atrous_schedule(output_stride)  # validates output_stride
    if depth not in RESNET_DEPTHS:
        raise ValueError(f"unknown ResNet depth {depth!r}; accepted: {', '.join(map(str, RESNET_DEPTHS))}")
    if not 0 < width <= 4:
        raise ValueError(f"width: expected a channel multiplier in (0, 4], got {width!r}")
    if weights is not None and width != 1.0:
        raise ValueError(f"weights: the weight files are for width 1.0, got width={width}")
    kind, blocks = RESNET_DEPTHS[depth]
    block = _bottleneck if kind == "bottleneck" else _basic
    inputs = keras.Input(shape=input_shape, name="image")
    x = Preprocess(preprocessing, name="preprocess")(inputs)
    x = layers.ZeroPadding2D(padding=3, name="conv1_pad")(x)
    x = layers.Conv2D(_channels(64, width), 7, strides=2, use_bias=kind == "bottleneck", name="conv1_conv")(x)
    x = layers.BatchNormalization(epsilon=_BN_EPS, name="conv1_bn")(x)
    x = layers.Activation("relu", name="conv1_relu")(x)
    x = layers.ZeroPadding2D(padding=1, name="pool1_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
    outputs = {}
    for stage, (filters, n) in enumerate(zip((64, 128, 256, 512), blocks)):
        filters = _channels(filters, width)
        level = stage + 2
        first_stride, dilation = schedule[f"C{level}"]
        for b in range(n):
            stride = first_stride if b == 0 else 1
            # Bottleneck blocks always project on the first block (channels x4); basic blocks
            # only where the stride or the width changes.
            shortcut = b == 0 and (kind == "bottleneck" or stage > 0)
            x = block(x, filters, stride, shortcut, name=f"conv{level}_block{b + 1}", dilation=dilation)
        outputs[f"C{level}"] = x
    model = keras.Model(inputs, outputs, name=name or f"resnet{depth}")
    if weights is not None:
        load_applications_weights(model, weights)
    return model
