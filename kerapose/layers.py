"""Small custom layers shared by the models."""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from kerapose import float_math

__all__ = ["Preprocess", "Probabilities", "ResizeTo", "SizeCheck", "Letterbox", "PREPROCESS_MODES"]

# mode -> (flip RGB to BGR, mean (in the flipped order), std); output = (x[, ::-1] - mean) / std
PREPROCESS_MODES: dict[str, tuple[bool, tuple[float, float, float], tuple[float, float, float]]] = {
    # keras.applications ResNet/VGG ("caffe"): BGR, ImageNet mean subtracted, no scaling.
    "caffe": (True, (103.939, 116.779, 123.68), (1.0, 1.0, 1.0)),
    # torchvision-style ImageNet statistics on RGB 0..255.
    "torch": (False, (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)),
    # OpenPose / CPM: pixels / 256 - 0.5 (on RGB).
    "openpose": (False, (128.0, 128.0, 128.0), (256.0, 256.0, 256.0)),
    # [-1, 1] ("tf" mode of keras.applications).
    "tf": (False, (127.5, 127.5, 127.5), (127.5, 127.5, 127.5)),
    # raw BGR 0..255 (networks trained on cv2 images without normalisation, e.g. tf-pose).
    "bgr_raw": (True, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}


@keras.saving.register_keras_serializable(package="kerapose")
class Preprocess(keras.layers.Layer):
    """RGB float 0..255 in, the normalisation a backbone's weights expect out.

    Keeping normalisation inside the model means every exported format takes the same raw
    pixels, and a user never has to know what the weights were trained on.
    """

    # int8 exports keep it float32 and quantize its output for the first convolution. Measured on
    # the quickstart MultiPoseNet ("caffe": RGB -> BGR): TFLite's int8 REVERSE_V2 took an output
    # scale of 1.49 from an input of scale 1.0 and copied the bytes, which left the colours
    # wrong (the layer's RMS error was 67 of 255) and cost 0.07 AP
    keeps_float = True

    def __init__(self, mode: str = "caffe", **kwargs):
        super().__init__(**kwargs)
        if mode not in PREPROCESS_MODES:
            raise ValueError(f"unknown preprocessing mode {mode!r}; accepted: {', '.join(PREPROCESS_MODES)}")
        self.mode = mode
        flip, mean, std = PREPROCESS_MODES[mode]
        self._flip = flip
        self._mean = mean
        self._std = std

    def call(self, x):
        x = ops.cast(x, self.compute_dtype)
        if self._flip:
            x = ops.flip(x, axis=-1)
        mean = ops.convert_to_tensor(self._mean, dtype=x.dtype)
        std = ops.convert_to_tensor(self._std, dtype=x.dtype)
        return (x - mean) / std

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="kerapose")
class Probabilities(keras.layers.Layer):
    """Logits -> sigmoid probabilities at the start of a decoding, float32
    (:func:`kerapose.float_math.sigmoid`: an int8 export keeps it float, where an int8 LOGISTIC
    would hand the decoder int8 scores)."""

    keeps_float = True

    def call(self, x):
        return float_math.sigmoid(ops.cast(x, "float32"))

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="kerapose")
class ResizeTo(keras.layers.Layer):
    """Resize the first input to the spatial size of the second (bilinear or nearest)."""

    def __init__(self, interpolation: str = "bilinear", **kwargs):
        super().__init__(**kwargs)
        if interpolation not in ("bilinear", "nearest"):
            raise ValueError(f"interpolation must be 'bilinear' or 'nearest', got {interpolation!r}")
        self.interpolation = interpolation

    def call(self, inputs):
        x, ref = inputs
        size = ops.shape(ref)[1:3]
        return ops.image.resize(x, size, interpolation=self.interpolation)

    def compute_output_shape(self, input_shapes):
        x, ref = input_shapes
        return (x[0], ref[1], ref[2], x[3])

    def get_config(self):
        return {**super().get_config(), "interpolation": self.interpolation}


@keras.saving.register_keras_serializable(package="kerapose")
class SizeCheck(keras.layers.Layer):
    """Identity that rejects images whose size the network cannot take.

    Networks with FPN top-down paths need H and W to be multiples of their coarsest stride so
    that every x2 upsampling lands exactly on the next level. The check runs on static shapes
    (when the model is built or traced) and on eager inputs; the end-to-end inference models pad
    images to a valid size before they get here.
    """

    keeps_float = True  # int8 export keeps it float32: geometry, not features

    def __init__(self, multiple: int, **kwargs):
        super().__init__(**kwargs)
        self.multiple = int(multiple)

    @staticmethod
    def validate_shape(shape, multiple: int) -> None:
        shape = tuple(shape)
        if len(shape) != 3:
            raise ValueError(f"input_shape must be (H, W, 3), got {shape}")
        if shape[-1] != 3:
            raise ValueError(f"expected 3 input channels (RGB), got {shape[-1]} in input shape {shape}")
        for axis, size in zip(("height", "width"), shape[:2]):
            if size is not None and (int(size) <= 0 or int(size) % multiple):
                raise ValueError(
                    f"input {axis} {size} is not accepted: it must be a positive multiple of {multiple}"
                )

    def build(self, input_shape):
        self.validate_shape(tuple(input_shape)[1:], self.multiple)

    def call(self, x):
        static = tuple(x.shape)[1:]
        if all(isinstance(s, int) for s in static):
            self.validate_shape(static, self.multiple)
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "multiple": self.multiple}


@keras.saving.register_keras_serializable(package="kerapose")
class Letterbox(keras.layers.Layer):
    """Resize an image batch to fit ``size`` keeping the aspect ratio, pad bottom/right with 0.

    Returns the float image and the scale (network pixels per image pixel) of each image.
    All images of a batch share one size (a batch is one tensor).
    """

    keeps_float = True  # int8 export keeps it float32: coordinates and scores are never int8

    def __init__(self, size: tuple[int, int], **kwargs):
        super().__init__(**kwargs)
        self.size = (int(size[0]), int(size[1]))

    def call(self, image):
        img = tf.cast(image, tf.float32)
        hw = tf.cast(tf.shape(img)[1:3], tf.float32)
        target = tf.constant(self.size, tf.float32)
        scale = tf.reduce_min(target / hw)
        new_hw = tf.cast(tf.round(hw * scale), tf.int32)
        new_hw = tf.minimum(tf.maximum(new_hw, 1), tf.constant(self.size, tf.int32))
        resized = tf.image.resize(img, new_hw, method="bilinear", antialias=False)
        pad_h = self.size[0] - new_hw[0]
        pad_w = self.size[1] - new_hw[1]
        padded = tf.pad(resized, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]])
        # a reshape (a TFLite builtin, unlike EnsureShape) gives the padded batch its static size
        padded = tf.reshape(padded, [-1, self.size[0], self.size[1], 3])
        batch = tf.shape(img)[0]
        return padded, tf.fill([batch], scale)

    def compute_output_spec(self, image):
        return (keras.KerasTensor((image.shape[0], *self.size, 3), "float32"),
                keras.KerasTensor((image.shape[0],), "float32"))

    def get_config(self):
        return {**super().get_config(), "size": list(self.size)}
