"""Sigmoid and softmax written out from ``exp``, for the decoding of end-to-end graphs.

Why: TFLite's int8 quantizer gives LOGISTIC and SOFTMAX fixed int8 output ranges (steps of 1/256)
whether or not their tensors were calibrated, and carries that int8 type on through the top-k,
gathers and concatenations after them. Measured on the quickstart MultiPoseNet: the person
scores' sigmoid and the PRN's softmax over 2,016 cells went int8 and every keypoint landed in its
crop's corner (AP 0.516 -> 0.000). EXP, ADD and DIV without calibration ranges stay float32.
Same values as ``keras.ops.sigmoid`` / ``keras.ops.softmax`` to float32 rounding.
"""

from __future__ import annotations

from keras import ops

__all__ = ["sigmoid", "softmax"]


def sigmoid(x):
    """``e / (1 + e)`` with ``e = exp(x)``, x clipped to +-80 (no inf / inf). Not ``1 / (1 + exp(-x))``:
    the converter fuses that back into LOGISTIC."""
    e = ops.exp(ops.clip(x, -80.0, 80.0))
    return e / (1.0 + e)


def softmax(x, axis: int = -1):
    """``exp(x - max) / sum(exp(x - max))`` along ``axis``."""
    e = ops.exp(x - ops.max(x, axis=axis, keepdims=True))
    return e / ops.sum(e, axis=axis, keepdims=True)
