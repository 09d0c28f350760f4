"""Feature pyramid network (Lin et al. 2017) as a functional sub-model."""

from __future__ import annotations

import keras
from keras import layers

__all__ = ["feature_pyramid"]


def feature_pyramid(
    input_channels: dict[str, int],
    levels: tuple[int, ...] = (2, 3, 4, 5),
    extra_levels: int = 0,
    feature_size: int = 256,
    prefix: str = "P",
    name: str = "fpn",
) -> keras.Model:
    """Top-down pyramid over backbone levels ``C{l}``.

    Args:
        input_channels: channels of each backbone output, e.g. ``{"C2": 256, ..., "C5": 2048}``.
        levels: the backbone levels that get a lateral connection (consecutive, ascending).
        extra_levels: RetinaNet-style extra levels above the top one: the first is a stride-2
            3x3 conv on the top backbone level, each next one a stride-2 3x3 conv on ReLU of the
            previous (P6, P7).
        feature_size: channels of every output level.
        prefix: output names are ``f"{prefix}{level}"`` (``K2``.. for MultiPoseNet's keypoint
            pyramid, ``P3``.. for the person pyramid).

    Input sizes must be multiples of the top stride, so that every x2 upsampling lands exactly
    on the next level (the task models check this).
    """
    levels = tuple(sorted(levels))
    if any(b - a != 1 for a, b in zip(levels, levels[1:])):
        raise ValueError(f"FPN levels must be consecutive, got {levels}")
    inputs = {}
    for lvl in levels:
        key = f"C{lvl}"
        if key not in input_channels:
            raise ValueError(f"FPN needs backbone level {key}; got {sorted(input_channels)}")
        inputs[key] = keras.Input(shape=(None, None, input_channels[key]), name=key)
    outputs = {}
    top_down = None
    for lvl in reversed(levels):
        lateral = layers.Conv2D(feature_size, 1, name=f"{name}_lateral{lvl}")(inputs[f"C{lvl}"])
        if top_down is not None:
            up = layers.UpSampling2D(2, interpolation="nearest", name=f"{name}_up{lvl + 1}")(top_down)
            lateral = layers.Add(name=f"{name}_merge{lvl}")([lateral, up])
        top_down = lateral
        outputs[f"{prefix}{lvl}"] = layers.Conv2D(feature_size, 3, padding="same", name=f"{name}_out{lvl}")(lateral)
    x = inputs[f"C{levels[-1]}"]
    for i in range(extra_levels):
        lvl = levels[-1] + 1 + i
        if i > 0:
            x = layers.Activation("relu", name=f"{name}_relu{lvl}")(x)
        x = layers.Conv2D(feature_size, 3, strides=2, padding="same", name=f"{name}_out{lvl}")(x)
        outputs[f"{prefix}{lvl}"] = x
    ordered = {k: outputs[k] for k in sorted(outputs, key=lambda s: int(s[len(prefix):]))}
    return keras.Model(inputs, ordered, name=name)
