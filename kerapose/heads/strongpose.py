"""StrongPose heads: per-output convolutions on the backbone's last features, and their upsampling.

PersonLab (and StrongPose after it) predict every map with one convolution on the final ResNet
features at the output stride and upsample the predictions bilinearly; a 1x1 convolution commutes
with the bilinear upsampling, so upsampling the predictions rather than the 2048-channel features
gives the same maps for a fraction of the work.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers

__all__ = ["strongpose_heads", "ResizeToStride"]


def strongpose_heads(in_channels: int, channels: dict[str, int], kernel_size: int = 1,
                     name: str = "heads") -> keras.Model:
    """Functional model: features ``[B, h, w, in_channels]`` -> ``{output: [B, h, w, channels]}``.

    Args:
        in_channels: channels of the backbone features.
        channels: output name -> channels (e.g. ``StrongPoseCodec.channels``).
        kernel_size: 1 (PersonLab) or 3.
    """
    if kernel_size not in (1, 3):
        raise ValueError(f"head_kernel: expected 1 or 3, got {kernel_size!r}")
    if not channels or any(int(c) < 1 for c in channels.values()):
        raise ValueError(f"channels: expected a positive channel count per output, got {channels!r}")
    features = keras.Input(shape=(None, None, int(in_channels)), name="features")
    outputs = {key: layers.Conv2D(int(c), kernel_size, padding="same", name=f"{key}_conv")(features)
               for key, c in channels.items()}
    return keras.Model(features, outputs, name=name)


@keras.saving.register_keras_serializable(package="kerapose")
class ResizeToStride(keras.layers.Layer):
    """Bilinear resize of maps to the grid of ``stride`` for an image: ``ceil(H/s) x ceil(W/s)``.

    ``call(maps, image)``; the image only gives its size. Half-pixel resizing (TF's default)
    maps cell centres onto cell centres under :mod:`kerapose.codecs.grid`'s convention when the
    image sides are multiples of both strides.
    """

    def __init__(self, stride: int, **kwargs):
        super().__init__(**kwargs)
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
            raise ValueError(f"stride: expected a positive integer, got {stride!r}")
        self.stride = stride

    def _size(self, image_shape, dynamic=None):
        out = []
        for axis, n in enumerate(image_shape[1:3]):
            if n is None:
                if dynamic is None:
                    out.append(None)
                else:
                    out.append((dynamic[axis + 1] + self.stride - 1) // self.stride)
            else:
                out.append(-(-int(n) // self.stride))
        return out

    def call(self, maps, image):
        size = self._size(tuple(image.shape), tf.shape(image))
        if all(isinstance(n, int) for n in size):
            size = tf.constant(size, tf.int32)
        else:
            size = tf.stack([tf.cast(n, tf.int32) for n in size])
        return tf.image.resize(maps, size, method="bilinear")

    def compute_output_shape(self, maps_shape, image_shape):
        h, w = self._size(tuple(image_shape))
        return (maps_shape[0], h, w, maps_shape[-1])

    def get_config(self) -> dict:
        return {**super().get_config(), "stride": self.stride}
