"""Built-in model names -> constructors (random weights), for the CLI, benchmarks and tests."""

from __future__ import annotations

import os
from typing import Callable

import keras

__all__ = ["MODEL_BUILDERS", "build_model", "load_any_model", "model_names"]


def _multiposenet(depth: int) -> Callable[..., keras.Model]:
    def build(input_shape=(None, None, 3), **kw):
        from kerapose.models.multiposenet import MultiPoseNet

        return MultiPoseNet(backbone=f"resnet{depth}", input_shape=input_shape, name=f"multiposenet_r{depth}", **kw)

    return build


def _prn(input_shape=None, **kw):
    from kerapose.heads.prn import pose_residual_network

    return pose_residual_network(**kw)


def _paf(cls_name: str, model_name: str) -> Callable[..., keras.Model]:
    def build(input_shape=(None, None, 3), **kw):
        from kerapose.models import paf_models

        return getattr(paf_models, cls_name)(input_shape=input_shape, name=model_name, **kw)

    return build


def _paf_mobilenetv2_small(input_shape=(None, None, 3), **kw):
    from kerapose.models.paf_mobilenet import paf_mobilenetv2_small

    return paf_mobilenetv2_small(input_shape=input_shape, **kw)


MODEL_BUILDERS: dict[str, Callable[..., keras.Model]] = {
    "prn": _prn,
    "multiposenet-r18": _multiposenet(18),
    "multiposenet-r50": _multiposenet(50),
    "multiposenet-r101": _multiposenet(101),
    "paf-baseline": _paf("PafBaseline", "paf_baseline"),
    "ftn": _paf("FeatureTransferNet", "ftn"),
    "mln": _paf("MultiLevelNet", "mln"),
    # tf-pose's "mobilenet_v2_small" (trained weights: kerapose weights fetch / import-tfpose)
    "paf-mobilenetv2-small": _paf_mobilenetv2_small,
}


def model_names() -> list[str]:
    return list(MODEL_BUILDERS)


def build_model(name: str, input_shape: tuple = (None, None, 3), **kwargs) -> keras.Model:
    """Build a built-in model by name with random weights."""
    if name not in MODEL_BUILDERS:
        raise ValueError(f"unknown model {name!r}; built-in models: {', '.join(MODEL_BUILDERS)}")
    return MODEL_BUILDERS[name](input_shape=tuple(input_shape), **kwargs)


def load_any_model(name_or_path: str, input_shape: tuple = (None, None, 3)) -> keras.Model:
    """A built-in model name, or the path of a .keras file."""
    if name_or_path in MODEL_BUILDERS:
        return build_model(name_or_path, input_shape=input_shape)
    if name_or_path.endswith(".keras"):
        if not os.path.isfile(name_or_path):
            raise FileNotFoundError(f"model file not found: {name_or_path}")
        import kerapose  # noqa: F401  (registers the custom objects)

        return keras.saving.load_model(name_or_path)
    raise ValueError(
        f"{name_or_path!r} is neither a built-in model ({', '.join(MODEL_BUILDERS)}) nor a .keras file"
    )
