"""RetinaNet person subnet (Lin et al. 2017; fizyr/keras-retinanet defaults)."""

from __future__ import annotations

import math

import keras
from keras import layers

__all__ = ["retinanet_head", "NUM_ANCHORS"]

NUM_ANCHORS = 9  # 3 ratios x 3 scales per location


def _subnet(out_channels: int, feature_size: int, depth: int, bias_init, name: str) -> keras.Model:
    inp = keras.Input(shape=(None, None, feature_size), name=f"{name}_input")
    x = inp
    init = keras.initializers.RandomNormal(stddev=0.01)
    for i in range(depth):
        x = layers.Conv2D(feature_size, 3, padding="same", activation="relu", kernel_initializer=init,
                          name=f"{name}_conv{i + 1}")(x)
    x = layers.Conv2D(out_channels, 3, padding="same", kernel_initializer=init, bias_initializer=bias_init,
                      name=f"{name}_out")(x)
    return keras.Model(inp, x, name=name)


def retinanet_head(
    levels: tuple[int, ...] = (3, 4, 5, 6, 7),
    num_classes: int = 1,
    num_anchors: int = NUM_ANCHORS,
    feature_size: int = 256,
    depth: int = 4,
    prior_probability: float = 0.01,
    name: str = "person_subnet",
) -> keras.Model:
    """Class and box subnets shared over the pyramid levels.

    Outputs ``person_logits`` [B, A, num_classes] (logits; the class bias starts at
    -log((1 - p) / p) so that every anchor begins with probability ``prior_probability``) and
    ``person_boxes`` [B, A, 4] box deltas. Anchors are ordered level by level (P3 first), row
    major over each level's grid, then the ``num_anchors`` anchors of a location: the order of
    :class:`kerapose.codecs.boxes.BoxCodec`.
    """
    inputs = {f"P{l}": keras.Input(shape=(None, None, feature_size), name=f"P{l}") for l in levels}
    prior = keras.initializers.Constant(-math.log((1 - prior_probability) / prior_probability))
    cls_net = _subnet(num_anchors * num_classes, feature_size, depth, prior, f"{name}_class")
    box_net = _subnet(num_anchors * 4, feature_size, depth, "zeros", f"{name}_box")
    logits, boxes = [], []
    for l in levels:
        p = inputs[f"P{l}"]
        logits.append(layers.Reshape((-1, num_classes), name=f"{name}_logits{l}")(cls_net(p)))
        boxes.append(layers.Reshape((-1, 4), name=f"{name}_boxes{l}")(box_net(p)))
    outputs = {
        "person_logits": layers.Concatenate(axis=1, name="person_logits")(logits),
        "person_boxes": layers.Concatenate(axis=1, name="person_boxes")(boxes),
    }
    return keras.Model(inputs, outputs, name=name)
