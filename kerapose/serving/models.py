"""Model discovery and hot loading for the embedded TF-Serving-compatible server.

Layout (the same as TensorFlow Serving's model base path): ``MODELS_DIR/NAME/VERSION/`` where
``VERSION`` is an integer and the directory holds a SavedModel (``saved_model.pb``). Every version
is loaded with ``tf.saved_model.load``; the highest one is served by default.

A version directory is only picked up once it is complete: its name must be an integer (so the
exporter's hidden ``.NAME.tmp-*`` staging directories and ``*.tmp`` / ``*.partial`` names are
skipped) and it must contain ``saved_model.pb``. kerapose's exporter writes into a temporary
directory and renames it into place, so a version appears atomically.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from dataclasses import dataclass, field

import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import saved_model_pb2

SIGNATURE_KEY = "serving_default"
MODEL_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
_VERSION_RE = re.compile(r"[0-9]+")
_SKIP_SUFFIXES = (".tmp", ".partial")

log = logging.getLogger("kerapose.serving")


class ModelNotFoundError(LookupError):
    """Unknown model name or version (HTTP 404)."""


def valid_model_name(name: str) -> bool:
    """True when ``name`` is a safe model name: ``[A-Za-z0-9_.-]+`` and not starting with a dot."""
    return bool(MODEL_NAME_RE.fullmatch(name)) and not name.startswith(".")


def is_complete_version_dir(path: str) -> bool:
    """True for ``.../VERSION`` directories that are fully written and may be loaded."""
    base = os.path.basename(os.path.normpath(path))
    if base.startswith(".") or base.endswith(_SKIP_SUFFIXES) or not _VERSION_RE.fullmatch(base):
        return False
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, "saved_model.pb"))


@dataclass(frozen=True)
class TensorInfo:
    """One signature input or output: TF dtype and shape (``None`` for unknown dims)."""

    name: str
    dtype: tf.DType
    shape: tuple

    def to_json(self) -> dict:
        """TF Serving's ``TensorInfo`` JSON (dtype enum name, dims as strings, -1 unknown)."""
        dims = [{"size": str(-1 if d is None else d), "name": ""} for d in self.shape]
        return {
            "dtype": types_pb2.DataType.Name(self.dtype.as_datatype_enum),  # e.g. DT_FLOAT
            "tensor_shape": {"dim": dims, "unknown_rank": False},
            "name": self.name,
        }


@dataclass
class LoadedVersion:
    """One loaded SavedModel version and its ``serving_default`` signature."""

    name: str
    version: int
    path: str
    module: object = field(repr=False)
    function: object = field(repr=False)
    inputs: dict  # input name -> TensorInfo, in signature order
    outputs: dict  # output name -> TensorInfo, sorted by name
    kerapose: dict | None = None  # the export's metadata (kerapose.export.metadata), None if it has none

    def __call__(self, arrays: dict) -> dict:
        """Run the signature on numpy arrays keyed by input name; returns numpy arrays."""
        tensors = {k: tf.convert_to_tensor(v, dtype=self.inputs[k].dtype) for k, v in arrays.items()}
        return {k: v.numpy() for k, v in self.function(**tensors).items()}

    def signature_json(self) -> dict:
        """The ``signature_def`` entry TF Serving reports in ``/metadata``."""
        return {
            "inputs": {k: v.to_json() for k, v in self.inputs.items()},
            "outputs": {k: v.to_json() for k, v in self.outputs.items()},
            "method_name": "tensorflow/serving/predict",
        }


def _graph_tensor_names(path: str) -> dict:
    """Tensor names as the SignatureDef in saved_model.pb records them (TF Serving reports these)."""
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    for meta in proto.meta_graphs:
        if SIGNATURE_KEY in meta.signature_def:
            sig = meta.signature_def[SIGNATURE_KEY]
            return {
                "inputs": {k: v.name for k, v in sig.inputs.items()},
                "outputs": {k: v.name for k, v in sig.outputs.items()},
            }
    return {"inputs": {}, "outputs": {}}


def load_version(name: str, version: int, path: str) -> LoadedVersion:
    """Load ``path`` with ``tf.saved_model.load`` and describe its serving signature."""
    module = tf.saved_model.load(path)
    if SIGNATURE_KEY not in module.signatures:
        raise ValueError(
            f"SavedModel {path!r} has no {SIGNATURE_KEY!r} signature "
            f"(found {sorted(module.signatures.keys())})"
        )
    fn = module.signatures[SIGNATURE_KEY]
    names = _graph_tensor_names(path)
    _, kwargs = fn.structured_input_signature
    inputs = {
        key: TensorInfo(names["inputs"].get(key, ""), spec.dtype, tuple(spec.shape.as_list()))
        for key, spec in kwargs.items()
    }
    outputs = {
        key: TensorInfo(names["outputs"].get(key, ""), spec.dtype, tuple(spec.shape.as_list()))
        for key, spec in sorted(fn.structured_outputs.items())
    }
    from kerapose.export.metadata import read_metadata

    return LoadedVersion(name, version, path, module, fn, inputs, outputs, read_metadata(path))


