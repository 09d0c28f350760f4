"""Gather-based bilinear sampling (the deformable-conv sampling of PoseDet) vs a per-point numpy loop."""

import numpy as np
import pytest
import tensorflow as tf

from kerapose.ops.sample import bilinear_sample


def _reference(features: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Direct per-point bilinear interpolation; a neighbour outside the map reads zero."""
    b, h, w, c = features.shape
    out = np.zeros(points.shape[:3] + (c,), np.float64)
    for bi in range(b):
        for n in range(points.shape[1]):
            for p in range(points.shape[2]):
                x, y = points[bi, n, p]
                x0, y0 = int(np.floor(x)), int(np.floor(y))
                for cy, cx in ((y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)):
                    if 0 <= cy < h and 0 <= cx < w:
                        weight = (1 - abs(x - cx)) * (1 - abs(y - cy))
                        out[bi, n, p] += weight * features[bi, cy, cx]
    return out


@pytest.fixture(scope="module")
def maps():
    rng = np.random.default_rng(0)
    return rng.normal(size=(2, 5, 7, 3)).astype(np.float32)


def test_matches_numpy_inside_on_edges_and_outside(maps):
    rng = np.random.default_rng(1)
    _, h, w, _ = maps.shape
    inside = np.stack([rng.uniform(0, w - 1, (2, 6, 4)), rng.uniform(0, h - 1, (2, 6, 4))], -1)
    # cell centres, the last row/column exactly, half a cell beyond each border, far outside
    special = np.array([[0, 0], [w - 1, h - 1], [w - 1, 0], [0, h - 1], [-0.5, 2.0], [w - 0.5, 1.0],
                        [3.0, -0.25], [2.5, h - 0.75], [-1.0, 2.0], [w, 2.0], [-40.0, 3.0], [3.0, 99.0]])
    special = np.broadcast_to(special[None, :, None, :], (2, len(special), 1, 2))
    around = np.stack([rng.uniform(-2, w + 1, (2, 30, 1)), rng.uniform(-2, h + 1, (2, 30, 1))], -1)
    for pts in (inside, special, around):
        got = bilinear_sample(tf.constant(maps), tf.constant(pts, tf.float32)).numpy()
        np.testing.assert_allclose(got, _reference(maps, pts.astype(np.float32)), atol=2e-6)
    got = bilinear_sample(maps, special.astype(np.float32)).numpy()
    np.testing.assert_allclose(got[:, :4, 0], maps[:, [0, h - 1, 0, h - 1], [0, w - 1, w - 1, 0]], atol=1e-6)
    assert not got[:, 8:].any()  # one cell or more outside: zero, as a deformable conv reads
    assert np.all(np.abs(got[:, 4:8]) > 0)  # half a cell outside: half of the border value


def test_gradient_reaches_points_and_features(maps):
    pts = tf.Variable(np.array([[[[2.3, 1.6]], [[4.9, 3.2]]]] * 2, np.float32))
    feats = tf.Variable(maps)
    with tf.GradientTape(persistent=True) as tape:
        y = tf.reduce_sum(bilinear_sample(feats, pts) * tf.constant([1.0, -2.0, 0.5]))
    g_pts = tape.gradient(y, pts).numpy()
    # finite differences of the numpy reference
    eps = 1e-3
    for axis in (0, 1):
        d = np.zeros((2, 2, 1, 2), np.float32)
        d[..., axis] = eps

        def f(p):
            return (_reference(maps, p) * np.array([1.0, -2.0, 0.5])).sum(-1)[..., 0]

        numeric = (f(pts.numpy() + d) - f(pts.numpy() - d)) / (2 * eps)
        np.testing.assert_allclose(g_pts[..., 0, axis], numeric, rtol=1e-2, atol=1e-3)
    g_feat = tape.gradient(y, feats).numpy()
    assert np.count_nonzero(g_feat[..., 0]) == 2 * 2 * 4  # 4 neighbours per point


def test_bad_shapes_are_value_errors(maps):
    with pytest.raises(ValueError, match=r"features: expected rank 4"):
        bilinear_sample(maps[0], np.zeros((1, 1, 1, 2), np.float32))
    with pytest.raises(ValueError, match=r"points: expected \[B, N, P, 2\]"):
        bilinear_sample(maps, np.zeros((2, 3, 3), np.float32))
