"""PoseDet's training recipe: schema, its one stage, and the final scoring.

The paper (Tian et al. 2021, section 4.1): 512 x 512 crops centred on a random person, random
resize by a factor in [0.5, 1.5] and horizontal flip; Adam, learning rate 1e-4, divided by 10 at
epochs 180 and 200, 210 epochs (``lr_steps``); the authors' code also clips the gradients' global
norm at 35 (``global_clipnorm``). One stage, ``posedet``: the whole network on
:attr:`~kerapose.models.posedet.PoseDet.training_model` with :func:`~kerapose.models.posedet.posedet_losses`
(coarse, refined, focal classification and per-level heatmap terms), targets from
:class:`~kerapose.models.posedet.targets.PoseDetTargets`. At the end the model is scored end to
end (letterbox, network, in-graph OKS-NMS) on the validation split with pycocotools.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from kerapose.codecs.posedet import ASSIGN_MODES
from kerapose.models.posedet.decoder import NMS_KINDS
from kerapose.models.posedet.network import DEFAULT_INPUT_SIZE, POSEDET_BACKBONES, SIZE_MULTIPLE, PoseDet
from kerapose.training.optimizers import plateau_callbacks, stage_optimizer
from kerapose.training.schema import RecipeBase, Section, StageBase, constructor_keys
from kerapose.training.spec import RecipeSpec, StagePlan, TrainContext

__all__ = ["PoseDetRecipe", "RECIPE", "POSEDET_AUGMENT", "evaluate_posedet"]

# The paper's augmentation; a recipe's augment keys replace these one by one.
POSEDET_AUGMENT = {"center": "person", "scale_range": [0.5, 1.5], "rotation_deg": 0, "flip_prob": 0.5,
                   "pad_value": 0}


def _check_size(value) -> list[int]:
    if any(v <= 0 or v % SIZE_MULTIPLE for v in value):
        raise ValueError(f"expected [H, W], positive multiples of {SIZE_MULTIPLE}, got {list(value)}")
    return value


class ModelSection(Section):
    """``name: posedet``, the training crop ``input_size`` and any :class:`PoseDet` argument
    (``backbone``, ``fpn_size``, ``head_size``, ``embed_size``, ``backbone_weights``, ...)."""

    model_config = {"extra": "allow"}
    name: Literal["posedet"] = "posedet"
    input_size: list[int] = Field(default=list(DEFAULT_INPUT_SIZE), min_length=2, max_length=2)

    @classmethod
    def accepted_keys(cls) -> set[str]:
        return {"name", "input_size"} | constructor_keys(PoseDet)

    @field_validator("input_size")
    @classmethod
    def _size(cls, value):
        return _check_size(value)

    @model_validator(mode="after")
    def _backbone(self):
        backbone = (self.model_extra or {}).get("backbone", "resnet50")
        if backbone not in POSEDET_BACKBONES:
            raise ValueError(f"backbone: expected one of {', '.join(POSEDET_BACKBONES)}, got {backbone!r}")
        return self


class TargetsSection(Section):
    """:class:`~kerapose.codecs.posedet.PoseDetCodec` settings."""

    assign: Literal[ASSIGN_MODES] = "centroid"  # the paper's; box_center is its ablation
    max_people: int = Field(default=32, ge=1)  # people per crop in the targets (more are dropped)
    min_keypoints: int = Field(default=1, ge=1)  # people with fewer labelled joints are not encoded
    heatmap_sigma: float = Field(default=2.0, gt=0)  # Gaussians of the auxiliary heatmaps, cells


class PoseDetStage(StageBase):
    """The one stage: the whole network, the paper's loss (weights and thresholds: the authors')."""

    name: Literal["posedet"]
    global_clipnorm: float | None = Field(default=35.0, gt=0)  # the authors' gradient clipping
    coarse_weight: float = Field(default=0.1, ge=0)
    refine_weight: float = Field(default=0.2, ge=0)
    cls_weight: float = Field(default=1.0, ge=0)
    heatmap_scale: float = Field(default=0.01, gt=0)  # MaskedL2 scale of every heatmaps_p* output
    refine_oks: float = Field(default=0.7, ge=0, le=1)
    positive_oks: float = Field(default=0.6, ge=0, le=1)
    negative_oks: float = Field(default=0.5, ge=0, le=1)

    @model_validator(mode="after")
    def _thresholds(self):
        if self.negative_oks > self.positive_oks:
            raise ValueError(f"negative_oks ({self.negative_oks}) must not exceed positive_oks ({self.positive_oks})")
        return self


class EvaluateSection(Section):
    """End-to-end scoring: ``input_size`` (None: the training crop) and the decoder's settings."""

    input_size: list[int] | None = Field(default=None, min_length=2, max_length=2)
    max_people: int = Field(default=20, ge=1)
    score_threshold: float = Field(default=0.05, ge=0, lt=1)  # the authors' inference threshold
    nms: Literal[NMS_KINDS] = "oks"
    oks_threshold: float | None = Field(default=None, gt=0, le=1)  # None: the decoder's default (0.5)
    pre_nms_top_k: int = Field(default=100, ge=1)
    per_keypoint: bool = True

    @field_validator("input_size")
    @classmethod
    def _size(cls, value):
        return value if value is None else _check_size(value)


