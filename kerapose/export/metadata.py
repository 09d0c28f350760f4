"""What every kerapose export says about itself, in the file the runtime loads.

``predict``, ``eval`` and ``serve`` read this instead of guessing from tensor shapes: the keypoint
set (so a 17-keypoint model is never taken for another set), whether the graph is end to end
(uint8 image in, people out) or the raw network, the network input size, and the kerapose version
that wrote it. Where it lives:

- SavedModel (and TF-TRT): ``kerapose.json`` in the model directory (TF Serving ignores it);
- TFLite: a flatbuffer metadata entry named ``kerapose`` (the file stays one file);
- ONNX: the model's ``metadata_props`` key ``kerapose``.
"""

from __future__ import annotations

import json
import os
from typing import Any

__all__ = ["METADATA_KEY", "SAVEDMODEL_FILE", "build_metadata", "read_metadata", "write_savedmodel_metadata",
           "embed_tflite_metadata", "embed_onnx_metadata", "require_end_to_end"]

METADATA_KEY = "kerapose"
SAVEDMODEL_FILE = "kerapose.json"


def build_metadata(model, *, end_to_end: bool, input_size: tuple[int, int], max_people: int | None = None,
                   score_threshold: float | None = None, fmt: str = "savedmodel", quantize: str | None = None) -> dict:
    """The metadata of an export of the Keras ``model``."""
    from kerapose import __version__
    from kerapose.models.registry import family_of

    kps = getattr(model, "keypoint_set", None)
    try:
        family = family_of(model).name
    except ValueError:  # a model that is not a kerapose task model (e.g. a bare backbone)
        family = None
    return {
        "kerapose_version": __version__,
        "format": fmt,
        "quantize": quantize or "none",
        "family": family,
        "model": model.name,
        "keypoint_set": kps.name if kps is not None else None,
        "keypoints": list(kps.keypoints) if kps is not None else None,
        "end_to_end": bool(end_to_end),
        "input_size": [int(input_size[0]), int(input_size[1])],
        "max_people": int(max_people) if end_to_end and max_people is not None else None,
        "score_threshold": float(score_threshold) if end_to_end and score_threshold is not None else None,
    }


def write_savedmodel_metadata(directory: str, metadata: dict) -> None:
    with open(os.path.join(directory, SAVEDMODEL_FILE), "w") as f:
        json.dump(metadata, f, indent=1)


def embed_tflite_metadata(flatbuffer: bytes, metadata: dict) -> bytes:
    """``flatbuffer`` with ``metadata`` as its ``kerapose`` metadata entry (JSON bytes)."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))
    buffer = schema.BufferT()
    buffer.data = list(json.dumps(metadata).encode())
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_KEY
    entry.buffer = len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name != METADATA_KEY.encode()] + [entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def embed_onnx_metadata(model_proto, metadata: dict) -> None:
    for prop in list(model_proto.metadata_props):
        if prop.key == METADATA_KEY:
            model_proto.metadata_props.remove(prop)
    entry = model_proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)


def read_metadata(path: str) -> dict[str, Any] | None:
    """The metadata of an export (SavedModel directory, ``.tflite``, ``.onnx``); None when the
    file has none (not written by kerapose, or by a kerapose before 0.2)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        file = os.path.join(path, SAVEDMODEL_FILE)
        if not os.path.isfile(file):
            return None
        with open(file) as f:
            return json.load(f)
    if path.endswith(".tflite"):
        from tensorflow.lite.tools import flatbuffer_utils

        with open(path, "rb") as f:
            model = flatbuffer_utils.read_model_from_bytearray(bytearray(f.read()))
        for entry in model.metadata or []:
            if entry.name in (METADATA_KEY, METADATA_KEY.encode()):
                return json.loads(bytes(model.buffers[entry.buffer].data).decode())
        return None
    if path.endswith(".onnx"):
        import onnx

        proto = onnx.load(path, load_external_data=False)
        for prop in proto.metadata_props:
            if prop.key == METADATA_KEY:
                return json.loads(prop.value)
        return None
    raise ValueError(f"{path}: not an export kerapose reads (a SavedModel directory, .tflite or .onnx)")


def require_end_to_end(metadata: dict | None, path: str, what: str = "kerapose predict") -> None:
    """A clear error for a raw-network export where people are needed."""
    if metadata is not None and not metadata.get("end_to_end", False):
        raise ValueError(
            f"{path} is a raw-network export (float image in, network maps out): {what} needs the end-to-end "
            f"graph (uint8 image in, people out). Export it without --raw: kerapose export --model MODEL "
            f"--format {metadata.get('format', 'savedmodel')} --output OUT")
