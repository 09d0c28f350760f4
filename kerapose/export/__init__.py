"""Export to SavedModel, TFLite (fp32/fp16/dynamic/int8), ONNX and TF-TRT.

:data:`FORMATS` is the capability table (docs/export.md); :func:`export_model` dispatches on it.
The format modules (and TensorFlow) load on first use.
"""

from __future__ import annotations

import importlib

from kerapose.export.formats import FORMATS, ExportFormat, export_model, format_names, get_format

__all__ = [
    "FORMATS",
    "ExportFormat",
    "export_model",
    "format_names",
    "get_format",
    "export_savedmodel",
    "export_tflite",
    "export_onnx",
    "export_tftrt",
    "TFLiteRunner",
    "OnnxRunner",
    "tensorrt_available",
]

_LAZY = {
    "export_savedmodel": "kerapose.export.savedmodel",
    "export_tflite": "kerapose.export.tflite",
    "TFLiteRunner": "kerapose.export.tflite",
    "export_onnx": "kerapose.export.onnx",
    "OnnxRunner": "kerapose.export.onnx",
    "export_tftrt": "kerapose.export.tftrt",
    "tensorrt_available": "kerapose.export.tftrt",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'kerapose.export' has no attribute {name!r}")
