"""StrongPose's training recipe: schema, its one stage, and the final scoring.

The paper (Ahmad and Yoon, section IV-B): 401 x 401 crops, SGD with momentum 0.9, learning rate
1e-3, batch 2, Polyak-Ruppert averaging of the weights, batch-norm statistics fixed to their
ImageNet values, output stride 16 in training and 8 at evaluation, ResNet-101 / -152 initialised
on ImageNet. One stage, ``strongpose``: the whole network on the codec's targets
(:class:`~kerapose.models.strongpose.targets.StrongPoseTargets`) with the four losses and their
weights (:mod:`kerapose.models.strongpose.losses`). Polyak averaging is the generic stage option
``ema_momentum`` (:class:`kerapose.training.schema.StageBase`), on by default here;
``freeze_batch_norm`` makes every BatchNormalization layer non-trainable, which in Keras also
runs it in inference mode (moving statistics, not the batch's) and keeps its scale and offset.
At the end the model is scored end to end (letterbox, network at ``evaluate.output_stride``,
in-graph greedy decoder) on the validation split with pycocotools.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from kerapose.codecs.strongpose import INSTANCE_SCORES, KEYPOINT_SCORES
from kerapose.models.strongpose.network import DEFAULT_INPUT_SIZE, StrongPose
from kerapose.training.optimizers import plateau_callbacks, stage_optimizer
from kerapose.training.schema import RecipeBase, Section, StageBase, constructor_keys
from kerapose.training.spec import RecipeSpec, StagePlan, TrainContext

__all__ = ["StrongPoseRecipe", "RECIPE", "STRONGPOSE_AUGMENT", "evaluate_strongpose", "evaluation_size",
           "set_batch_norm_frozen"]

# Crops around a random person with scale, rotation and flip (the paper names none; these are
# kerapose's); a recipe's augment keys replace these one by one.
STRONGPOSE_AUGMENT = {"center": "person", "scale_range": [0.75, 1.25], "rotation_deg": 30, "flip_prob": 0.5,
                      "pad_value": 0}


class ModelSection(Section):
    """``name: strongpose``, the training crop ``input_size`` (any size: the paper's 401 x 401
    gives 51 x 51 maps) and any :class:`StrongPose` argument (``backbone``, ``output_stride``,
    ``backbone_weights``, ``radius``, ``edge_hops``, ...)."""

    model_config = {"extra": "allow"}
    name: Literal["strongpose"] = "strongpose"
    input_size: list[int] = Field(default=[401, 401], min_length=2, max_length=2)

    @classmethod
    def accepted_keys(cls) -> set[str]:
        return {"name", "input_size"} | constructor_keys(StrongPose)

    @field_validator("input_size")
    @classmethod
    def _size(cls, value):
        if any(v < 32 for v in value):
            raise ValueError(f"expected [H, W], at least 32 each, got {list(value)}")
        return value


class TargetsSection(Section):
    """No settings: the targets are the model's codec's (``map_stride``, ``radius`` and
    ``edge_hops`` are model arguments, since the decoder must use the same)."""


class StrongPoseStage(StageBase):
    """The one stage: the whole network (the paper's optimizer and averaging by default)."""

    name: Literal["strongpose"]
    optimizer: Literal["adam", "sgd"] = "sgd"
    learning_rate: float = Field(default=1e-3, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    ema_momentum: float | None = Field(default=0.999, gt=0, lt=1)  # Polyak averaging (paper: on; value ours)
    freeze_batch_norm: bool = True  # the paper fixes the statistics to ImageNet's


class EvaluateSection(Section):
    """End-to-end scoring: ``input_size`` (None: the training crop rounded down to a multiple of
    the output stride), ``output_stride`` (None: the model's; the paper evaluates at 8, the same
    weights, :meth:`StrongPose.with_output_stride`) and decoder settings (None: the codec's)."""

    input_size: list[int] | None = Field(default=None, min_length=2, max_length=2)
    output_stride: Literal[8, 16, 32] | None = None
    max_people: int = Field(default=20, ge=1)
    score_threshold: float = Field(default=0.0, ge=0, lt=1)
    nms_radius: float | None = Field(default=None, gt=0)
    peak_threshold: float | None = Field(default=None, ge=0)
    max_seeds: int | None = Field(default=None, ge=1)
    refine_steps: int | None = Field(default=None, ge=0)
    keypoint_score: Literal[KEYPOINT_SCORES] | None = None
    instance_score: Literal[INSTANCE_SCORES] | None = None
    per_keypoint: bool = True


class StrongPoseRecipe(RecipeBase):
    augment_defaults = STRONGPOSE_AUGMENT
    data_in_model_set = True
    stage_names = ("strongpose",)
    model: ModelSection = ModelSection()
    targets: TargetsSection = TargetsSection()
    batch_size: int = Field(default=2, ge=1)  # the paper's
    stages: list[StrongPoseStage] = Field(min_length=1)
    evaluate: EvaluateSection = EvaluateSection()

    @model_validator(mode="after")
    def _evaluation_size(self):
        # checked now, not when the trained network is scored: the end-to-end input must be a
        # multiple of the evaluated network's output stride
        stride = self.evaluate.output_stride or getattr(self.model, "output_stride", 16)
        size = self.evaluate.input_size
        if size is not None and any(v <= 0 or v % stride for v in size):
            raise ValueError(f"evaluate.input_size: expected [H, W], positive multiples of the output stride "
                             f"{stride}, got {list(size)}")
        return self


def _build(cfg: dict) -> StrongPose:
    m = {k: v for k, v in cfg["model"].items() if k not in ("name", "input_size")}
    # any input size: crops of input_size in training, the letterboxed evaluation size after
    return StrongPose(input_shape=(None, None, 3), **m)


def set_batch_norm_frozen(model, frozen: bool) -> None:
    """Every BatchNormalization layer of ``model`` non-trainable (inference mode: moving
    statistics; scale and offset fixed) or trainable again."""
    from kerapose.training.distribute import batch_norm_layers

    for layer in batch_norm_layers(model):
        layer.trainable = not frozen


def _plan(ctx: TrainContext, index: int, stage: dict) -> StagePlan:
    from kerapose.data.augment import AugmentConfig
    from kerapose.data.pipeline import keypoint_dataset
    from kerapose.models.strongpose.losses import LOSS_WEIGHTS, strongpose_losses
    from kerapose.models.strongpose.targets import StrongPoseTargets

    cfg, model, size = ctx.config, ctx.model, ctx.input_size
    targets = StrongPoseTargets.for_model(model, size)
    model.backbone.trainable = not stage["freeze_backbone"]
    set_batch_norm_frozen(model, bool(stage["freeze_batch_norm"]))
    aug = AugmentConfig(output_size=size, **cfg["augment"])
    val_aug = AugmentConfig(output_size=size, rotation_deg=0.0, scale_range=(1.0, 1.0), flip_prob=0.0,
                            center="image", fit_image=True, pad_value=aug.pad_value)
    batch = ctx.batch_size(stage)
    train_ds = keypoint_dataset(ctx.train_set, targets, aug, batch, seed=ctx.seed, skips=ctx.skips, shard=ctx.shard)
    val_ds = keypoint_dataset(ctx.val_set, targets, val_aug, batch, shuffle=False, repeat=False)
    steps = int(stage["steps_per_epoch"] or max(1, len(ctx.train_set.image_ids) // batch))
    return StagePlan(model=model, loss=strongpose_losses(model.codec.radius), loss_weights=dict(LOSS_WEIGHTS),
                     optimizer=stage_optimizer(stage, steps * int(stage["epochs"])), train_ds=train_ds,
                     val_ds=val_ds, steps=steps, callbacks=plateau_callbacks(stage, ctx.verbose))


def evaluation_size(training_size, multiple: int) -> tuple[int, int]:
    """The end-to-end input for a training crop: each side rounded down to a multiple (401 -> 400)."""
    return tuple(max(multiple, int(v) // multiple * multiple) for v in training_size)


def evaluate_strongpose(model: StrongPose, dataset, input_size=DEFAULT_INPUT_SIZE, output_stride: int | None = None,
                        image_ids=None, progress: bool = True, per_keypoint: bool = True, **decoder) -> dict:
    """COCO keypoint AP of a StrongPose end to end on a dataset split, scored by pycocotools.

    Each image is letterboxed into ``input_size``, the network runs at ``output_stride`` (None:
    the model's own) and the in-graph decoder groups people. ``decoder``:
    :meth:`StrongPose.predict_poses`'s ``max_people``, ``score_threshold`` and decoding settings
    (None values: the codec's).
    """
    from kerapose.training.scoring import evaluate_predictions

    if output_stride is not None and output_stride != model.output_stride:
        model = model.with_output_stride(int(output_stride))
    size = tuple(int(v) for v in input_size)
    settings = {k: v for k, v in decoder.items() if v is not None}
    return evaluate_predictions(lambda image: model.predict_poses([image], input_size=size, **settings)[0],
                                dataset, model.keypoint_set, image_ids=image_ids, progress=progress,
                                per_keypoint=per_keypoint)


def _evaluate(model, val_set, cfg: dict, verbose: int) -> dict:
    ev = dict(cfg["evaluate"])
    stride = ev.get("output_stride") or model.output_stride
    size = ev.pop("input_size", None) or evaluation_size(cfg["model"]["input_size"], stride)
    return evaluate_strongpose(model, val_set, input_size=size, progress=verbose > 0, **ev)


def _finish(model) -> None:
    model.backbone.trainable = True
    set_batch_norm_frozen(model, False)


RECIPE = RecipeSpec(
    model_names=("strongpose",),
    schema=StrongPoseRecipe,
    build=_build,
    input_size=lambda cfg: tuple(cfg["model"]["input_size"]),
    data_keypoint_set=lambda cfg: cfg["data"]["keypoint_set"] or cfg["model"].get("keypoint_set", "coco17"),
    plan_stage=_plan,
    evaluate=_evaluate,
    finish=_finish,
)
