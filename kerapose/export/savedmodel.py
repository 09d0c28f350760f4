"""SavedModel export (``serving_default`` signature) with atomic writes and TF Serving versions.

Every other format starts from the SavedModel this module writes, so the serving model, its
signature and the atomic-write helpers live here:

- raw network: input ``image`` float32 ``[None, H, W, 3]`` (RGB 0..255, H and W fixed because
  the FPN needs multiples of its coarsest stride) -> the model's dict outputs;
- end-to-end (``model.end_to_end``): input ``image`` uint8 ``[None, None, None, 3]`` of any size
  -> ``keypoints``, ``scores``, ``boxes``, ``num_poses`` (DESIGN.md's serving contract).

A model is written into a hidden temporary directory beside the target and moved into place with
``os.replace``, so a server polling the directory never sees a half-written version.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import re
import shutil
import tempfile
from typing import Iterator

import keras
import tensorflow as tf

from kerapose.export.metadata import build_metadata, read_metadata, write_savedmodel_metadata

__all__ = [
    "DEFAULT_INPUT_SIZE",
    "SIGNATURE_KEY",
    "atomic_directory",
    "atomic_file",
    "export_savedmodel",
    "next_version",
    "resolve_input_size",
    "savedmodel_source",
    "serving_model",
    "write_serving_savedmodel",
]

SIGNATURE_KEY = "serving_default"
DEFAULT_INPUT_SIZE = (480, 480)  # the same default as MultiPoseNet.end_to_end


def _static_input_hw(model: keras.Model) -> tuple:
    shape = tuple(model.inputs[0].shape)
    return shape[1], shape[2]


def _size_multiple(model: keras.Model) -> int | None:
    """The stride the network's SizeCheck layer demands (None when it has none)."""
    from kerapose.layers import SizeCheck

    for layer in model.layers:
        if isinstance(layer, SizeCheck):
            return layer.multiple
    return None


def _family_size(model: keras.Model) -> tuple[int, int]:
    from kerapose.models.registry import family_of

    try:
        return family_of(model).export_input_size
    except ValueError:  # not a task model (e.g. a bare backbone)
        return DEFAULT_INPUT_SIZE


def resolve_input_size(model: keras.Model, input_size=None) -> tuple[int, int]:
    """The (H, W) the export fixes: ``input_size``, else the model's static size, else its
    family's export size (:attr:`kerapose.models.family.ModelFamily.export_input_size`), else 480x480."""
    if len(model.inputs) != 1 or len(model.inputs[0].shape) != 4 or model.inputs[0].shape[-1] != 3:
        shapes = [tuple(t.shape) for t in model.inputs]
        raise ValueError(f"export expects an image model with one input [B, H, W, 3], got inputs {shapes}")
    static = _static_input_hw(model)
    if input_size is None:
        input_size = static if None not in static else _family_size(model)
    try:
        h, w = (int(v) for v in input_size)
    except (TypeError, ValueError):
        raise ValueError(f"input_size must be (H, W) integers, got {input_size!r}") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"input_size must be positive, got {(h, w)}")
    for axis, want, fixed in (("height", h, static[0]), ("width", w, static[1])):
        if fixed is not None and fixed != want:
            raise ValueError(f"input_size {axis} {want} differs from the model's fixed input {axis} {fixed}")
    multiple = _size_multiple(model)
    if multiple and (h % multiple or w % multiple):
        raise ValueError(f"input_size {(h, w)} is not accepted by {model.name}: both sides must be multiples "
                         f"of {multiple}")
    return h, w


