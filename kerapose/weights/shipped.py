"""Trained weights that ship inside the package: no download, no extra step, sha256-checked.

Each entry names a built-in model, its weights file in ``kerapose/weights/files/``, the file's
sha256 (checked on every load: a damaged install fails loudly instead of predicting nonsense),
where the weights come from and their licence (the licence text and NOTICE sit beside the file,
as Apache-2.0 requires). The files are made from their source by :func:`write_shipped_weights`
(a maintainer step, e.g. ``kerapose weights import-tfpose GRAPH --output x.keras`` then this).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from kerapose.weights.cache import sha256_file

__all__ = ["ShippedWeights", "SHIPPED", "shipped_path", "load_shipped_weights", "write_shipped_weights"]

FILES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "files")


@dataclass(frozen=True)
class ShippedWeights:
    model: str  # the built-in name (kerapose.models.registry)
    filename: str
    sha256: str
    source: str
    license: str


SHIPPED: dict[str, ShippedWeights] = {
    w.model: w
    for w in (
        ShippedWeights(
            model="paf-mobilenetv2-small",
            filename="tfpose-mobilenet-v2-small.weights.h5",
            sha256="420981ab606b1d753d39b2013455a66225d74d125b731bb14d19dd404f734a01",
            source="tf-pose-estimation's mobilenet_v2_small (models/graph/mobilenet_v2_small/graph_opt.pb, "
                   "sha256 428a9d6e7bfc0319e1ce4de8c0191a9111cd281bea6ae2b496fd42c92d574160), imported by "
                   "kerapose.weights.tfpose",
            license="Apache-2.0 (files/LICENSE-tf-pose-estimation, files/NOTICE)",
        ),
    )
}


def shipped_path(name: str) -> str:
    """The path of a shipped weights file, after checking its sha256."""
    if name not in SHIPPED:
        raise ValueError(f"no weights ship for {name!r}; shipped: {', '.join(SHIPPED)}")
    spec = SHIPPED[name]
    path = os.path.join(FILES, spec.filename)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: the shipped weights of {name} are missing from this install")
    got = sha256_file(path)
    if got != spec.sha256:
        raise ValueError(f"{path}: sha256 {got} does not match the recorded {spec.sha256}; the install is damaged "
                         f"(reinstall kerapose)")
    return path


def load_shipped_weights(model, name: str):
    """Load the shipped weights of built-in ``name`` into ``model`` (built by its builder)."""
    model.load_weights(shipped_path(name))
    return model


def write_shipped_weights(model, name: str) -> tuple[str, str]:
    """Write ``model``'s weights as the shipped file of ``name``; returns (path, sha256) for
    :data:`SHIPPED`."""
    path = os.path.join(FILES, SHIPPED[name].filename)
    tmp = path + ".tmp.weights.h5"
    model.save_weights(tmp)
    os.replace(tmp, path)
    return path, sha256_file(path)
