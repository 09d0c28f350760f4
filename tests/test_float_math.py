"""kerapose.float_math: sigmoid and softmax from exp (kept float32 by int8 exports) against
numpy references, extremes included."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from kerapose import float_math


def test_sigmoid_matches_a_numpy_reference_without_overflow():
    x = np.array([-1e4, -100.0, -88.0, -20.0, -1.0, 0.0, 0.5, 3.0, 20.0, 88.0, 100.0, 1e4], np.float32)
    ref = np.where(x >= 0, 1 / (1 + np.exp(-np.abs(x, dtype=np.float64))),
                   np.exp(-np.abs(x, dtype=np.float64)) / (1 + np.exp(-np.abs(x, dtype=np.float64))))
    got = np.asarray(float_math.sigmoid(tf.constant(x)))
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-30)


def test_softmax_matches_a_numpy_reference_along_its_axis():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(2, 2016, 3)) * 30).astype(np.float32)
    x[0, 5, 0] = 1e4  # a huge logit: one-hot, no inf / inf
    shifted = x.astype(np.float64) - x.max(axis=1, keepdims=True)
    ref = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    got = np.asarray(float_math.softmax(tf.constant(x), axis=1))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-7)
    assert got[0, 5, 0] == 1.0