def serving_model(
    model: keras.Model,
    end_to_end: bool = False,
    input_size=None,
    max_people: int = 20,
    score_threshold: float | None = None,
    iou_threshold: float = 0.5,
    fmt: str = "savedmodel",
    quantize: str | None = None,
) -> tuple[keras.Model, tf.TensorSpec, dict]:
    """The Keras model to export, the spec of its ``image`` input, and the export's metadata.

    ``score_threshold=None`` keeps the model's own (its ``end_to_end`` default: 0.3 for
    MultiPoseNet and PoseDet, 0 for StrongPose, the grouping's for the PAF family), so an export
    finds the people that the Keras model finds; the metadata records the value (null where the
    default lives in the decoder's settings)."""
    hw = resolve_input_size(model, input_size)
    if end_to_end and not callable(getattr(model, "end_to_end", None)):
        raise ValueError(f"end_to_end=True needs a model with an in-graph decoder (an end_to_end method); "
                         f"{type(model).__name__} has none: export the raw network instead")
    if score_threshold is None and end_to_end:
        default = inspect.signature(model.end_to_end).parameters.get("score_threshold")
        recorded = None if default is None or default.default is inspect.Parameter.empty else default.default
    else:
        recorded = score_threshold
    meta = build_metadata(model, end_to_end=end_to_end, input_size=hw, max_people=max_people,
                          score_threshold=recorded, fmt=fmt, quantize=quantize)
    if end_to_end:
        settings = {"max_people": max_people, "iou_threshold": iou_threshold}
        if score_threshold is not None:
            settings["score_threshold"] = score_threshold
        accepted = inspect.signature(model.end_to_end).parameters
        if not any(p.kind == p.VAR_KEYWORD for p in accepted.values()):
            settings = {k: v for k, v in settings.items() if k in accepted}  # e.g. no box NMS, no iou_threshold
        e2e = model.end_to_end(hw, **settings)
        return e2e, tf.TensorSpec([None, None, None, 3], tf.uint8, name="image"), meta
    return model, tf.TensorSpec([None, *hw, 3], tf.float32, name="image"), meta


def write_serving_savedmodel(keras_model: keras.Model, spec: tf.TensorSpec, path: str) -> None:
    """Write ``keras_model`` with one ``serving_default`` signature into ``path`` (not atomic)."""
    archive = keras.export.ExportArchive()
    archive.track(keras_model)

    def serve(image):
        out = keras_model(image, training=False)
        return out if isinstance(out, dict) else {"output": out}

    archive.add_endpoint(SIGNATURE_KEY, serve, input_signature=[spec])
    archive.write_out(path, verbose=False)


def _check_overwrite(target: str, overwrite: bool) -> None:
    if os.path.lexists(target) and not overwrite:
        raise FileExistsError(f"{target} already exists; pass overwrite=True to replace it")


def _swap_into_place(tmp: str, target: str, overwrite: bool) -> None:
    """Move ``tmp`` to ``target``; an old target is moved aside first and deleted after."""
    parent, base = os.path.split(target)
    old = None
    if os.path.lexists(target):
        _check_overwrite(target, overwrite)  # it may have appeared while we were writing
        old = tempfile.mkdtemp(prefix=f".{base}.old-", dir=parent)
        os.rmdir(old)
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        if os.path.isdir(old):
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.remove(old)


