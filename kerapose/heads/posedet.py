"""PoseDet head (Tian et al. 2021): coarse poses, keypoint-aware pose embedding, refinement, scores.

One head is shared by every FPN level (the same weights run on each level's map). For each
level cell (a *candidate*) it predicts:

- ``coarse``: 2K offsets from the candidate to its K joints, in units of the level's stride
  (the bypass branch; interleaved ``dx0, dy0, dx1, dy1, ...``);
- ``refined``: the coarse offsets plus a refinement regressed from the regression branch's
  pose embedding (paper eq. 3); the coarse part enters through a stop-gradient, so the
  refinement loss trains only the refinement (as the authors' code detaches it);
- ``logits``: one classification logit from the classification branch's pose embedding;
- ``heatmaps``: K maps for the intermediate supervision of the FPN (training only).

The pose embedding (:class:`PoseEmbedding`) is a deformable convolution with a 1 x K kernel
whose K sampling points are the candidate's coarse joints: the features at the K joints are
sampled bilinearly (:func:`kerapose.ops.sample.bilinear_sample`), concatenated (K * C) and
aggregated by one matrix (a 1x1 convolution over K * C channels).
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf
from keras import layers

from kerapose.ops.sample import bilinear_sample

__all__ = ["PoseEmbedding", "RefinedOffsets", "posedet_head", "HEAD_NORMS", "group_count"]

HEAD_NORMS = ("group", "batch", "none")


def group_count(channels: int, groups: int = 32) -> int:
    """The largest divisor of ``channels`` not above ``groups`` (GroupNorm needs a divisor)."""
    return math.gcd(int(channels), int(groups))


@keras.saving.register_keras_serializable(package="kerapose")
class PoseEmbedding(keras.layers.Layer):
    """Keypoint-aware pose embedding: a 1 x K deformable convolution sampling at the coarse joints.

    Call ``layer(features, offsets)``: ``features`` [B, H, W, C], ``offsets`` [B, H, W, 2K] (the
    coarse joint offsets in cells of this map, ``dx, dy`` per joint). Returns [B, H, W, channels]:
    for candidate (i, j), ``sum_k W_k . features(j + dx_k, i + dy_k)``, no activation.

    The offsets reach the sampling positions as ``(1 - g) * stop_gradient(o) + g * o`` with
    ``g = gradient_scale``: the same forward value, with the gradient from the embedding into
    the coarse branch scaled by ``g`` (0.1 in the authors' code, after RepPoints).
    """

    def __init__(self, num_keypoints: int, channels: int, gradient_scale: float = 0.1, use_bias: bool = False,
                 kernel_initializer="random_normal", **kwargs):
        super().__init__(**kwargs)
        if int(num_keypoints) < 1:
            raise ValueError(f"num_keypoints: expected a positive count, got {num_keypoints!r}")
        if int(channels) < 1:
            raise ValueError(f"channels: expected a positive count, got {channels!r}")
        if not 0.0 <= float(gradient_scale) <= 1.0:
            raise ValueError(f"gradient_scale: expected a factor in [0, 1], got {gradient_scale!r}")
        self.num_keypoints = int(num_keypoints)
        self.channels = int(channels)
        self.gradient_scale = float(gradient_scale)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, features_shape, offsets_shape=None):
        c = features_shape[-1]
        if c is None:
            raise ValueError("PoseEmbedding: the channel axis of features must be known")
        if offsets_shape is not None and offsets_shape[-1] not in (None, 2 * self.num_keypoints):
            raise ValueError(f"PoseEmbedding: offsets must have 2K = {2 * self.num_keypoints} channels, "
                             f"got {offsets_shape[-1]}")
        self.in_channels = int(c)
        self.kernel = self.add_weight(name="kernel", shape=(self.num_keypoints * self.in_channels, self.channels),
                                      initializer=self.kernel_initializer)
        self.bias = self.add_weight(name="bias", shape=(self.channels,), initializer="zeros") if self.use_bias else None

    def call(self, features, offsets):
        k, c = self.num_keypoints, self.in_channels
        offsets = tf.cast(offsets, tf.float32)
        g = self.gradient_scale
        offsets = (1.0 - g) * tf.stop_gradient(offsets) + g * offsets
        dynamic = tf.shape(features)
        b, h, w = (d if d is not None else dynamic[i] for i, d in enumerate(features.shape[:3]))
        cols = tf.cast(tf.range(w), tf.float32)
        rows = tf.cast(tf.range(h), tf.float32)
        grid = tf.stack([tf.broadcast_to(cols[None, :], [h, w]), tf.broadcast_to(rows[:, None], [h, w])], -1)
        points = tf.reshape(offsets, [b, h, w, k, 2]) + grid[None, :, :, None, :]
        sampled = bilinear_sample(features, tf.reshape(points, [b, h * w, k, 2]))  # [B, HW, K, C]
        flat = tf.reshape(sampled, [-1, k * c])
        out = tf.matmul(flat, tf.cast(self.kernel, flat.dtype))
        if self.bias is not None:
            out = out + tf.cast(self.bias, out.dtype)
        return tf.reshape(out, [b, h, w, self.channels])

    def compute_output_shape(self, features_shape, offsets_shape=None):
        return (*features_shape[:3], self.channels)

    def get_config(self) -> dict:
        return {**super().get_config(), "num_keypoints": self.num_keypoints, "channels": self.channels,
                "gradient_scale": self.gradient_scale, "use_bias": self.use_bias,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer)}


@keras.saving.register_keras_serializable(package="kerapose")
class RefinedOffsets(keras.layers.Layer):
    """``(coarse, delta) -> stop_gradient(coarse) + delta``: eq. 3 of the paper.

    The refinement loss then trains the refinement (``delta``) against ``target - coarse``
    without moving the coarse branch, which has its own loss.
    """

    def call(self, coarse, delta):
        return tf.stop_gradient(tf.cast(coarse, delta.dtype)) + delta

    def compute_output_shape(self, coarse_shape, delta_shape):
        return delta_shape


def _conv_block(x, filters: int, norm: str, groups: int, name: str):
    # the authors' std 0.01 relies on the normalisation; without one it would shrink every layer
    init = keras.initializers.RandomNormal(stddev=0.01) if norm != "none" else "he_normal"
    x = layers.Conv2D(filters, 3, padding="same", use_bias=norm == "none", kernel_initializer=init,
                      name=f"{name}_conv")(x)
    if norm == "group":
        x = layers.GroupNormalization(group_count(filters, groups), epsilon=1e-5, name=f"{name}_gn")(x)
    elif norm == "batch":
        x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def posedet_head(
    num_keypoints: int,
    in_channels: int,
    feat_channels: int = 128,
    embed_channels: int = 128,
    coarse_convs: int = 3,
    refine_convs: int = 2,
    cls_convs: int = 2,
    heatmap_convs: int = 1,
    norm: str = "group",
    groups: int = 32,
    gradient_scale: float = 0.1,
    prior_probability: float = 0.01,
    name: str = "posedet_head",
) -> keras.Model:
    """The shared PoseDet head: one level's features ``[B, h, w, in_channels]`` -> dict of
    ``coarse`` [B, h, w, 2K], ``refined`` [B, h, w, 2K] (offsets in stride units), ``logits``
    [B, h, w, 1] and ``heatmaps`` [B, h, w, K].

    Args:
        num_keypoints: K.
        in_channels: channels of the FPN levels.
        feat_channels: width of the 3x3 convolutions of every branch.
        embed_channels: width of the pose embeddings.
        coarse_convs, refine_convs, cls_convs, heatmap_convs: 3x3 convs per branch (the authors'
            code: 3, 2, 2 and 1; the paper: two for regression and classification).
        norm: ``"group"`` (GroupNorm, the authors' code; converts to TFLite builtins and ONNX),
            ``"batch"`` or ``"none"`` after each 3x3 conv.
        groups: GroupNorm groups (reduced to a divisor of ``feat_channels``).
        gradient_scale: scale of the gradient from the embeddings into the coarse offsets.
        prior_probability: initial score of every candidate (bias of the logit, RetinaNet's prior).
    """
    if norm not in HEAD_NORMS:
        raise ValueError(f"norm: expected one of {', '.join(HEAD_NORMS)}, got {norm!r}")
    for arg, v in (("coarse_convs", coarse_convs), ("refine_convs", refine_convs), ("cls_convs", cls_convs),
                   ("heatmap_convs", heatmap_convs)):
        if int(v) != v or v < 0:
            raise ValueError(f"{arg}: expected a non-negative integer, got {v!r}")
    if not 0.0 < prior_probability < 1.0:
        raise ValueError(f"prior_probability: expected a value in (0, 1), got {prior_probability!r}")
    k = int(num_keypoints)
    small = keras.initializers.RandomNormal(stddev=0.01)
    feats = keras.Input(shape=(None, None, in_channels), name="features")

    def branch(n: int, prefix: str, width: int):
        x = feats
        for i in range(n):
            x = _conv_block(x, width, norm, groups, f"{name}_{prefix}{i + 1}")
        return x

    coarse = layers.Conv2D(2 * k, 1, kernel_initializer=small, name=f"{name}_coarse_out")(
        branch(coarse_convs, "coarse", feat_channels))

    reg = PoseEmbedding(k, embed_channels, gradient_scale, kernel_initializer=small, name=f"{name}_refine_embedding")(
        branch(refine_convs, "refine", feat_channels), coarse)
    reg = layers.Activation("relu", name=f"{name}_refine_embedding_relu")(reg)
    delta = layers.Conv2D(2 * k, 1, kernel_initializer=small, name=f"{name}_refine_out")(reg)
    refined = RefinedOffsets(name=f"{name}_refined")(coarse, delta)

    cls = PoseEmbedding(k, embed_channels, gradient_scale, kernel_initializer=small, name=f"{name}_cls_embedding")(
        branch(cls_convs, "cls", feat_channels), coarse)
    cls = layers.Activation("relu", name=f"{name}_cls_embedding_relu")(cls)
    prior = keras.initializers.Constant(-math.log((1.0 - prior_probability) / prior_probability))
    logits = layers.Conv2D(1, 1, kernel_initializer=small, bias_initializer=prior, name=f"{name}_cls_out")(cls)

    # near-zero initial heatmaps: the L2 loss starts at the all-zero prediction's value
    # (the reason is measured in kerapose.heads.keypoint_subnet)
    hm = branch(heatmap_convs, "heatmap", in_channels)
    heatmaps = layers.Conv2D(k, 1, kernel_initializer=keras.initializers.RandomNormal(stddev=0.001),
                             name=f"{name}_heatmap_out")(hm)
    return keras.Model(feats, {"coarse": coarse, "refined": refined, "logits": logits, "heatmaps": heatmaps},
                       name=name)

