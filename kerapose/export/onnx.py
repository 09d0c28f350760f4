"""ONNX export (tf2onnx, opset 17) from the kerapose SavedModel, and an ONNX Runtime runner.

The ``serving_default`` signature of :mod:`kerapose.export.savedmodel` is converted by
``tf2onnx.convert.from_function``; the ONNX graph keeps the signature's names (input ``image``,
outputs by dict key), the dynamic dimensions get readable names (``batch``, ``height``,
``width``) and the model passes ``onnx.checker.check_model`` before it is written atomically.
For NVIDIA GPUs this file is also the TensorRT route (docs/export.md): onnxruntime's TensorRT
execution provider, or ``trtexec --onnx=...``. ``quantize="int8"`` quantizes the network with
ONNX Runtime's static quantization and keeps the decoding float32 (:mod:`kerapose.export.onnx_int8`).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Iterator

import numpy as np

from kerapose.export.metadata import embed_onnx_metadata
from kerapose.export.savedmodel import SIGNATURE_KEY, atomic_file, savedmodel_source

__all__ = ["ONNX_OPSET", "ONNX_QUANTIZE", "OnnxRunner", "export_onnx", "savedmodel_to_onnx"]

ONNX_OPSET = 17
ONNX_QUANTIZE = ("none", "int8")
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


def savedmodel_to_onnx(saved_model_dir: str, opset: int = ONNX_OPSET):
    """The ONNX ModelProto of a SavedModel's ``serving_default`` signature (tf2onnx), its image
    input's dynamic dimensions named; not yet checked."""
    import tensorflow as tf
    import tf2onnx

    _patch_tf2onnx_for_numpy2()
    loaded = tf.saved_model.load(saved_model_dir)  # kept referenced: the function reads its variables
    signature = loaded.signatures[SIGNATURE_KEY]
    spec = signature.structured_input_signature[1]["image"]

    # A tf.function over the signature gives tf2onnx structured (named) outputs to keep.
    @tf.function(input_signature=[spec])
    def serve(image):
        return signature(image=image)

    model_proto = _convert(tf2onnx, serve, spec, int(opset))
    _name_dynamic_dims(model_proto)
    return model_proto


def export_onnx(
    model,
    output: str,
    *,
    quantize: str | None = None,
    end_to_end: bool = False,
    input_size=None,
    calibration_images=None,
    max_people: int = 20,
    score_threshold: float | None = None,
    iou_threshold: float = 0.5,
    num_calibration: int = 100,
    opset: int = ONNX_OPSET,
    overwrite: bool = False,
) -> str:
    """Convert a Keras model (or a kerapose SavedModel directory) to one checked .onnx file.

    Args: as :func:`kerapose.export.tflite.export_tflite`; ``opset`` is the ONNX opset
    (17 is what tf2onnx 1.17 and the ops used here are tested with). ``quantize``: one of
    :data:`ONNX_QUANTIZE`; ``"int8"`` quantizes the network with ONNX Runtime's static
    quantization, calibrated on ``calibration_images`` (at most ``num_calibration``), and keeps the
    decoding and the ``keeps_float`` layers float32 (:mod:`kerapose.export.onnx_int8`); it needs
    the Keras model. Returns the path written.
    """
    quantize = "none" if quantize is None else quantize
    if quantize not in ONNX_QUANTIZE:
        raise ValueError(f"onnx quantize={quantize!r} is not supported; accepted: {', '.join(ONNX_QUANTIZE)}")
    if quantize == "int8":
        if calibration_images is None:
            raise ValueError("quantize='int8' needs calibration_images (a directory or a list of image paths/arrays)")
        return _export_int8(model, output, calibration_images, end_to_end=end_to_end, input_size=input_size,
                                max_people=max_people, score_threshold=score_threshold,
                                iou_threshold=iou_threshold, num_calibration=num_calibration, opset=opset,
                                overwrite=overwrite)
    if calibration_images is not None:
        raise ValueError(f"calibration_images are only used with quantize='int8', got quantize={quantize!r}")
    import onnx

    with savedmodel_source(model, "onnx", quantize, end_to_end=end_to_end, input_size=input_size,
                           max_people=max_people, score_threshold=score_threshold,
                           iou_threshold=iou_threshold) as (sm_dir, meta):
        model_proto = savedmodel_to_onnx(sm_dir, opset)
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


