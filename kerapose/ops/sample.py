"""Bilinear sampling of feature maps at arbitrary points, built from gathers.

This is the sampling step of a deformable convolution (Dai et al. 2017): each point reads the
bilinear interpolation of its four neighbouring cells, and a neighbour outside the map reads
zero, so a point fades to zero over the last cell beyond the border and is exactly zero one
cell or more outside. Written with ``tf.gather`` on the flattened map (the builtin GATHER op
of TFLite, Gather in ONNX) so that graphs using it export without Flex ops; gradients flow
into the features and into the point coordinates (through the interpolation weights), as in
a deformable convolution.
"""

from __future__ import annotations

import tensorflow as tf

__all__ = ["bilinear_sample"]


def bilinear_sample(features, points) -> tf.Tensor:
    """Bilinear samples of ``features`` at ``points``.

    Args:
        features: ``[B, H, W, C]`` float tensor.
        points: ``[B, N, P, 2]`` (x, y) in feature-cell coordinates: cell ``(i, j)`` has its
            centre at ``x = j``, ``y = i`` (the convention of :mod:`kerapose.codecs.grid`
            divided by the stride).

    Returns:
        ``[B, N, P, C]`` in the dtype of ``features``; neighbours outside the map count as 0.
    """
    features = tf.convert_to_tensor(features)
    if features.shape.rank != 4:
        raise ValueError(f"features: expected rank 4 [B, H, W, C], got shape {features.shape}")
    points = tf.convert_to_tensor(points)
    if points.shape.rank != 4 or (points.shape[-1] is not None and points.shape[-1] != 2):
        raise ValueError(f"points: expected [B, N, P, 2] (x, y), got shape {points.shape}")
    points = tf.cast(points, tf.float32)
    dynamic = tf.shape(features)
    # static sizes where known: the grid arithmetic then folds into constants on export
    b, h, w, c = (d if d is not None else dynamic[i] for i, d in enumerate(features.shape))
    x, y = points[..., 0], points[..., 1]  # [B, N, P]
    x0f, y0f = tf.floor(x), tf.floor(y)
    lx, ly = x - x0f, y - y0f  # weights of the right / lower neighbours
    x0, y0 = tf.cast(x0f, tf.int32), tf.cast(y0f, tf.int32)
    flat = tf.reshape(features, [-1, c])
    base = (tf.range(b) * h * w)[:, None, None]  # [B, 1, 1]

    def corner(cy, cx, weight):
        inside = (cx >= 0) & (cx < w) & (cy >= 0) & (cy < h)
        # clip so the gather stays in range; the weight of an outside neighbour is zeroed
        idx = base + tf.clip_by_value(cy, 0, h - 1) * w + tf.clip_by_value(cx, 0, w - 1)
        weight = weight * tf.cast(inside, tf.float32)
        return tf.gather(flat, idx) * tf.cast(weight, features.dtype)[..., None]

    return (corner(y0, x0, (1.0 - lx) * (1.0 - ly)) + corner(y0, x0 + 1, lx * (1.0 - ly))
            + corner(y0 + 1, x0, (1.0 - lx) * ly) + corner(y0 + 1, x0 + 1, lx * ly))
