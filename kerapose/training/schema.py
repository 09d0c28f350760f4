"""Recipe schema pieces every family shares (pydantic), and the error text a user reads.

A recipe is YAML with the sections ``model``, ``data``, ``augment``, ``targets``, ``batch_size``,
``seed``, ``mixed_precision``, ``stages`` and ``evaluate``. Each family subclasses
:class:`RecipeBase` with its own ``model``, ``targets``, ``stages`` and ``evaluate`` sections
(``kerapose/models/<family>/recipe.py``); every section is a :class:`Section`, which refuses a key
it does not know and names the accepted ones, so a misspelt option fails when the recipe loads,
not hours into training.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kerapose.training.precision import precision_policy

__all__ = ["Section", "DataSection", "LrDecay", "LrSteps", "StageBase", "RecipeBase", "constructor_keys",
           "format_validation_error", "check_augment"]


class Section(BaseModel):
    """A recipe section: unknown keys are an error that lists the accepted keys."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            accepted = cls.accepted_keys()
            unknown = sorted(str(k) for k in data if k not in accepted)
            if unknown:
                raise ValueError(f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                                 f"accepted: {', '.join(sorted(accepted))}")
        return data

    @classmethod
    def accepted_keys(cls) -> set[str]:
        return set(cls.model_fields)


class DataSection(Section):
    """Where the images come from: a COCO-layout ``root`` or a generated ``synthetic`` set."""

    root: str | None = None
    train_split: str = "train2017"
    val_split: str = "val2017"
    # arguments of kerapose.data.synthetic.generate_synthetic_coco (used when root is not given)
    synthetic: dict[str, Any] | None = None
    keypoint_set: str | None = None  # the annotations' keypoint set (None: the model's)
    image_ids: list[int] | None = None  # restricts both splits (an overfit check trains and scores the same images)

    @field_validator("synthetic")
    @classmethod
    def _synthetic_keys(cls, value):
        if value:
            from kerapose.data.synthetic import generate_synthetic_coco

            accepted = set(inspect.signature(generate_synthetic_coco).parameters) - {"out_dir", "progress",
                                                                                     "overwrite"}
            unknown = sorted(set(value) - accepted)
            if unknown:
                raise ValueError(f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                                 f"accepted: {', '.join(sorted(accepted))}")
        return value


class LrDecay(Section):
    """Caffe's "step" policy: the learning rate times ``factor`` every ``every_steps`` iterations."""

    factor: float = Field(gt=0, lt=1)
    every_steps: int = Field(ge=1)


class LrSteps(Section):
    """The learning rate times ``factor`` at each of ``epochs`` (epochs of the stage, counted from 1:
    ``[180, 200]`` runs epochs 181.. at ``lr * factor`` and 201.. at ``lr * factor^2``). Epochs at
    or past the stage's end never apply, so ``--epochs`` can shorten a recipe."""

    epochs: list[int] = Field(min_length=1)
    factor: float = Field(default=0.1, gt=0, lt=1)

    @field_validator("epochs")
    @classmethod
    def _increasing(cls, value):
        if any(v < 1 for v in value) or any(b <= a for a, b in zip(value, value[1:])):
            raise ValueError(f"expected increasing positive epoch numbers, got {list(value)}")
        return value


