"""MultiPoseNet's training recipe: schema, the paper's three stages, and the final scoring.

Stages (each a ``model.fit`` with its own optimizer, run by :mod:`kerapose.training.runner`):

1. ``keypoints``: backbone + keypoint subnet on the heatmap/segmentation targets (masked L2 on
   the final and every intermediate output; ``intermediate_weight`` scales the latter).
2. ``persons``: the RetinaNet person subnet with the backbone frozen (focal loss + smooth L1).
3. ``prn``: the Pose Residual Network on annotation-derived pairs (binary cross-entropy), or
   (``inputs: network``) on crops of the trained keypoint subnet's own heatmaps, at the
   ground-truth boxes or (``boxes: detections``) at the person subnet's matching detections.
   Network pairs are written to disk as they are computed and read back batch by batch (memory
   stays at a few batches); in a cluster each worker computes those of its own images.
"""

from __future__ import annotations

import shutil
from typing import Annotated, Any, Literal, Union

from pydantic import Field, field_validator, model_validator

from kerapose.models.multiposenet.constants import KEYPOINT_STRIDE, POSE_SCORES
from kerapose.models.multiposenet.network import MultiPoseNet
from kerapose.training.optimizers import plateau_callbacks, stage_optimizer
from kerapose.training.schema import RecipeBase, Section, StageBase, constructor_keys
from kerapose.training.spec import RecipeSpec, StagePlan, TrainContext

__all__ = ["MultiPoseNetRecipe", "RECIPE", "evaluate_model"]


class ModelSection(Section):
    """``name: multiposenet``, the training crop ``input_size`` and any MultiPoseNet argument."""

    model_config = {"extra": "allow"}
    name: Literal["multiposenet"] = "multiposenet"
    input_size: list[int] = Field(default=[480, 480], min_length=2, max_length=2)
    pose_score: Literal[POSE_SCORES] = "box"

    @classmethod
    def accepted_keys(cls) -> set[str]:
        return {"name", "input_size"} | constructor_keys(MultiPoseNet)

    @field_validator("input_size")
    @classmethod
    def _size(cls, value):
        if any(v <= 0 or v % 32 for v in value):
            raise ValueError(f"expected [H, W], positive multiples of 32, got {list(value)}")
        return value


class TargetsSection(Section):
    sigma: float = Field(default=2.0, gt=0)  # heatmap Gaussians' standard deviation in stride-4 cells (8 px)


class KeypointsStage(StageBase):
    name: Literal["keypoints"]
    intermediate_weight: float = Field(default=1.0, ge=0)  # loss weight of heatmaps_k2..k5 (paper: 1)


class PersonsStage(StageBase):
    name: Literal["persons"]
    freeze_backbone: bool = True  # the paper's second stage trains the person subnet alone


class PrnStage(StageBase):
    name: Literal["prn"]
    inputs: Literal["annotations", "network"] = "annotations"
    boxes: Literal["annotations", "detections"] = "annotations"

    @model_validator(mode="after")
    def _boxes(self):
        if self.boxes == "detections" and self.inputs != "network":
            raise ValueError("boxes: detections crops the network's heatmaps: it needs inputs: network")
        return self


Stage = Annotated[Union[KeypointsStage, PersonsStage, PrnStage], Field(discriminator="name")]


class EvaluateSection(Section):
    max_people: int = Field(default=20, ge=1)
    score_threshold: float = Field(default=0.3, ge=0)
    flip_test: bool = False
    pose_score: Literal[POSE_SCORES] | None = None  # None: the model's own


class MultiPoseNetRecipe(RecipeBase):
    stage_names = ("keypoints", "persons", "prn")
    model: ModelSection = ModelSection()
    targets: TargetsSection = TargetsSection()
    stages: list[Stage] = Field(min_length=1)
    evaluate: EvaluateSection = EvaluateSection()


def _build(cfg: dict) -> MultiPoseNet:
    m = {k: v for k, v in cfg["model"].items() if k not in ("name", "input_size")}
    return MultiPoseNet(input_shape=(*cfg["model"]["input_size"], 3), **m)


