"""Bilinear crop-and-resize built from gathers.

``tf.image.crop_and_resize`` has no TFLite builtin kernel (it needs the Flex delegate, which
the Python LiteRT runtime lacks), so exported graphs that crop RoIs (the Pose Residual
Network's heatmap crops) use :func:`crop_and_resize_bilinear` instead: the same sampling
grid, bilinear weights and extrapolation rule, expressed with ``tf.gather`` on a flattened
image, which converts to the builtin GATHER op (and to ONNX Gather).
"""

from __future__ import annotations

import tensorflow as tf

__all__ = ["crop_and_resize_bilinear"]


def crop_and_resize_bilinear(
    images,
    boxes,
    box_indices,
    crop_size: tuple[int, int],
    extrapolation_value: float = 0.0,
) -> tf.Tensor:
    """Same result as ``tf.image.crop_and_resize(..., method="bilinear")``.

    Args:
        images: ``[B, H, W, C]`` float tensor.
        boxes: ``[N, 4]`` normalised ``(y1, x1, y2, x2)``: 0 is the first pixel centre and
            1 the last (``y * (H - 1)`` in pixels). ``y1 > y2`` flips the crop; coordinates
            outside [0, 1] sample outside the image.
        box_indices: ``[N]`` int, the image of each box.
        crop_size: ``(crop_height, crop_width)``, static positive ints.
        extrapolation_value: value of samples outside the image.

    Returns:
        ``[N, crop_height, crop_width, C]`` float32.
    """
    try:
        ch, cw = (int(v) for v in crop_size)
    except (TypeError, ValueError):
        raise ValueError(f"crop_size: expected (height, width) ints, got {crop_size!r}") from None
    if ch < 1 or cw < 1:
        raise ValueError(f"crop_size: expected positive (height, width), got {crop_size!r}")
    images = tf.convert_to_tensor(images)
    if images.shape.rank != 4:
        raise ValueError(f"images: expected rank 4 [B, H, W, C], got shape {images.shape}")
    images = tf.cast(images, tf.float32)
    boxes = tf.cast(tf.convert_to_tensor(boxes), tf.float32)
    if boxes.shape.rank != 2 or (boxes.shape[-1] is not None and boxes.shape[-1] != 4):
        raise ValueError(f"boxes: expected shape [N, 4], got {boxes.shape}")
    box_indices = tf.cast(tf.convert_to_tensor(box_indices), tf.int32)

    shape = tf.shape(images)
    h, w, c = shape[1], shape[2], shape[3]
    hm1 = tf.cast(h - 1, tf.float32)
    wm1 = tf.cast(w - 1, tf.float32)
    y1, x1, y2, x2 = tf.unstack(boxes, 4, axis=1)

    def sample_coords(a1, a2, extent_m1, n):
        # Sample positions in pixels, [N, n]; crop size 1 samples the box centre.
        if n > 1:
            step = tf.range(n, dtype=tf.float32)[None, :]
            return a1[:, None] * extent_m1 + step * ((a2 - a1) * extent_m1 / float(n - 1))[:, None]
        return (0.5 * (a1 + a2) * extent_m1)[:, None]

    in_y = sample_coords(y1, y2, hm1, ch)  # [N, ch]
    in_x = sample_coords(x1, x2, wm1, cw)  # [N, cw]
    ok_y = (in_y >= 0.0) & (in_y <= hm1)
    ok_x = (in_x >= 0.0) & (in_x <= wm1)
    top_f = tf.floor(in_y)
    left_f = tf.floor(in_x)
    y_lerp = (in_y - top_f)[:, :, None, None]  # [N, ch, 1, 1]
    x_lerp = (in_x - left_f)[:, None, :, None]  # [N, 1, cw, 1]

    # Indices clipped into the image; out-of-range samples are replaced afterwards.
    def clip(v, hi):
        return tf.clip_by_value(tf.cast(v, tf.int32), 0, hi - 1)

    top, bottom = clip(top_f, h), clip(tf.math.ceil(in_y), h)
    left, right = clip(left_f, w), clip(tf.math.ceil(in_x), w)

    flat = tf.reshape(images, [-1, c])
    base = (box_indices * h * w)[:, None, None]  # [N, 1, 1]

    def gather(rows, cols):
        return tf.gather(flat, base + rows[:, :, None] * w + cols[:, None, :])  # [N, ch, cw, C]

    tl, tr = gather(top, left), gather(top, right)
    bl, br = gather(bottom, left), gather(bottom, right)
    top_row = tl + (tr - tl) * x_lerp
    bottom_row = bl + (br - bl) * x_lerp
    crops = top_row + (bottom_row - top_row) * y_lerp
    inside = (ok_y[:, :, None] & ok_x[:, None, :])[..., None]  # [N, ch, cw, 1]
    return tf.where(inside, crops, tf.cast(extrapolation_value, tf.float32))