@contextlib.contextmanager
def atomic_directory(target: str, overwrite: bool = False) -> Iterator[str]:
    """Yield a fresh hidden directory beside ``target``; on success it becomes ``target``.

    On an exception the temporary directory is deleted and ``target`` is left as it was. The
    hidden name (``.NAME.tmp-*``) is not a number, so TF Serving never loads it as a version.
    """
    target = os.path.abspath(target)
    _check_overwrite(target, overwrite)
    parent, base = os.path.split(target)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{base}.tmp-", dir=parent)
    try:
        yield tmp
        _swap_into_place(tmp, target, overwrite)
    finally:
        if os.path.lexists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(target: str, overwrite: bool = False) -> Iterator[str]:
    """Yield a temporary file path beside ``target``; on success it is renamed to ``target``."""
    target = os.path.abspath(target)
    _check_overwrite(target, overwrite)
    parent, base = os.path.split(target)
    os.makedirs(parent, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.tmp-", dir=parent)
    os.close(fd)
    try:
        yield tmp
        if os.path.isdir(target):
            raise FileExistsError(f"{target} is a directory; give a file path")
        _check_overwrite(target, overwrite)
        os.replace(tmp, target)
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def savedmodel_source(source, fmt: str, quantize: str | None = None,
                      **serving_kwargs) -> Iterator[tuple[str, dict | None]]:
    """A SavedModel directory for the converters and the metadata its conversion to ``fmt``
    carries (:mod:`kerapose.export.metadata`): ``source`` itself when it is a directory (its
    ``kerapose.json``, None if it has none), else a temporary export of the Keras model
    ``source`` (``serving_kwargs`` go to :func:`serving_model`)."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(os.path.join(path, "saved_model.pb")):
            raise ValueError(f"{path} is not a SavedModel directory (no saved_model.pb)")
        given = {k: v for k, v in serving_kwargs.items() if k in ("end_to_end", "input_size") and v}
        if given:
            raise ValueError(f"{', '.join(given)} cannot apply to an existing SavedModel ({path}): "
                             f"its signature is already fixed")
        meta = read_metadata(path)
        yield path, (None if meta is None else {**meta, "format": fmt, "quantize": quantize or "none"})
        return
    if not isinstance(source, keras.Model):
        raise ValueError(f"expected a keras.Model or a SavedModel directory, got {type(source).__name__}")
    keras_model, spec, meta = serving_model(source, **serving_kwargs, fmt=fmt, quantize=quantize)
    with tempfile.TemporaryDirectory(prefix="kerapose-export-") as tmp:
        path = os.path.join(tmp, "saved_model")
        write_serving_savedmodel(keras_model, spec, path)
        yield path, meta


def next_version(model_dir: str) -> int:
    """The next TF Serving version number under ``MODELS/NAME`` (1 when there is none)."""
    if not os.path.isdir(model_dir):
        return 1
    versions = [int(n) for n in os.listdir(model_dir) if re.fullmatch(r"\d+", n)]
    return max(versions, default=0) + 1


def _target_dir(output: str, version) -> str:
    if version is None:
        return output
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ValueError(f"version must be a non-negative integer (a TF Serving version), got {version!r}")
    return os.path.join(output, str(version))


def export_savedmodel(
    model: keras.Model,
    output: str,
    *,
    quantize: str | None = None,
    end_to_end: bool = False,
    input_size=None,
    max_people: int = 20,
    score_threshold: float | None = None,
    iou_threshold: float = 0.5,
    version: int | None = None,
    overwrite: bool = False,
) -> str:
    """Write a SavedModel with a ``serving_default`` signature; returns the directory written.

    Args:
        output: the SavedModel directory, or with ``version`` the model's directory
            ``MODELS/NAME`` (TF Serving layout): the model goes to ``MODELS/NAME/<version>``.
            An ``output`` that already ends in ``/NAME/N`` is a version directory as it is.
        quantize: only ``None``/``"none"`` (the capability table's options).
        end_to_end: export ``model.end_to_end(...)`` (uint8 image of any size -> poses).
        input_size: the network input (H, W); default the model's static size, else 480x480.
        overwrite: replace an existing directory/version (refused otherwise: FileExistsError).
    """
    if quantize not in (None, "none"):
        raise ValueError(f"savedmodel does not quantize: quantize={quantize!r}; accepted: 'none'")
    if not isinstance(model, keras.Model):
        raise ValueError(f"savedmodel export needs a keras.Model, got {type(model).__name__}")
    target = _target_dir(output, version)
    keras_model, spec, meta = serving_model(model, end_to_end, input_size, max_people, score_threshold,
                                            iou_threshold)
    with atomic_directory(target, overwrite=overwrite) as tmp:
        write_serving_savedmodel(keras_model, spec, tmp)
        write_savedmodel_metadata(tmp, meta)
    return os.path.abspath(target)