class ModelRepository:
    """All models under ``models_dir``, refreshed by :meth:`scan` (and optionally a poller thread)."""

    def __init__(self, models_dir: str):
        if not os.path.isdir(models_dir):
            raise ValueError(f"models_dir: expected an existing directory, got {models_dir!r}")
        self.models_dir = os.path.abspath(models_dir)
        self._models: dict[str, dict[int, LoadedVersion]] = {}
        self._failed: dict[str, tuple] = {}  # path -> (mtime of saved_model.pb, error message)
        self._lock = threading.Lock()
        self._scan_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- discovery ---------------------------------------------------------------------------
    def _discover(self) -> dict[str, dict[int, str]]:
        found: dict[str, dict[int, str]] = {}
        for name in sorted(os.listdir(self.models_dir)):
            model_dir = os.path.join(self.models_dir, name)
            if not valid_model_name(name) or not os.path.isdir(model_dir):
                continue
            for entry in os.listdir(model_dir):
                path = os.path.join(model_dir, entry)
                if is_complete_version_dir(path):
                    found.setdefault(name, {})[int(entry)] = path
        return found

    def scan(self) -> list[tuple[str, int]]:
        """Load new complete versions and drop versions whose directory disappeared.

        Returns the (name, version) pairs loaded by this call. A version that fails to load is
        logged and retried only when its ``saved_model.pb`` changes.
        """
        with self._scan_lock:
            found = self._discover()
            loaded = []
            for name, versions in found.items():
                for version, path in sorted(versions.items()):
                    with self._lock:
                        have = version in self._models.get(name, {})
                    if have:
                        continue
                    mtime = os.path.getmtime(os.path.join(path, "saved_model.pb"))
                    if self._failed.get(path, (None,))[0] == mtime:
                        continue
                    try:
                        lv = load_version(name, version, path)
                    except Exception as exc:  # a broken model must not stop the others
                        log.error("failed to load %s version %d from %s: %s", name, version, path, exc)
                        self._failed[path] = (mtime, str(exc))
                        continue
                    self._failed.pop(path, None)
                    with self._lock:
                        self._models.setdefault(name, {})[version] = lv
                    loaded.append((name, version))
                    log.info("loaded model %s version %d", name, version)
            with self._lock:
                for name in list(self._models):
                    for version in list(self._models[name]):
                        if version not in found.get(name, {}):
                            del self._models[name][version]
                            log.info("unloaded model %s version %d", name, version)
                    if not self._models[name]:
                        del self._models[name]
            return loaded

    def start_polling(self, interval: float = 2.0) -> None:
        """Rescan every ``interval`` seconds in a daemon thread (new versions load without restart)."""
        if interval <= 0:
            raise ValueError(f"poll interval: expected > 0 seconds, got {interval}")
        if self._thread is not None:
            return
        self._stop.clear()

        def loop():
            while not self._stop.wait(interval):
                try:
                    self.scan()
                except Exception:  # keep polling; a transient filesystem error is not fatal
                    log.exception("model scan failed")

        self._thread = threading.Thread(target=loop, name="kerapose-model-poller", daemon=True)
        self._thread.start()

    def stop_polling(self) -> None:
        """Stop the poller thread (if running)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    # -- lookup ------------------------------------------------------------------------------
    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._models)

    def versions(self, name: str) -> list[int]:
        """Loaded versions of ``name``, ascending; raises :class:`ModelNotFoundError`."""
        with self._lock:
            if name not in self._models:
                raise ModelNotFoundError(f"Servable not found for request: Latest({name})")
            return sorted(self._models[name])

    def get(self, name: str, version: int | None = None) -> LoadedVersion:
        """The requested version, or the latest when ``version`` is None."""
        with self._lock:
            versions = self._models.get(name)
            if not versions:
                raise ModelNotFoundError(f"Servable not found for request: Latest({name})")
            if version is None:
                return versions[max(versions)]
            if version not in versions:
                raise ModelNotFoundError(
                    f"Servable not found for request: Specific({name}, {version})"
                )
            return versions[version]
