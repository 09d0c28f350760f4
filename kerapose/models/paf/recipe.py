"""The PAF family's training recipe (OpenPose baseline, FTN, MLN): schema, stage, scoring.

The papers' recipe (Cao et al. 2017; the FTN paper trains the same way): person-centric crops
(368 x 368, the person scaled to about 220 px height, random scale, rotation, flip, padding
value 128, pixels / 256 - 0.5), heatmap + PAF targets at stride 8 on *every* stage
(intermediate supervision), masked L2 (OpenPose's ``EuclideanLoss`` with ``mask_miss``:
:class:`kerapose.losses.MaskedL2` with W packed in ``y_true``, :mod:`kerapose.data.paf_targets`),
SGD with momentum 0.9, learning rate 4e-5 and Caffe's weight decay 5e-4
(:class:`kerapose.training.optimizers.CaffeSGD`), the learning rate multiplied by 0.333 every
136,106 iterations (``lr_decay``). One stage, ``paf``; at the end the model is scored on the
validation split with the numpy :class:`~kerapose.codecs.paf.PafCodec` decoder and pycocotools
(:func:`evaluate_paf_model`, multi-scale and flip with ``evaluate: {scales, flip}``).
"""

from __future__ import annotations

from typing import Any, Literal

import keras
import numpy as np
import tensorflow as tf
from pydantic import Field, model_validator

from kerapose.models.paf import networks
from kerapose.training.optimizers import plateau_callbacks, stage_optimizer
from kerapose.training.schema import RecipeBase, Section, StageBase, constructor_keys
from kerapose.training.spec import RecipeSpec, StagePlan, TrainContext

__all__ = ["PAF_MODELS", "PafRecipe", "RECIPE", "build_paf_model", "evaluate_paf_model", "val_augment"]

PAF_MODELS = {"paf-baseline": networks.PafBaseline, "ftn": networks.FeatureTransferNet,
              "mln": networks.MultiLevelNet}
# OpenPose's data layer: target_dist 0.6 (x 368 = 220 px), scale 0.5..1.1, 40 degrees, centre
# perturbation 40 px, flip 0.5, grey padding; a recipe's augment keys replace these one by one.
PAF_AUGMENT = {"center": "person", "target_height": 220, "scale_range": [0.5, 1.1], "rotation_deg": 40,
               "center_jitter": 40, "flip_prob": 0.5, "pad_value": 128}


class ModelSection(Section):
    """``name`` (paf-baseline | ftn | mln), the training crop ``input_size`` and any argument of
    that model's constructor (``stages``, ``transfer``, ``width_multiplier``, ...)."""

    model_config = {"extra": "allow"}
    name: Literal["paf-baseline", "ftn", "mln"] = "ftn"
    input_size: list[int] = Field(default=[368, 368], min_length=2, max_length=2)
    keypoint_set: str = "openpose18"
    preprocessing: str = "openpose"

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("name", "ftn") in PAF_MODELS:
            accepted = {"name", "input_size"} | constructor_keys(PAF_MODELS[data.get("name", "ftn")])
            unknown = sorted(str(k) for k in data if k not in accepted)
            if unknown:
                raise ValueError(f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} for "
                                 f"{data.get('name', 'ftn')}; accepted: {', '.join(sorted(accepted))}")
        return data

    @model_validator(mode="after")
    def _size(self):
        if any(v <= 0 or v % 8 for v in self.input_size):
            raise ValueError(f"input_size: expected [H, W], positive multiples of 8, got {list(self.input_size)}")
        return self


class DataSection(Section):
    root: str | None = None
    train_split: str = "train2017"
    val_split: str = "val2017"
    synthetic: dict[str, Any] | None = None
    keypoint_set: str = "coco17"  # the annotations' (converted to the model's OpenPose-18 targets)
    image_ids: list[int] | None = None


class TargetsSection(Section):
    sigma: float = Field(default=7.0 / 8.0, gt=0)  # heatmap Gaussians, output cells
    limb_width: float = Field(default=1.0, gt=0)  # PAF half-width, output cells


class PafStage(StageBase):
    name: Literal["paf"]
    optimizer: Literal["adam", "sgd"] = "sgd"
    learning_rate: float = Field(default=4e-5, gt=0)


