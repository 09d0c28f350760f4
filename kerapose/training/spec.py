"""What a family gives the shared trainer, and what the trainer gives a family's stages.

The runner (:mod:`kerapose.training.runner`) owns everything families share: the recipe file,
the output folder and resume, the strategy and precision, the datasets, ``model.fit`` with
checkpoints / backups / logs, the multi-worker barrier and the final save. A family
(``kerapose/models/<family>/recipe.py``) declares a :class:`RecipeSpec`: its recipe schema, how
to build its model from the recipe, how to plan each of its stages (a :class:`StagePlan`: the
sub-model to fit, its losses, datasets and optimizer), and how to score the trained model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = ["TrainContext", "StagePlan", "RecipeSpec"]


@dataclass
class TrainContext:
    """The run as a stage planner sees it.

    ``config`` is the validated recipe as a dict (every default filled in); ``input_size`` the
    training crop (H, W); ``shard`` is ``(workers, this worker's index)`` in a cluster, else None
    (each worker decodes and augments only its share of the training images); ``replicas`` the
    strategy's replicas in sync (a stage's batch is per replica); ``state`` this task's folder
    for caches (e.g. the PRN pairs); ``skips`` counts the samples the pipeline skipped.
    """

    config: dict
    model: Any
    input_size: tuple[int, int]
    train_set: Any
    val_set: Any
    strategy: Any
    replicas: int
    shard: tuple[int, int] | None
    seed: int
    verbose: int
    state: str
    skips: Any

    def batch_size(self, stage: dict) -> int:
        """The stage's global batch: its ``batch_size`` (else the recipe's) per replica."""
        return int(stage.get("batch_size") or self.config["batch_size"]) * self.replicas


@dataclass
class StagePlan:
    """One ``model.fit``: ``model`` (a sub-model sharing the task model's weights) compiled with
    ``loss`` / ``loss_weights`` / ``optimizer`` and fitted on ``train_ds`` for ``steps`` per epoch,
    validated on ``val_ds``; ``callbacks`` are the stage's own (e.g. ReduceLROnPlateau)."""

    model: Any
    loss: Any
    optimizer: Any
    train_ds: Any
    val_ds: Any
    steps: int
    loss_weights: Any = None
    callbacks: list = field(default_factory=list)
    cleanup: Callable[[], None] | None = None  # after the stage has finished (e.g. delete cached pairs)


@dataclass(frozen=True)
class RecipeSpec:
    """A family's training part.

    Attributes:
        model_names: the ``model.name`` values of this family's recipes.
        schema: the pydantic model of the whole recipe (a :class:`~kerapose.training.schema.RecipeBase`).
        build: validated recipe dict -> the task model (called inside the strategy's scope).
        input_size: validated recipe dict -> the training crop (H, W).
        data_keypoint_set: validated recipe dict -> the annotations' keypoint set name.
        plan_stage: (context, stage index, stage dict) -> :class:`StagePlan`, called inside the
            strategy's scope; it may set trainable flags on the model (``finish`` resets them).
        evaluate: (model, validation dataset, recipe dict, verbose) -> COCO metrics dict.
        finish: the model after the last stage, before it is saved (e.g. unfreeze the backbone).
    """

    model_names: tuple[str, ...]
    schema: type
    build: Callable[[dict], Any]
    input_size: Callable[[dict], tuple[int, int]]
    data_keypoint_set: Callable[[dict], str]
    plan_stage: Callable[[TrainContext, int, dict], StagePlan]
    evaluate: Callable[[Any, Any, dict, int], dict]
    finish: Callable[[Any], None] = lambda model: None
