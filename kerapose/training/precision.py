"""A recipe's ``mixed_precision`` and the global Keras dtype policy."""

from __future__ import annotations

import functools

import keras

__all__ = ["precision_policy", "restores_dtype_policy"]

_PRECISIONS = {False: None, None: None, "float32": None, True: "mixed_float16", "float16": "mixed_float16",
               "bfloat16": "mixed_bfloat16"}


def precision_policy(value) -> str | None:
    """A recipe's ``mixed_precision`` (false / "float32", true = "float16", "bfloat16") -> the Keras
    dtype policy to set, or None for float32. bfloat16 is the one that pays on CPUs with
    AVX512_BF16 / AMX (float16 is emulated there); numbers in benchmarks/bench_training.py."""
    try:
        return _PRECISIONS[value]
    except (KeyError, TypeError):
        raise ValueError(
            f"mixed_precision: expected false, 'float32', true, 'float16' or 'bfloat16', got {value!r}") from None


def restores_dtype_policy(run):
    """Decorator of the trainer: the global dtype policy that a recipe's ``mixed_precision``
    sets lasts for the run only, so models the caller builds afterwards are float32 again."""

    @functools.wraps(run)
    def wrapper(*args, **kwargs):
        previous = keras.mixed_precision.global_policy()
        try:
            return run(*args, **kwargs)
        finally:
            keras.mixed_precision.set_global_policy(previous)

    return wrapper