class EvaluateSection(Section):
    """Scoring settings: ``input_size`` (None: the training crop), TTA ``scales`` / ``flip``,
    and :class:`~kerapose.codecs.paf.PafCodec` decoding settings."""

    model_config = {"extra": "allow"}
    input_size: list[int] | None = Field(default=None, min_length=2, max_length=2)
    scales: list[float] = [1.0]
    flip: bool = False
    per_keypoint: bool = True

    @classmethod
    def accepted_keys(cls) -> set[str]:
        from kerapose.codecs.paf import PafCodec

        return set(cls.model_fields) | constructor_keys(PafCodec, exclude=("self", "keypoint_set", "stride"))


class PafRecipe(RecipeBase):
    augment_defaults = PAF_AUGMENT
    stage_names = ("paf",)
    model: ModelSection
    data: DataSection = DataSection()
    targets: TargetsSection = TargetsSection()
    batch_size: int = Field(default=10, ge=1)
    stages: list[PafStage] = Field(min_length=1)
    evaluate: EvaluateSection = EvaluateSection()


def build_paf_model(model_config: dict) -> keras.Model:
    """A PAF-family model from a recipe's ``model`` section, built with input_shape
    ``(None, None, 3)`` (crops of ``input_size`` in training, any size in evaluation)."""
    m = dict(model_config)
    name = m.pop("name")
    m.pop("input_size", None)
    if name not in PAF_MODELS:
        raise ValueError(f"model.name: expected one of {', '.join(PAF_MODELS)}, got {name!r}")
    return PAF_MODELS[name](input_shape=(None, None, 3), name=name.replace("-", "_"), **m)


