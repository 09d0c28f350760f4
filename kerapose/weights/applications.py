"""ImageNet weights in the keras.applications file format, loaded by layer name.

The files keras.applications publishes (``resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5``
and friends) are legacy Keras HDF5 weight files: a root attribute ``layer_names`` and, per layer,
a group whose attribute ``weight_names`` lists its arrays in the layer's weight order. kerapose
backbones use the same layer names as keras.applications, so such a file loads by name.

Nothing is downloaded at import or in tests: :func:`fetch_applications_weights` downloads into the
cache directory (:mod:`kerapose.weights.cache`) only when a user asks, and checks the file's hash.
"""

from __future__ import annotations

import os

import numpy as np

from kerapose.weights.cache import default_cache_dir, fetch_file

__all__ = [
    "APPLICATIONS_WEIGHTS",
    "read_h5_weights",
    "load_applications_weights",
    "fetch_applications_weights",
]

_BASE = "https://storage.googleapis.com/tensorflow/keras-applications"
# name -> (url, md5 of the file), the hashes keras.applications publishes for its files.
APPLICATIONS_WEIGHTS: dict[str, tuple[str, str]] = {
    "resnet50": (
        f"{_BASE}/resnet/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "4d473c1dd8becc155b73f8504c6f6626",
    ),
    "resnet101": (
        f"{_BASE}/resnet/resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "88cf7a10940856eca736dc7b7e228a21",
    ),
    "resnet152": (
        f"{_BASE}/resnet/resnet152_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "ee4c566cf9a93f14d82f913c2dc6dd0c",
    ),
    "vgg19": (
        f"{_BASE}/vgg19/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "253f8cb515780f3b799900260a226db6",
    ),
}


def fetch_applications_weights(name: str, cache_dir: str | None = None) -> str:
    """Download (once) the keras.applications ImageNet weight file ``name`` and return its path.

    The published hashes are MD5 (keras.applications' ``file_hash``); a file that does not match
    is deleted and an error raised (:func:`kerapose.weights.cache.fetch_file`).
    """
    if name not in APPLICATIONS_WEIGHTS:
        raise ValueError(f"no ImageNet weight file known for {name!r}; known: {', '.join(APPLICATIONS_WEIGHTS)}")
    url, digest = APPLICATIONS_WEIGHTS[name]
    target = os.path.join(cache_dir or default_cache_dir(), os.path.basename(url))
    return fetch_file(url, target, digest, algorithm="md5")


def read_h5_weights(path: str) -> dict[str, list[np.ndarray]]:
    """Read a legacy Keras HDF5 weight file into ``{layer_name: [arrays in weight order]}``."""
    import h5py

    if not os.path.isfile(path):
        raise FileNotFoundError(f"weight file not found: {path}")
    out: dict[str, list[np.ndarray]] = {}
    with h5py.File(path, "r") as f:
        root = f["model_weights"] if "model_weights" in f else f
        if "layer_names" not in root.attrs:
            raise ValueError(
                f"{path}: not a keras.applications-format weight file (no 'layer_names' attribute); "
                "save with the legacy HDF5 format"
            )
        for lname in root.attrs["layer_names"]:
            lname = lname.decode() if isinstance(lname, bytes) else str(lname)
            g = root[lname]
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in g.attrs.get("weight_names", [])]
            out[lname] = [np.asarray(g[n]) for n in names]
    return out


def load_applications_weights(model, path: str, allow_missing: bool = False) -> int:
    """Load a keras.applications-format weight file into ``model`` by layer name.

    Every layer of ``model`` that has weights must be found in the file with equal shapes,
    unless ``allow_missing``. Layers of the file the model does not have are ignored (a file of
    a full classifier loads into a backbone). Returns the number of layers loaded.
    """
    stored = read_h5_weights(path)
    loaded = 0
    for layer in _all_layers(model):
        if not layer.weights:
            continue
        arrays = stored.get(layer.name)
        if arrays is None:
            if allow_missing:
                continue
            raise ValueError(f"{path}: no weights for layer {layer.name!r} of {model.name!r}")
        if len(arrays) != len(layer.weights):
            raise ValueError(
                f"{path}: layer {layer.name!r} has {len(arrays)} arrays in the file, "
                f"the model expects {len(layer.weights)}"
            )
        for var, arr in zip(layer.weights, arrays):
            if tuple(var.shape) != tuple(arr.shape):
                raise ValueError(
                    f"{path}: layer {layer.name!r} weight {var.name!r}: file shape {tuple(arr.shape)}, "
                    f"model shape {tuple(var.shape)}"
                )
        layer.set_weights(arrays)
        loaded += 1
    if loaded == 0:
        raise ValueError(f"{path}: no layer of {model.name!r} found in the file")
    return loaded


def _all_layers(model):
    """Layers of ``model`` with nested models flattened (a backbone may sit inside a task model)."""
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)
        else:
            yield layer
