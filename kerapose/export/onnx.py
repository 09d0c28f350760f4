"""ONNX export (tf2onnx, opset 17) from the kerapose SavedModel, and an ONNX Runtime runner.

The ``serving_default`` signature of :mod:`kerapose.export.savedmodel` is converted by
``tf2onnx.convert.from_function``; the ONNX graph keeps the signature's names (input ``image``,
outputs by dict key), the dynamic dimensions get readable names (``batch``, ``height``,
``width``) and the model passes ``onnx.checker.check_model`` before it is written atomically.
For NVIDIA GPUs this file is also the TensorRT route (docs/export.md): onnxruntime's TensorRT
execution provider, or ``trtexec --onnx=...``.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Iterator

import numpy as np

from kerapose.export.metadata import embed_onnx_metadata
from kerapose.export.savedmodel import SIGNATURE_KEY, atomic_file, savedmodel_source

__all__ = ["ONNX_OPSET", "OnnxRunner", "export_onnx"]

ONNX_OPSET = 17
_DIM_NAMES = ("batch", "height", "width", "channels")


def _patch_tf2onnx_for_numpy2() -> None:
    """tf2onnx 1.17 predates numpy 2 (np.object, np.cast); Keras ships the fix it uses for its own
    ONNX export, so apply the same one (a no-op where that private helper is gone)."""
    try:
        from keras.src.export.tf2onnx_lib import patch_tf2onnx
    except ImportError:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        patch_tf2onnx()


@contextlib.contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def _convert(tf2onnx, fn, spec, opset: int):
    """tf2onnx conversion. By default its optimizer deep-copies the whole graph (weights included)
    before every pass so that a failing pass can be skipped: on the end-to-end model that is
    about 15 s of 40. Run without that safety net first (TF2ONNX_CATCH_ERRORS=FALSE) and fall
    back to the default only if a pass fails."""
    if "TF2ONNX_CATCH_ERRORS" not in os.environ:
        try:
            with _env("TF2ONNX_CATCH_ERRORS", "FALSE"):
                return tf2onnx.convert.from_function(fn, input_signature=[spec], opset=opset)[0]
        except Exception:  # noqa: BLE001  (an optimizer pass failed: retry with passes skippable)
            pass
    return tf2onnx.convert.from_function(fn, input_signature=[spec], opset=opset)[0]


def _name_dynamic_dims(model_proto) -> None:
    """tf2onnx names unknown dims ``unk__123``; give the image input's dims their meaning."""
    for inp in model_proto.graph.input:
        dims = inp.type.tensor_type.shape.dim
        if len(dims) == 4:
            for dim, name in zip(dims, _DIM_NAMES):
                if not dim.HasField("dim_value"):
                    dim.dim_param = name


def export_onnx(
    model,
    output: str,
    *,
    quantize: str | None = None,
    end_to_end: bool = False,
    input_size=None,
    max_people: int = 20,
    score_threshold: float = 0.3,
    iou_threshold: float = 0.5,
    opset: int = ONNX_OPSET,
    overwrite: bool = False,
) -> str:
    """Convert a Keras model (or a kerapose SavedModel directory) to one checked .onnx file.

    Args: as :func:`kerapose.export.tflite.export_tflite`; ``opset`` is the ONNX opset
    (17 is what tf2onnx 1.17 and the ops used here are tested with). Returns the path written.
    """
    if quantize not in (None, "none"):
        raise ValueError(f"onnx does not quantize here: quantize={quantize!r}; accepted: 'none' "
                         f"(quantize the .onnx with onnxruntime.quantization afterwards)")
    import onnx
    import tensorflow as tf
    import tf2onnx

    _patch_tf2onnx_for_numpy2()
    with savedmodel_source(model, "onnx", quantize, end_to_end=end_to_end, input_size=input_size,
                           max_people=max_people, score_threshold=score_threshold,
                           iou_threshold=iou_threshold) as (sm_dir, meta):
        loaded = tf.saved_model.load(sm_dir)  # kept referenced: the function reads its variables
        signature = loaded.signatures[SIGNATURE_KEY]
        spec = signature.structured_input_signature[1]["image"]

        # A tf.function over the signature gives tf2onnx structured (named) outputs to keep.
        @tf.function(input_signature=[spec])
        def serve(image):
            return signature(image=image)

        model_proto = _convert(tf2onnx, serve, spec, int(opset))
    _name_dynamic_dims(model_proto)
    if meta is not None:
        embed_onnx_metadata(model_proto, meta)
    onnx.checker.check_model(model_proto)
    with atomic_file(output, overwrite=overwrite) as tmp:
        onnx.save_model(model_proto, tmp)
    return os.path.abspath(output)


class OnnxRunner:
    """Run an .onnx file with ONNX Runtime; ``runner(image=x)`` or ``runner(x)`` returns
    ``{output name: array}``.

    ``providers`` defaults to the CPU provider; pass e.g. ``["TensorrtExecutionProvider",
    "CUDAExecutionProvider", "CPUExecutionProvider"]`` on a GPU build of onnxruntime.
    """

    _TYPES = {"tensor(float)": np.float32, "tensor(uint8)": np.uint8, "tensor(int32)": np.int32,
              "tensor(int64)": np.int64, "tensor(float16)": np.float16}

    def __init__(self, path: str, providers: list | None = None, num_threads: int | None = None):
        import onnxruntime as ort

        if not os.path.isfile(path):
            raise FileNotFoundError(f"ONNX model not found: {path}")
        options = ort.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = int(num_threads)
        self.path = path
        self.session = ort.InferenceSession(path, sess_options=options,
                                            providers=providers or ["CPUExecutionProvider"])
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]

    @property
    def input_names(self) -> list[str]:
        return list(self.inputs)

    def _prepare(self, name: str, value) -> np.ndarray:
        meta = self.inputs[name]
        x = np.asarray(value)
        if x.ndim != len(meta.shape) or any(isinstance(w, int) and w != g for w, g in zip(meta.shape, x.shape)):
            raise ValueError(f"input {name!r}: expected shape {meta.shape}, got {x.shape}")
        dtype = self._TYPES.get(meta.type)
        if dtype is None:
            return x
        if np.dtype(dtype).kind == "f" or x.dtype == dtype:
            return np.ascontiguousarray(x, dtype=dtype)  # float models also take uint8 pixels
        raise ValueError(f"input {name!r}: expected dtype {np.dtype(dtype).name}, got {x.dtype.name}")

    def __call__(self, inputs=None, **named) -> dict[str, np.ndarray]:
        if inputs is not None:
            if named:
                raise ValueError("pass inputs either as one array/dict or as keywords, not both")
            if isinstance(inputs, dict):
                named = dict(inputs)
            elif len(self.inputs) == 1:
                named = {self.input_names[0]: inputs}
            else:
                raise ValueError(f"this model has inputs {self.input_names}: pass a dict")
        if set(named) != set(self.inputs):
            raise ValueError(f"inputs: expected {sorted(self.inputs)}, got {sorted(named)}")
        feed = {k: self._prepare(k, v) for k, v in named.items()}
        return dict(zip(self.output_names, self.session.run(self.output_names, feed)))