def _export_int8(model, output: str, calibration_images, *, end_to_end: bool, input_size=None,
                     max_people: int = 20, score_threshold: float | None = None, iou_threshold: float = 0.5,
                     num_calibration: int = 100, opset: int, overwrite: bool = False) -> str:
    """``export_onnx(..., quantize="int8")``: see :mod:`kerapose.export.onnx_int8`. End to end, the calibration
    images are fed one by one as they are (the graph letterboxes them, as at inference) and the
    people of the int8 file are compared with the float ONNX file's on them (``agreement``,
    printed, stored in the metadata as ``int8.calibration_agreement``, warned past
    :data:`kerapose.export.int8.AGREEMENT_LIMITS`). Raw network: the images are letterboxed to
    the fixed input size, and the relative RMS error of each output is reported instead
    (``int8.calibration_relative_rms``)."""
    import tempfile

    import keras
    import onnx
    import onnxruntime

    from kerapose.export.int8 import (agreement, check_agreement, check_relative_rms, first_image_people, relative_rms,
                                      float_layer_names, keeps_float_layer_names)
    from kerapose.export.onnx_int8 import (NETWORK_OP_TYPES, QUANT_SETTINGS, classify_nodes, decoder_qdq_leaks,
                                           pre_process, qdq_summary, quantize_static_int8)
    from kerapose.export.savedmodel import resolve_input_size, serving_model, write_serving_savedmodel
    from kerapose.export.tflite import load_calibration_images, read_calibration_images

    if not isinstance(model, keras.Model):
        raise ValueError("onnx int8 needs the Keras model (its layers say what stays float32), got "
                         f"{type(model).__name__}: pass the .keras model or a built-in name")
    # read the images first: a bad folder fails before the slow conversion
    if end_to_end:
        images = read_calibration_images(calibration_images, num_calibration)
        feeds = [{"image": image[None]} for image in images]
    else:
        hw = resolve_input_size(model, input_size)
        batch = load_calibration_images(calibration_images, hw, limit=num_calibration).astype(np.float32)
        feeds = [{"image": x[None]} for x in batch]
    serving, spec, meta = serving_model(model, end_to_end, input_size, max_people, score_threshold, iou_threshold,
                                        fmt="onnx", quantize="int8")
    if end_to_end:
        decoding, inner = float_layer_names(serving)
    else:  # the raw network's outputs are the network's own: only its keeps_float layers stay float
        decoding, inner = set(), keeps_float_layer_names(serving)
    print(f"[kerapose] int8 (onnxruntime): calibrating on {len(feeds)} images; {len(decoding | inner)} layers stay "
          f"float32 (decoding, masks, per-image statistics)", flush=True)
    with tempfile.TemporaryDirectory(prefix="kerapose-onnx-int8-") as tmp:
        sm_dir, float_path, pre_path, int8_path = (os.path.join(tmp, n) for n in
                                                   ("saved_model", "float.onnx", "pre.onnx", "int8.onnx"))
        write_serving_savedmodel(serving, spec, sm_dir)
        onnx.save_model(savedmodel_to_onnx(sm_dir, opset), float_path)
        pre_process(float_path, pre_path)
        # node names after pre-processing: its optimiser removes and renames nodes
        pre = onnx.load(pre_path)
        classes = classify_nodes(pre, decoding, inner)
        # only the network's op types: ORT calibrates every tensor of the types it is given
        op_types = {n.op_type for n in pre.graph.node if n.name in classes.network} & set(NETWORK_OP_TYPES)
        quantize_static_int8(pre_path, int8_path, feeds, classes.kept_float, op_types)
        quantized = onnx.load(int8_path)
        leaks = decoder_qdq_leaks(quantized, classes.decoder)
        if leaks:
            raise RuntimeError("onnx int8: the quantized graph quantizes the decoding: " + "; ".join(leaks[:5]))
        summary = qdq_summary(quantized)
        if summary["conv_int8"] == 0:
            raise RuntimeError(f"onnx int8: no convolution was quantized ({summary}): the network's nodes were not "
                               f"recognised (see kerapose.export.onnx_int8.classify_nodes)")
        reference, int8 = OnnxRunner(float_path), OnnxRunner(int8_path)
        if end_to_end:
            report = agreement([first_image_people(reference(f)) for f in feeds], [first_image_people(int8(f)) for f in feeds], images)
        else:
            ref_out = [reference(f) for f in feeds]
            int8_out = [int8(f) for f in feeds]
            report = {name: relative_rms(np.stack([r[name] for r in ref_out]), np.stack([q[name] for q in int8_out]))
                      for name in reference.output_names}
        del reference, int8
    meta = {**meta, "int8": {
        "float_layers": sorted(decoding | inner),
        "quantizer": {"tool": "onnxruntime.quantization.quantize_static", "onnxruntime": onnxruntime.__version__,
                      **QUANT_SETTINGS, "pre_process": True},
        "op_types_to_quantize": sorted(op_types),
        "nodes": {"network": len(classes.network), "float": len(classes.kept_float), "decoder": len(classes.decoder)},
        "qdq": summary,
        ("calibration_agreement" if end_to_end else "calibration_relative_rms"): report,
    }}
    embed_onnx_metadata(quantized, meta)
    onnx.checker.check_model(quantized)
    with atomic_file(output, overwrite=overwrite) as tmp_path:
        onnx.save_model(quantized, tmp_path)
    if end_to_end:
        check_agreement(report)
    else:
        check_relative_rms(report)
    return os.path.abspath(output)