def _plan(ctx: TrainContext, index: int, stage: dict) -> StagePlan:
    from kerapose.codecs.prn import PRNCodec
    from kerapose.data.augment import AugmentConfig
    from kerapose.data.pipeline import MultiPoseNetTargets, keypoint_dataset, network_prn_pairs, prn_dataset
    from kerapose.losses import MaskedL2, RetinaFocalLoss, RetinaSmoothL1, prn_loss

    cfg, model, size = ctx.config, ctx.model, ctx.input_size
    kps = cfg["model"].get("keypoint_set", "coco17")
    batch = ctx.batch_size(stage)
    name = stage["name"]
    weights, cleanup = None, None
    if name in ("keypoints", "persons"):
        model.freeze_backbone(stage["freeze_backbone"])
        person = name == "persons"
        targets = MultiPoseNetTargets(kps, size, person_targets=person, heatmap_targets=not person,
                                      sigma=float(cfg["targets"]["sigma"]))
        sub = model.person_model if person else model.keypoint_model
        keys = list(targets.output_shapes)
        if person:
            losses: Any = {"person_logits": RetinaFocalLoss(), "person_boxes": RetinaSmoothL1()}
        else:
            losses = {k: MaskedL2() for k in keys}
            weights = {k: 1.0 if k == "heatmaps" else float(stage["intermediate_weight"]) for k in keys}
        aug = AugmentConfig(output_size=size, **cfg["augment"])
        val_aug = AugmentConfig(output_size=size, rotation_deg=0.0, scale_range=(1.0, 1.0), flip_prob=0.0,
                                center="image", fit_image=True)
        train_ds = keypoint_dataset(ctx.train_set, targets, aug, batch, seed=ctx.seed, skips=ctx.skips,
                                    shard=ctx.shard)
        val_ds = keypoint_dataset(ctx.val_set, targets, val_aug, batch, shuffle=False, repeat=False)
        steps = int(stage["steps_per_epoch"] or max(1, len(ctx.train_set) // batch))
    else:
        model.freeze_backbone(stage["freeze_backbone"])
        codec = PRNCodec(kps)
        sub, losses = model.prn, prn_loss()
        train_pairs = val_pairs = None
        if stage["inputs"] == "network":
            where = stage["boxes"]
            print("[kerapose] PRN pairs from the keypoint subnet's heatmaps at the "
                  f"{'detected' if where == 'detections' else 'ground-truth'} boxes", flush=True)
            net = model if where == "detections" else model.keypoint_model
            folder = f"{ctx.state}/prn-pairs"
            train_pairs, val_pairs = (
                network_prn_pairs(d, codec, net, size, KEYPOINT_STRIDE, skips=ctx.skips, progress=ctx.verbose > 0,
                                  boxes=where, out=f"{folder}/{split}", shard=ctx.shard if split == "train" else None)
                for d, split in ((ctx.train_set, "train"), (ctx.val_set, "val")))
            cleanup = lambda: shutil.rmtree(folder, ignore_errors=True)  # noqa: E731
        train_ds, n_pairs = prn_dataset(ctx.train_set, codec, batch, seed=ctx.seed, pairs=train_pairs,
                                        sharded=ctx.shard is not None)
        val_ds, _ = prn_dataset(ctx.val_set, codec, batch, shuffle=False, flip=False, repeat=False, pairs=val_pairs)
        steps = int(stage["steps_per_epoch"] or max(1, n_pairs // batch))
    optimizer = stage_optimizer(stage, steps * int(stage["epochs"]))
    return StagePlan(model=sub, loss=losses, loss_weights=weights, optimizer=optimizer, train_ds=train_ds,
                     val_ds=val_ds, steps=steps, callbacks=plateau_callbacks(stage, ctx.verbose), cleanup=cleanup)


def evaluate_model(model, dataset, input_size=(480, 480), max_people: int = 20, score_threshold: float = 0.3,
                   image_ids=None, progress: bool = True, flip_test: bool = False,
                   pose_score: str | None = None) -> dict:
    """COCO keypoint AP of a MultiPoseNet end to end (boxes -> PRN -> keypoints) on a dataset split
    (``pose_score`` None: the model's own)."""
    from kerapose.training.scoring import evaluate_predictions

    return evaluate_predictions(
        lambda image: model.predict_poses([image], input_size=tuple(input_size), max_people=max_people,
                                          score_threshold=score_threshold, flip_test=flip_test,
                                          pose_score=pose_score)[0],
        dataset, model.keypoint_set, image_ids=image_ids, progress=progress)


def _evaluate(model, val_set, cfg: dict, verbose: int) -> dict:
    return evaluate_model(model, val_set, input_size=cfg["model"]["input_size"], progress=verbose > 0,
                          **cfg["evaluate"])


RECIPE = RecipeSpec(
    model_names=("multiposenet",),
    schema=MultiPoseNetRecipe,
    build=_build,
    input_size=lambda cfg: tuple(cfg["model"]["input_size"]),
    data_keypoint_set=lambda cfg: cfg["data"]["keypoint_set"] or cfg["model"].get("keypoint_set", "coco17"),
    plan_stage=_plan,
    evaluate=_evaluate,
    finish=lambda model: model.freeze_backbone(False),
)
