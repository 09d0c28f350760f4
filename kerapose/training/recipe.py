"""Reading a YAML recipe: the file, the family its ``model.name`` names, the family's schema, and
the command line's overrides. Errors name the file, the section and the key."""

from __future__ import annotations

import copy
import os

import yaml
from pydantic import ValidationError

from kerapose.models.registry import family_for_recipe
from kerapose.training.schema import format_validation_error

__all__ = ["read_yaml", "load_recipe", "apply_overrides", "DEFAULT_RECIPE_MODEL"]

DEFAULT_RECIPE_MODEL = "multiposenet"  # a recipe without model.name trains the paper's system


def read_yaml(path: str) -> dict:
    """A recipe file's top-level mapping; clear errors for a missing file or bad YAML."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"training config not found: {path}")
    with open(path) as f:
        try:
            raw = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    return raw


def apply_overrides(raw: dict, overrides: dict | None) -> dict:
    """The command line's overrides on a recipe, before validation: ``epochs`` sets every
    stage's, ``data_root`` replaces the data source (and drops ``synthetic``), other keys are
    set at the top level; ``None`` values are skipped."""
    raw = copy.deepcopy(raw)
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key == "epochs":
            for st in raw.get("stages") or []:
                if isinstance(st, dict):
                    st["epochs"] = int(value)
        elif key == "data_root":
            data = raw.setdefault("data", {})
            if isinstance(data, dict):
                data["root"] = value
                data["synthetic"] = None
        else:
            raw[key] = value
    return raw


def load_recipe(path: str, overrides: dict | None = None) -> dict:
    """Read, override and validate a recipe with its family's schema; returns the recipe as a
    dict with every default filled in (what :func:`kerapose.training.runner.train` takes)."""
    raw = apply_overrides(read_yaml(path), overrides)
    model = raw.get("model", {})
    if not isinstance(model, dict):
        raise ValueError(f"{path}: model must be a mapping, got {type(model).__name__}")
    name = model.get("name", DEFAULT_RECIPE_MODEL)
    try:
        family = family_for_recipe(name)
    except ValueError as e:
        raise ValueError(f"{path}: model.name: {e}") from None
    try:
        recipe = family.recipe.schema.model_validate(raw)
    except ValidationError as e:
        raise ValueError(format_validation_error(path, e)) from None
    return recipe.model_dump()
