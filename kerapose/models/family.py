"""The model-family contract: what one family declares, in one place, for every command to read.

A family (``kerapose/models/<family>/``) is a set of task models that share a decoder, a recipe
schema and training stages: MultiPoseNet; the PAF family (OpenPose baseline, FTN, MLN, tf-pose's
MobileNetV2). Its ``family.py`` builds one :class:`ModelFamily` and
:mod:`kerapose.models.registry` lists it. ``kerapose train``, ``info``, ``export``, ``predict``,
``eval`` and ``oracle`` read these fields and never test which family they hold. Adding a family is
adding its package and one line in the registry (README: "Adding a model family").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

__all__ = ["ModelFamily"]


@dataclass(frozen=True)
class ModelFamily:
    """One family's declaration.

    Attributes:
        name: the family's name (``multiposenet``, ``paf``).
        summary: one line for listings.
        builders: built-in model name -> builder ``(input_shape=(H, W, 3), **kwargs) -> keras.Model``
            (random weights unless ``pretrained`` says otherwise).
        model_types: the task-model classes of this family (a loaded ``.keras`` file belongs to
            the family whose type it is).
        size_multiple: H and W of the network input must be multiples of this.
        default_input_size: the end-to-end graph's input (H, W) when a command is given none
            (``predict``, ``eval``, ``export``, ``serve``); ``None``: native resolution.
        info_input_size: the input size of ``kerapose info``'s FLOP table when none is given.
        recipe: the training part (:class:`kerapose.training.spec.RecipeSpec`), or None.
        oracles: codec name -> ``(keypoint_set, stride) -> (record -> (kind, values, scores[, counts]))``
            for ``kerapose oracle``: the codec's ground truth encoded and decoded back; an optional
            fourth value, a dict of counts (e.g. people lost), is summed over the split.
        pretrained: built-in names whose weights are trained (shipped or imported).
    """

    name: str
    summary: str
    builders: Mapping[str, Callable[..., Any]]
    model_types: tuple[type, ...]
    size_multiple: int
    default_input_size: tuple[int, int] | None
    info_input_size: tuple[int, int]
    recipe: Any = None
    oracles: Mapping[str, Callable[..., Callable]] = field(default_factory=dict)
    pretrained: tuple[str, ...] = ()

    @property
    def export_input_size(self) -> tuple[int, int]:
        """The fixed input size of an export made without one: the default input size, or for a
        native-resolution family its reference size (the FLOP table's)."""
        return self.default_input_size or self.info_input_size

    def owns(self, model: Any) -> bool:
        """Whether ``model`` (a task model) belongs to this family."""
        return isinstance(model, self.model_types)
