"""MultiPoseNet keypoint subnet (Kocabas et al. 2018, section 3.2)."""

from __future__ import annotations

import keras
from keras import layers

__all__ = ["keypoint_subnet"]


def keypoint_subnet(
    num_outputs: int,
    levels: tuple[int, ...] = (2, 3, 4, 5),
    feature_size: int = 256,
    head_size: int = 128,
    fuse_size: int = 512,
    name: str = "keypoint_subnet",
) -> keras.Model:
    """K2..K5 (stride 4..32) -> K keypoint heatmaps + 1 person segmentation channel at stride 4.

    Each level: two 3x3 convs to ``head_size`` channels (D2..D5), upsampled to stride 4 and
    concatenated (4 x 128 = 512), then a 3x3 conv + ReLU and a 1x1 conv to ``num_outputs``.
    Intermediate supervision: a 1x1 conv to ``num_outputs`` on every D level, upsampled to the
    output size, named ``heatmaps_k{level}``.
    """
    base = levels[0]
    # The heatmap outputs start near zero (normal, std 0.001, as in SimpleBaseline / mmpose's
    # heatmap heads). With Glorot init the first outputs are ~1 everywhere, the first loss is
    # ~40x the all-zero loss, and its Adam step kills ReLUs. Measured on the quickstart model
    # (ResNet-18, 128x128, one batch of 16 memorised, 150 steps): loss 336 -> 6.6 with this init
    # at Adam 1e-3; with Glorot 12060 -> 126 (Adam 5e-4), -> 145 (2e-3), -> 309 (5e-3).
    out_init = {"kernel_initializer": keras.initializers.RandomNormal(stddev=0.001), "bias_initializer": "zeros"}
    inputs = {f"K{l}": keras.Input(shape=(None, None, feature_size), name=f"K{l}") for l in levels}
    fused, outputs = [], {}
    for l in levels:
        d = inputs[f"K{l}"]
        for i in (1, 2):
            d = layers.Conv2D(head_size, 3, padding="same", activation="relu", name=f"{name}_d{l}_conv{i}")(d)
        factor = 2 ** (l - base)
        side = layers.Conv2D(num_outputs, 1, name=f"{name}_side{l}", **out_init)(d)
        if factor > 1:
            d = layers.UpSampling2D(factor, interpolation="bilinear", name=f"{name}_d{l}_up")(d)
            side = layers.UpSampling2D(factor, interpolation="bilinear", name=f"{name}_side{l}_up")(side)
        fused.append(d)
        outputs[f"heatmaps_k{l}"] = side
    x = layers.Concatenate(name=f"{name}_concat")(fused)
    x = layers.Conv2D(fuse_size, 3, padding="same", activation="relu", name=f"{name}_fuse")(x)
    outputs = {"heatmaps": layers.Conv2D(num_outputs, 1, name=f"{name}_out", **out_init)(x), **outputs}
    return keras.Model(inputs, outputs, name=name)
