"""The one pixel <-> output-cell convention of kerapose.

Keypoint coordinates are COCO pixel coordinates. A network output at stride ``s`` has cell
``(i, j)`` covering input pixels ``s*i .. s*i + s - 1`` (rows) and ``s*j .. s*j + s - 1``
(columns), so the centre of cell ``j`` is at pixel ``s*j + (s - 1) / 2``. This is the
convention of OpenPose-style training code (tf-pose: ``x = 8*j + 3.5``) and of area
downsampling. Every codec converts with these two functions and nothing else.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["pixel_to_cell", "cell_to_pixel", "output_size", "check_image_hw"]


def pixel_to_cell(coord, stride: int):
    """Pixel coordinate(s) -> continuous cell coordinate(s) at ``stride``."""
    return (np.asarray(coord, dtype=np.float64) - (stride - 1) / 2.0) / stride


def cell_to_pixel(coord, stride: int):
    """Continuous cell coordinate(s) at ``stride`` -> pixel coordinate(s)."""
    return np.asarray(coord, dtype=np.float64) * stride + (stride - 1) / 2.0


def output_size(image_hw: tuple[int, int], stride: int) -> tuple[int, int]:
    """Output grid size of a ``SAME``-padded network at ``stride``: ``ceil(H/s), ceil(W/s)``."""
    h, w = image_hw
    return math.ceil(h / stride), math.ceil(w / stride)


def check_image_hw(image_hw) -> tuple[int, int]:
    """``(height, width)`` as positive ints, or a ValueError naming the bad value."""
    try:
        h, w = (int(v) for v in image_hw)
    except (TypeError, ValueError):
        raise ValueError(f"image_hw: expected (height, width), got {image_hw!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"image_hw: expected positive (height, width), got {image_hw!r}")
    return h, w
