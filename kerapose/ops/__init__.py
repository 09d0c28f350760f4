"""TensorFlow ops written to convert to TFLite builtins (no Flex ops)."""

from kerapose.ops.crop import crop_and_resize_bilinear

__all__ = ["crop_and_resize_bilinear"]
