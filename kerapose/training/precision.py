"""A recipe's ``mixed_precision`` and the global Keras dtype policy."""

from __future__ import annotations

import functools

import keras

__all__ = ["cpu_has_bfloat16", "describe_auto_precision", "precision_policy", "restores_dtype_policy"]

_PRECISIONS = {False: None, None: None, "float32": None, True: "mixed_float16", "float16": "mixed_float16",
               "bfloat16": "mixed_bfloat16"}
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
CPUINFO = "/proc/cpuinfo"


def cpu_has_bfloat16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU has bfloat16 instructions (Linux flags ``avx512_bf16`` / ``amx_bf16`` in
    ``cpuinfo``, default :data:`CPUINFO`; False where it cannot be read)."""
    try:
        with open(cpuinfo or CPUINFO) as f:
            flags = set(f.read().split())
    except OSError:
        return False
    return any(flag in flags for flag in _BF16_FLAGS)


def precision_policy(value) -> str | None:
    """A recipe's ``mixed_precision`` (false / "float32", true = "float16", "bfloat16", "auto") ->
    the Keras dtype policy to set, or None for float32. bfloat16 pays only on CPUs with bfloat16
    instructions (AVX512_BF16 / AMX: 1.3-2.1x faster steps); elsewhere TensorFlow emulates it
    (2-3x slower steps measured on an AVX512-VNNI Xeon without them) and float16 is emulated
    everywhere on CPUs. ``"auto"``: bfloat16 where the CPU has those instructions, float32
    otherwise (:func:`describe_auto_precision` says which and why)."""
    if value == "auto":
        return "mixed_bfloat16" if cpu_has_bfloat16() else None
    try:
        return _PRECISIONS[value]
    except (KeyError, TypeError):
        raise ValueError(f"mixed_precision: expected false, 'float32', true, 'float16', 'bfloat16' or 'auto', "
                         f"got {value!r}") from None


def describe_auto_precision() -> str:
    """What ``mixed_precision: auto`` chose on this machine, and why (one line)."""
    if cpu_has_bfloat16():
        return "mixed_precision auto: bfloat16 (this CPU has bfloat16 instructions)"
    return ("mixed_precision auto: float32 (this CPU has no bfloat16 instructions, "
            f"{' / '.join(_BF16_FLAGS)}: TensorFlow would emulate bfloat16, 2-3x slower)")


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
