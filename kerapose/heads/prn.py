"""Pose Residual Network (Kocabas et al. 2018, section 3.4)."""

from __future__ import annotations

import keras
from keras import layers, ops

from kerapose import float_math

__all__ = ["SpatialSoftmax", "pose_residual_network", "PRN_INPUT_HW"]

PRN_INPUT_HW = (56, 36)  # height x width of the RoI the paper uses


@keras.saving.register_keras_serializable(package="kerapose")
class SpatialSoftmax(keras.layers.Layer):
    """Softmax over the H x W cells of each channel of a [B, H, W, C] tensor.

    The released PRN applied the softmax to slices of the flattened H*W*C vector, which mixes
    channels; here each channel is its own distribution over cells.
    """

    def call(self, x):
        shape = ops.shape(x)
        flat = ops.reshape(x, (shape[0], shape[1] * shape[2], shape[3]))
        return ops.reshape(float_math.softmax(flat, axis=1), shape)  # float32 in int8 exports

    def compute_output_shape(self, input_shape):
        return input_shape


def pose_residual_network(
    num_keypoints: int = 17,
    input_hw: tuple[int, int] = PRN_INPUT_HW,
    hidden: int = 1024,
    dropout: float = 0.5,
    residual_scale: float = 1.0,
    name: str = "prn",
) -> keras.Model:
    """RoI of the keypoint heatmaps [B, 56, 36, K] -> per-channel spatial distributions, same shape.

    Flatten -> Dense(hidden, relu) -> Dropout -> Dense(56*36*K) -> + ``residual_scale`` x the
    flattened input (the residual) -> reshape -> softmax over the 56 x 36 cells of each channel.

    ``residual_scale`` 1 is the paper's network. Heatmaps lie in [0, 1], so there the residual
    adds logits of at most 1 to a softmax over 2016 cells, next to nothing: the dense layers
    must learn every position themselves, from few pairs and without translation equivariance.
    A larger scale (e.g. 10) makes the residual alone a peaked distribution at the heatmap's
    maximum (the untrained "Max" assignment), which the dense layers then correct.
    """
    if not (isinstance(residual_scale, (int, float)) and residual_scale > 0):
        raise ValueError(f"residual_scale: expected a number > 0, got {residual_scale!r}")
    h, w = input_hw
    size = h * w * num_keypoints
    inp = keras.Input(shape=(h, w, num_keypoints), name="prn_input")
    flat = layers.Flatten(name=f"{name}_flatten")(inp)
    x = layers.Dense(hidden, activation="relu", name=f"{name}_fc1")(flat)
    x = layers.Dropout(dropout, name=f"{name}_dropout")(x)
    x = layers.Dense(size, name=f"{name}_fc2")(x)
    residual = flat
    if residual_scale != 1:  # the paper's graph stays as it was
        residual = layers.Rescaling(float(residual_scale), name=f"{name}_residual_scale")(flat)
    x = layers.Add(name=f"{name}_residual")([x, residual])
    x = layers.Reshape((h, w, num_keypoints), name=f"{name}_reshape")(x)
    out = SpatialSoftmax(name=f"{name}_softmax", dtype="float32")(x)  # float32 under mixed precision
    return keras.Model(inp, out, name=name)
