"""The model families and their built-in names: the one table every command reads.

``kerapose train``, ``info``, ``export``, ``predict``, ``eval`` and ``oracle`` find a model's
builder, default sizes, recipe schema and oracles here, through its family
(:class:`kerapose.models.family.ModelFamily`), never by testing its class.
"""

from __future__ import annotations

import os
from typing import Any

import keras

from kerapose.models.family import ModelFamily
from kerapose.models.multiposenet.family import FAMILY as MULTIPOSENET
from kerapose.models.paf.family import FAMILY as PAF
from kerapose.models.posedet.family import FAMILY as POSEDET
from kerapose.models.strongpose.family import FAMILY as STRONGPOSE

__all__ = ["FAMILIES", "family_named", "family_of", "family_for_recipe", "recipe_model_names", "model_names",
           "build_model", "load_any_model", "oracle_codecs"]

FAMILIES: tuple[ModelFamily, ...] = (MULTIPOSENET, PAF, POSEDET, STRONGPOSE)

_BY_BUILTIN = {name: fam for fam in FAMILIES for name in fam.builders}


def model_names() -> list[str]:
    """Every built-in model name, family by family."""
    return list(_BY_BUILTIN)


def family_named(name: str) -> ModelFamily:
    """The family of a built-in model name."""
    if name not in _BY_BUILTIN:
        raise ValueError(f"unknown model {name!r}; built-in models: {', '.join(_BY_BUILTIN)}")
    return _BY_BUILTIN[name]


def family_of(model: Any) -> ModelFamily:
    """The family a task model belongs to (e.g. one loaded from a .keras file)."""
    for fam in FAMILIES:
        if fam.owns(model):
            return fam
    kinds = ", ".join(t.__name__ for fam in FAMILIES for t in fam.model_types)
    raise ValueError(f"{type(model).__name__} is not a kerapose task model; accepted: {kinds}")


def recipe_model_names() -> list[str]:
    return [n for fam in FAMILIES if fam.recipe is not None for n in fam.recipe.model_names]


def family_for_recipe(model_name: str) -> ModelFamily:
    """The family whose recipes name their model ``model_name``."""
    for fam in FAMILIES:
        if fam.recipe is not None and model_name in fam.recipe.model_names:
            return fam
    raise ValueError(f"no training recipe for model {model_name!r}; accepted: {', '.join(recipe_model_names())}")


def oracle_codecs() -> dict[str, ModelFamily]:
    """Codec name -> the family that declares its oracle."""
    return {codec: fam for fam in FAMILIES for codec in fam.oracles}


def build_model(name: str, input_shape: tuple = (None, None, 3), **kwargs) -> keras.Model:
    """Build a built-in model by name (random weights unless the family ships them)."""
    return family_named(name).builders[name](input_shape=tuple(input_shape), **kwargs)


def load_any_model(name_or_path: str, input_shape: tuple = (None, None, 3)) -> keras.Model:
    """A built-in model name, or the path of a .keras file."""
    if name_or_path in _BY_BUILTIN:
        return build_model(name_or_path, input_shape=input_shape)
    if name_or_path.endswith(".keras"):
        if not os.path.isfile(name_or_path):
            raise FileNotFoundError(f"model file not found: {name_or_path}")
        return keras.saving.load_model(name_or_path)
    raise ValueError(
        f"{name_or_path!r} is neither a built-in model ({', '.join(_BY_BUILTIN)}) nor a .keras file"
    )