class StageBase(Section):
    """Keys every family's stage takes (``model.fit`` of one part of the model); see
    :func:`kerapose.training.optimizers.stage_optimizer` for how they combine."""

    name: str
    epochs: int = Field(ge=1)
    steps_per_epoch: int | None = Field(default=None, ge=1)
    batch_size: int | None = Field(default=None, ge=1)
    optimizer: Literal["adam", "sgd"] = "adam"
    learning_rate: float = Field(default=1e-4, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float | None = Field(default=None, ge=0)
    # sgd: "l2" is Caffe's coupled decay (the OpenPose papers'), "decoupled" Keras' own
    weight_decay_mode: Literal["l2", "decoupled"] = "l2"
    schedule: Literal["plateau", "cosine"] = "plateau"
    warmup_steps: int = Field(default=0, ge=0)
    lr_decay: LrDecay | None = None
    lr_steps: LrSteps | None = None
    plateau_factor: float = Field(default=0.1, gt=0, lt=1)
    plateau_patience: int | None = Field(default=None, ge=1)
    freeze_backbone: bool = False
    # the norm of all gradients together clipped to this (Keras' global_clipnorm; None: no clipping)
    global_clipnorm: float | None = Field(default=None, gt=0)
    # Polyak averaging: the optimizer keeps an exponential moving average of the trainable weights
    # with this momentum (Keras' use_ema), and the stage ends with the averages as the weights
    # (None: no averaging)
    ema_momentum: float | None = Field(default=None, gt=0, lt=1)

    @model_validator(mode="after")
    def _schedule(self):
        if self.warmup_steps and self.schedule != "cosine":
            raise ValueError(f"warmup_steps needs schedule: cosine, got schedule: {self.schedule}")
        for key in ("lr_decay", "lr_steps"):
            if getattr(self, key) is not None and (self.schedule != "plateau" or self.plateau_patience):
                raise ValueError(f"{key} is a schedule of its own: drop schedule: cosine and plateau_patience")
        if self.lr_decay is not None and self.lr_steps is not None:
            raise ValueError("lr_decay and lr_steps are two schedules: give one")
        return self


class RecipeBase(Section):
    """The sections every family's recipe has; families narrow ``model``, ``stages``, ``targets``
    and ``evaluate``."""

    stage_names: ClassVar[tuple[str, ...]] = ()  # the family's stage names, in a useful order
    # the family's augmentation defaults; a recipe's augment keys replace them one by one
    augment_defaults: ClassVar[dict[str, Any]] = {}
    # True: the family trains on annotations in its model's keypoint set (data.keypoint_set must agree)
    data_in_model_set: ClassVar[bool] = False

    model: Any
    data: DataSection = DataSection()
    augment: dict[str, Any] = {}
    targets: Any = None
    batch_size: int = Field(default=8, ge=1)
    seed: int = 0
    mixed_precision: bool | str = False
    stages: list[Any] = Field(min_length=1)
    evaluate: Any = None

    @model_validator(mode="before")
    @classmethod
    def _augment_defaults(cls, data: Any) -> Any:
        if cls.augment_defaults and isinstance(data, dict) and isinstance(data.get("augment", {}), dict):
            data = {**data, "augment": {**cls.augment_defaults, **(data.get("augment") or {})}}
        return data

    @model_validator(mode="after")
    def _keypoint_sets(self):
        model_set = getattr(self.model, "keypoint_set", None) or "coco17"
        if self.data_in_model_set and self.data.keypoint_set not in (None, model_set):
            raise ValueError(f"data.keypoint_set {self.data.keypoint_set!r} differs from model.keypoint_set "
                             f"{model_set!r}: this family trains on annotations in its own keypoint set")
        return self

    @model_validator(mode="after")
    def _augment(self):
        # every family's model section has the training crop as input_size
        check_augment(self.augment, self.model.input_size)
        return self

    @model_validator(mode="before")
    @classmethod
    def _stage_names(cls, data: Any) -> Any:
        # before the stage schemas: a wrong name says which names exist, not which keys fail
        if isinstance(data, dict) and isinstance(data.get("stages"), list):
            for i, st in enumerate(data["stages"]):
                if not isinstance(st, dict):
                    raise ValueError(f"stages[{i}] must be a mapping, got {type(st).__name__}")
                if st.get("name") not in cls.stage_names:
                    raise ValueError(f"stages[{i}].name is {st.get('name')!r}; accepted: {', '.join(cls.stage_names)}")
        return data

    @field_validator("mixed_precision")
    @classmethod
    def _precision(cls, value):
        try:
            precision_policy(value)
        except ValueError as e:
            raise ValueError(str(e).removeprefix("mixed_precision: ")) from None
        return value

    @model_validator(mode="after")
    def _data_source(self):
        if self.data.root is None and not self.data.synthetic:
            raise ValueError("give data.root (or --data-root) or data.synthetic")
        return self


def constructor_keys(cls: type, exclude: tuple[str, ...] = ("self", "kwargs", "input_shape", "name")) -> set[str]:
    """The keyword arguments of ``cls``'s constructor: the keys a recipe's ``model`` section may
    pass through to it (one source of truth: the constructor)."""
    return {p for p in inspect.signature(cls.__init__).parameters if p not in exclude}


def check_augment(augment: dict, size: tuple[int, int]) -> None:
    """The ``augment`` section against :class:`kerapose.data.augment.AugmentConfig`."""
    import dataclasses

    from kerapose.data.augment import AugmentConfig

    accepted = {f.name for f in dataclasses.fields(AugmentConfig)} - {"output_size"}
    unknown = sorted(set(augment) - accepted)
    if unknown:
        raise ValueError(f"augment: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                         f"accepted: {', '.join(sorted(accepted))}")
    try:
        AugmentConfig(output_size=tuple(size), **augment)
    except (TypeError, ValueError) as e:
        raise ValueError(f"augment: {e}") from None


def _where(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not str(part).startswith(("function-", "tagged-union[")) and "[" not in str(part):
            out += f".{part}" if out else str(part)
    return out


def format_validation_error(path: str, error: ValidationError) -> str:
    """One line per problem: ``FILE: SECTION.KEY: what is wrong``."""
    lines = []
    for e in error.errors(include_url=False):
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "missing":
            msg = "required key missing"
        where = _where(e["loc"])
        lines.append(f"{path}: {where}: {msg}" if where else f"{path}: {msg}")
    return "\n".join(lines)