def _plan(ctx: TrainContext, index: int, stage: dict) -> StagePlan:
    from kerapose.data.augment import AugmentConfig
    from kerapose.data.paf_targets import PafTargets, supervised_outputs
    from kerapose.data.pipeline import keypoint_dataset
    from kerapose.losses import MaskedL2

    cfg, model, size = ctx.config, ctx.model, ctx.input_size
    names = supervised_outputs(model)
    targets = PafTargets.for_model(model, size, record_keypoint_set=cfg["data"]["keypoint_set"], **cfg["targets"])
    aug = AugmentConfig(output_size=size, **cfg["augment"])
    batch = ctx.batch_size(stage)
    model.backbone.trainable = not stage["freeze_backbone"]
    # The stage outputs only: the final `pafs`/`heatmaps` repeat the last stage.
    sub = keras.Model(model.input, {n: model.get_layer(n).output for n in names}, name=f"{model.name}_stages")
    train_ds = keypoint_dataset(ctx.train_set, targets, aug, batch, seed=ctx.seed, skips=ctx.skips, shard=ctx.shard)
    val_ds = keypoint_dataset(ctx.val_set, targets, val_augment(size, aug.pad_value), batch, shuffle=False,
                              repeat=False)
    steps = int(stage["steps_per_epoch"] or max(1, len(ctx.train_set.image_ids) // batch))
    return StagePlan(model=sub, loss={n: MaskedL2() for n in names}, optimizer=stage_optimizer(stage, steps *
                     int(stage["epochs"])), train_ds=train_ds, val_ds=val_ds, steps=steps,
                     callbacks=plateau_callbacks(stage, ctx.verbose))


def _evaluate(model, val_set, cfg: dict, verbose: int) -> dict:
    ev = dict(cfg["evaluate"])
    size = tuple(ev.pop("input_size", None) or cfg["model"]["input_size"])
    pad = cfg["augment"].get("pad_value", 0)
    return evaluate_paf_model(model, val_set, input_size=size, pad_value=pad, progress=verbose > 0, **ev)


def _finish(model) -> None:
    model.backbone.trainable = True


def val_augment(size: tuple[int, int], pad_value):
    """The deterministic evaluation view: the whole image fitted into ``size``, centred."""
    from kerapose.data.augment import AugmentConfig

    return AugmentConfig(output_size=size, rotation_deg=0.0, scale_range=(1.0, 1.0), flip_prob=0.0,
                         center="image", fit_image=True, pad_value=pad_value)


def evaluate_paf_model(
    model: keras.Model,
    dataset,
    input_size: tuple[int, int] = (368, 368),
    image_ids: list[int] | None = None,
    scales: tuple[float, ...] | list[float] = (1.0,),
    flip: bool = False,
    pad_value: float = 128,
    per_keypoint: bool = True,
    progress: bool = True,
    **codec_kwargs,
) -> dict:
    """COCO keypoint AP of a PAF-family model on a dataset split (numpy decoding).

    Each image is fitted into ``input_size`` (aspect kept, centred, ``pad_value`` around: the
    training pipeline's validation view), the network runs (through
    :class:`kerapose.models.paf.tta.PafMultiScale` when ``scales`` != ``(1,)`` or ``flip``),
    :meth:`PafCodec.decode` groups people on the stride-8 maps (the distance prior uses the
    image's height in network pixels, as OpenPose uses the image height), keypoints are mapped
    back through the inverse crop and converted to the dataset's keypoint set, and
    pycocotools scores them. ``codec_kwargs`` go to :class:`~kerapose.codecs.paf.PafCodec`
    (e.g. ``peak_threshold``). Returns :func:`kerapose.evaluation.evaluate_keypoints`'s
    figures plus ``images`` and ``people`` (poses found).
    """
    import cv2

    from kerapose.codecs.paf import PafCodec
    from kerapose.data.augment import apply_affine, random_affine, transform_points
    from kerapose.data.pipeline import read_image
    from kerapose.evaluation import evaluate_keypoints, keypoint_results
    from kerapose.models.paf.tta import PafMultiScale
    from kerapose.skeleton import get_keypoint_set, openpose18_to_coco17

    size = (int(input_size[0]), int(input_size[1]))
    if size[0] % 8 or size[1] % 8 or min(size) < 8:
        raise ValueError(f"input_size: expected positive multiples of 8, got {input_size!r}")
    out_ks = model.keypoint_set
    data_ks = get_keypoint_set(dataset.keypoint_set)
    if out_ks.name == data_ks.name:
        to_data = np.asarray
    elif (out_ks.name, data_ks.name) == ("openpose18", "coco17"):
        to_data = openpose18_to_coco17
    else:
        raise ValueError(f"model keypoint set {out_ks.name!r} cannot be scored against {data_ks.name!r} annotations")
    scales = tuple(float(s) for s in scales)
    if scales == (1.0,) and not flip:
        def net(x):
            out = model(x, training=False)
            return out["heatmaps"], out["pafs"]
    else:
        tta = PafMultiScale(model, scales=scales, flip=flip)

        def net(x):
            out = tta(x)
            return out["heatmaps"], out["pafs"]
    run = tf.function(net, reduce_retracing=True)
    codec = PafCodec(out_ks, stride=8, **codec_kwargs)
    cfg = val_augment(size, pad_value)
    rng = np.random.default_rng(0)  # unused by the deterministic view, required by the API
    empty_kp, empty_box = np.zeros((0, data_ks.num_keypoints, 3)), np.zeros((0, 4))
    ids = list(image_ids if image_ids is not None else dataset.image_ids)
    bar = keras.utils.Progbar(len(ids), unit_name="image") if progress else None
    results: list[dict] = []
    people = 0
    for n, image_id in enumerate(ids):
        rec = dataset.record(image_id)
        image = read_image(rec.path)
        matrix = random_affine((rec.height, rec.width), cfg, rng)
        crop = apply_affine(image, empty_kp, empty_box, None, matrix, size, pad_value=pad_value)[0]
        hm, pf = run(tf.constant(crop[None].astype(np.float32)))
        scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
        content = (min(size[0], max(1, round(rec.height * scale))), min(size[1], max(1, round(rec.width * scale))))
        kp, sc = codec.decode(np.asarray(hm[0]), np.asarray(pf[0]), content)
        if len(kp):
            found = kp[..., 2] > 0
            xy = transform_points(kp[..., :2], cv2.invertAffineTransform(matrix))
            kp = np.concatenate([np.where(found[..., None], xy, 0.0), kp[..., 2:]], -1)
            kp = np.asarray(to_data(kp))
            keep = (kp[..., 2] > 0).any(-1)
            results += keypoint_results(image_id, kp[keep], np.asarray(sc)[keep])
            people += int(keep.sum())
        if bar is not None:
            bar.update(n + 1)
    metrics = evaluate_keypoints(dataset.coco, results, image_ids=ids, keypoint_set=data_ks,
                                 per_keypoint=per_keypoint)
    metrics.update(images=len(ids), people=people)
    return metrics


RECIPE = RecipeSpec(
    model_names=tuple(PAF_MODELS),
    schema=PafRecipe,
    build=lambda cfg: build_paf_model(cfg["model"]),
    input_size=lambda cfg: tuple(cfg["model"]["input_size"]),
    data_keypoint_set=lambda cfg: cfg["data"]["keypoint_set"],
    plan_stage=_plan,
    evaluate=_evaluate,
    finish=_finish,
)
