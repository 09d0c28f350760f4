"""fp16 TFLite exports: float16 weights, every other constant exact (kerapose.export.fp16).

The reference is the Keras model itself with its weights rounded to float16: the fp16 file must
compute what that model computes, and its non-weight constants (an epsilon of 1e-10, a sentinel
of 1e30, which the converter's own float16 mode turned into 0 and 65504) must keep their values.
"""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def model():
    import keras
    from keras import ops

    @keras.saving.register_keras_serializable(package="kerapose_tests")
    class Guarded(keras.layers.Layer):
        """x / max(|x|, 1e-10), and 1e30 where x <= 0: decoding-style constants."""

        def call(self, x):
            ratio = x / ops.maximum(ops.abs(x), 1e-10)
            return ops.where(x > 0, ratio + x, 1e30)

    keras.utils.set_random_seed(3)
    image = keras.Input((16, 16, 3), name="image")
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(image)
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(256, activation="relu")(x)
    x = keras.layers.Dense(4)(x)
    model = keras.Model(image, Guarded(name="guarded")(x))
    rng = np.random.default_rng(1)  # non-zero biases: the converter shares (or drops) equal zero ones
    model.set_weights([rng.normal(scale=0.3, size=w.shape).astype(np.float32) for w in model.get_weights()])
    return model


def _flatbuffer(model) -> bytes:
    import tensorflow as tf

    return tf.lite.TFLiteConverter.from_keras_model(model).convert()


def _run(flatbuffer: bytes, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=flatbuffer)
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"])


def _float_constants(flatbuffer: bytes) -> tuple[list[np.ndarray], int]:
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    fb = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    consts, halves = [], 0
    for tensor in fb.subgraphs[0].tensors:
        data = fb.buffers[tensor.buffer].data if tensor.buffer else None
        if data is None or not len(data):
            continue
        if tensor.type == schema.TensorType.FLOAT32:
            consts.append(np.frombuffer(bytes(data), np.float32))
        halves += tensor.type == schema.TensorType.FLOAT16
    return consts, halves


def test_float16_weights_computes_the_keras_model_with_float16_weights(model):
    from kerapose.export.fp16 import float16_weights

    x = np.random.default_rng(0).normal(size=(1, 16, 16, 3)).astype(np.float32)
    f32 = _flatbuffer(model)
    f16, converted = float16_weights(f32)
    assert converted == 8  # kernel and bias of the convolution, the depthwise and the two dense layers

    rounded = model.__class__.from_config(model.get_config())
    rounded.set_weights([w.astype(np.float16).astype(np.float32) for w in model.get_weights()])
    want = np.asarray(rounded(x))
    got = _run(f16, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert not np.allclose(_run(f32, x), got, rtol=1e-7, atol=1e-7)  # the weights did change

    consts, halves = _float_constants(f16)
    assert halves == 8
    assert any(np.any(c == np.float32(1e-10)) for c in consts)  # not 0
    assert any(np.any(c == np.float32(1e30)) for c in consts)  # not 65504
    assert len(f16) < 0.75 * len(f32)  # no float32 copy of the weights left behind


def test_export_tflite_fp16_keeps_the_decoding_constants_exact(model, tmp_path):
    """The converter's float16 mode (what kerapose used before) rounds them: checked here so the
    reason for float16_weights stays visible."""
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.target_spec.supported_types = [tf.float16]
    consts, _ = _float_constants(conv.convert())
    assert not any(np.any(c == np.float32(1e-10)) for c in consts)

    from kerapose.export import export_model

    path = export_model(model, "tflite", str(tmp_path / "m16.tflite"), quantize="fp16", input_size=(16, 16))
    with open(path, "rb") as f:
        consts, halves = _float_constants(f.read())
    assert halves == 8 and any(np.any(c == np.float32(1e-10)) for c in consts)
