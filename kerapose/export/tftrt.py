"""TF-TRT export: the kerapose SavedModel with TensorRT engines for NVIDIA GPUs.

Needs a TensorFlow built with TensorRT. The pip builds from TF 2.18 on are not (this project's
TF 2.21 included), so on them :func:`export_tftrt` raises a RuntimeError pointing to the current
GPU route, ONNX -> TensorRT (onnxruntime's TensorRT execution provider or ``trtexec``; see
docs/export.md). The conversion code is kept for builds that have TensorRT.
"""

from __future__ import annotations

import os

import tensorflow as tf

from kerapose.export.metadata import write_savedmodel_metadata
from kerapose.export.savedmodel import atomic_directory, savedmodel_source

__all__ = ["TFTRT_PRECISIONS", "NO_TENSORRT_MESSAGE", "export_tftrt", "tensorrt_available"]

TFTRT_PRECISIONS = ("fp32", "fp16")
NO_TENSORRT_MESSAGE = (
    "TF-TRT export needs TensorFlow built with TensorRT, and this TensorFlow build (tf {version}) has no "
    "TensorRT (tf.sysconfig.get_build_info()['is_tensorrt_build'] is False; pip builds since TF 2.18 ship "
    "without it). Use the ONNX -> TensorRT route instead: `export_model(model, 'onnx', 'model.onnx')`, then "
    "onnxruntime's TensorrtExecutionProvider or `trtexec --onnx=model.onnx` (docs/export.md)."
)


def tensorrt_available() -> bool:
    """Whether this TensorFlow build has TensorRT (TF-TRT)."""
    return bool(tf.sysconfig.get_build_info().get("is_tensorrt_build", False))


def _no_tensorrt() -> RuntimeError:
    return RuntimeError(NO_TENSORRT_MESSAGE.format(version=tf.__version__))


def export_tftrt(
    model,
    output: str,
    *,
    quantize: str | None = None,
    end_to_end: bool = False,
    input_size=None,
    max_people: int = 20,
    score_threshold: float | None = None,
    iou_threshold: float = 0.5,
    overwrite: bool = False,
) -> str:
    """Convert a Keras model (or a kerapose SavedModel directory) to a TF-TRT SavedModel directory.

    ``quantize``: ``"fp32"`` (default) or ``"fp16"`` TensorRT precision. Engines are built lazily
    on the first call with each input shape. Raises RuntimeError where TensorFlow has no TensorRT.
    """
    quantize = "fp32" if quantize is None else quantize
    if quantize not in TFTRT_PRECISIONS:
        raise ValueError(f"tftrt quantize={quantize!r} is not supported; accepted: {', '.join(TFTRT_PRECISIONS)}")
    if not tensorrt_available():
        raise _no_tensorrt()
    from tensorflow.python.compiler.tensorrt import trt_convert as trt

    precision = trt.TrtPrecisionMode.FP16 if quantize == "fp16" else trt.TrtPrecisionMode.FP32
    with savedmodel_source(model, "tftrt", quantize, end_to_end=end_to_end, input_size=input_size,
                           max_people=max_people, score_threshold=score_threshold,
                           iou_threshold=iou_threshold) as (sm_dir, meta):
        try:
            converter = trt.TrtGraphConverterV2(input_saved_model_dir=sm_dir, precision_mode=precision)
            converter.convert()
        except RuntimeError as e:  # e.g. TensorRT libraries missing at run time
            if "TensorRT" in str(e):
                raise RuntimeError(f"{e}. {_no_tensorrt()}") from e
            raise
        with atomic_directory(output, overwrite=overwrite) as tmp:
            converter.save(tmp)
            if meta is not None:
                write_savedmodel_metadata(tmp, meta)
    return os.path.abspath(output)