class PoseDetRecipe(RecipeBase):
    augment_defaults = POSEDET_AUGMENT
    data_in_model_set = True
    stage_names = ("posedet",)
    model: ModelSection = ModelSection()
    targets: TargetsSection = TargetsSection()
    stages: list[PoseDetStage] = Field(min_length=1)
    evaluate: EvaluateSection = EvaluateSection()


def _build(cfg: dict) -> PoseDet:
    m = {k: v for k, v in cfg["model"].items() if k not in ("name", "input_size")}
    # any input size: crops of input_size in training, the letterboxed evaluation size after
    return PoseDet(input_shape=(None, None, 3), **m)


_LOSS_KEYS = ("coarse_weight", "refine_weight", "cls_weight", "refine_oks", "positive_oks", "negative_oks")


def _plan(ctx: TrainContext, index: int, stage: dict) -> StagePlan:
    from kerapose.data.augment import AugmentConfig
    from kerapose.data.pipeline import keypoint_dataset
    from kerapose.models.posedet.losses import posedet_losses
    from kerapose.models.posedet.targets import PoseDetTargets

    cfg, model, size = ctx.config, ctx.model, ctx.input_size
    targets = PoseDetTargets.for_model(model, size, **cfg["targets"])
    model.backbone.trainable = not stage["freeze_backbone"]
    aug = AugmentConfig(output_size=size, **cfg["augment"])
    val_aug = AugmentConfig(output_size=size, rotation_deg=0.0, scale_range=(1.0, 1.0), flip_prob=0.0,
                            center="image", fit_image=True, pad_value=aug.pad_value)
    batch = ctx.batch_size(stage)
    train_ds = keypoint_dataset(ctx.train_set, targets, aug, batch, seed=ctx.seed, skips=ctx.skips, shard=ctx.shard)
    val_ds = keypoint_dataset(ctx.val_set, targets, val_aug, batch, shuffle=False, repeat=False)
    steps = int(stage["steps_per_epoch"] or max(1, len(ctx.train_set.image_ids) // batch))
    losses = posedet_losses(model.keypoint_set, strides=model.strides, heatmap_scale=float(stage["heatmap_scale"]),
                            **{k: stage[k] for k in _LOSS_KEYS})
    optimizer = stage_optimizer(stage, steps * int(stage["epochs"]))
    return StagePlan(model=model.training_model, loss=losses, optimizer=optimizer, train_ds=train_ds, val_ds=val_ds,
                     steps=steps, callbacks=plateau_callbacks(stage, ctx.verbose))


def evaluate_posedet(model, dataset, input_size=DEFAULT_INPUT_SIZE, image_ids=None, progress: bool = True,
                     per_keypoint: bool = True, **decoder) -> dict:
    """COCO keypoint AP of a PoseDet end to end (letterbox into ``input_size``, network, in-graph
    NMS; ``decoder``: :meth:`PoseDet.predict_poses`'s ``max_people``, ``score_threshold``, ``nms``,
    ``oks_threshold``, ``pre_nms_top_k``) on a dataset split, scored by pycocotools."""
    from kerapose.training.scoring import evaluate_predictions

    size = tuple(int(v) for v in input_size)
    return evaluate_predictions(lambda image: model.predict_poses([image], input_size=size, **decoder)[0],
                                dataset, model.keypoint_set, image_ids=image_ids, progress=progress,
                                per_keypoint=per_keypoint)


def _evaluate(model, val_set, cfg: dict, verbose: int) -> dict:
    ev = dict(cfg["evaluate"])
    size = ev.pop("input_size", None) or cfg["model"]["input_size"]
    return evaluate_posedet(model, val_set, input_size=size, progress=verbose > 0, **ev)


def _finish(model) -> None:
    model.backbone.trainable = True


RECIPE = RecipeSpec(
    model_names=("posedet",),
    schema=PoseDetRecipe,
    build=_build,
    input_size=lambda cfg: tuple(cfg["model"]["input_size"]),
    data_keypoint_set=lambda cfg: cfg["data"]["keypoint_set"] or cfg["model"].get("keypoint_set", "coco17"),
    plan_stage=_plan,
    evaluate=_evaluate,
    finish=_finish,
)
