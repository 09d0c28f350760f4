"""`model.fit` training of the PAF family (OpenPose baseline, FTN, MLN) from a YAML recipe.

The papers' recipe (Cao et al. 2017; the FTN paper trains the same way): person-centric crops
(368 x 368, the person scaled to about 220 px height, random scale, rotation, flip, padding
value 128, pixels / 256 - 0.5), heatmap + PAF targets at stride 8 on *every* stage
(intermediate supervision), masked L2 (OpenPose's ``EuclideanLoss`` with ``mask_miss``:
:class:`kerapose.losses.MaskedL2` with W packed in ``y_true``, :mod:`kerapose.data.paf_targets`),
SGD with momentum 0.9, learning rate 4e-5 and weight decay 5e-4, the learning rate multiplied
by 0.333 every 136,106 iterations.

Weight decay is Caffe's (the papers' framework): an L2 term ``weight_decay * w`` added to the
gradient of every kernel (not biases, ``decay_mult: 0``) before momentum
(:class:`CaffeSGD`). Keras' own ``SGD(weight_decay=...)`` decays decoupled from the momentum,
about ``1 / (1 - momentum)`` = 10x weaker at momentum 0.9; ``weight_decay_mode: decoupled``
selects it.

Same machinery as :mod:`kerapose.train`: every stage (normally one, named ``paf``) is a
``model.fit`` with ``BackupAndRestore``, CSV and TensorBoard logs and ``.keras`` checkpoints of
the whole model (``OUTPUT/STAGE/{last,best}.keras``); finished stages are recorded in
``OUTPUT/progress.json``; running the same command again resumes. At the end the model is
evaluated on the validation split with the numpy :class:`~kerapose.codecs.paf.PafCodec`
decoder and pycocotools (:func:`evaluate_paf_model`).

Recipe keys (defaults in :data:`PAF_DEFAULTS`): ``model`` (``name``: ``paf-baseline`` | ``ftn``
| ``mln``, ``keypoint_set``, ``input_size`` (the crop), ``preprocessing``, and any other
constructor argument such as ``stages``, ``transfer``, ``width_multiplier``,
``backbone_weights``), ``data`` (``root`` or ``synthetic``, splits, ``image_ids`` to restrict
both splits to some images), ``augment`` (:class:`~kerapose.data.augment.AugmentConfig`),
``targets`` (``sigma``, ``limb_width`` in output cells), ``batch_size``, ``seed``,
``mixed_precision``, ``stages`` and ``evaluate`` (``input_size``, ``scales``, ``flip``,
``per_keypoint`` and :class:`~kerapose.codecs.paf.PafCodec` decoding settings).
"""

from __future__ import annotations

import copy
import json
import os
import time
from typing import Any

import keras
import numpy as np
import tensorflow as tf
import yaml
from keras import ops

from kerapose.train import (
    SkipReport,
    _atomic_save,
    _is_chief,
    _prepare_data,
    _worker_position,
    apply_overrides,
    check_keys,
    fit_stage,
    get_strategy,
    precision_policy,
    restores_dtype_policy,
)

__all__ = [
    "PAF_MODELS",
    "PAF_DEFAULTS",
    "PAF_STAGES",
    "CaffeSGD",
    "load_paf_config",
    "build_paf_model",
    "train_paf",
    "evaluate_paf_model",
]

PAF_MODELS = {"paf-baseline": "PafBaseline", "ftn": "FeatureTransferNet", "mln": "MultiLevelNet"}
PAF_STAGES = ("paf",)
PAF_DEFAULTS: dict[str, Any] = {
    "model": {"name": "ftn", "keypoint_set": "openpose18", "input_size": [368, 368], "preprocessing": "openpose"},
    "data": {"root": None, "train_split": "train2017", "val_split": "val2017", "synthetic": None,
             "keypoint_set": "coco17", "image_ids": None},
    # OpenPose's data layer: target_dist 0.6 (x 368 = 220 px), scale 0.5..1.1, 40 degrees,
    # centre perturbation 40 px, flip 0.5, grey padding.
    "augment": {"center": "person", "target_height": 220, "scale_range": [0.5, 1.1], "rotation_deg": 40,
                "center_jitter": 40, "flip_prob": 0.5, "pad_value": 128},
    "targets": {"sigma": 7.0 / 8.0, "limb_width": 1.0},
    "batch_size": 10,
    "seed": 0,
    "mixed_precision": False,
    "stages": [],
    "evaluate": {"input_size": None, "scales": [1.0], "flip": False, "per_keypoint": True},
}
_EVALUATE_KEYS = {"input_size", "scales", "flip", "per_keypoint", "peak_threshold", "max_peaks", "refine",
                  "num_samples", "paf_threshold", "min_sample_fraction", "distance_ratio", "min_parts",
                  "min_person_score", "root", "sampling"}
_STAGE_KEYS = {"name", "epochs", "steps_per_epoch", "batch_size", "optimizer", "learning_rate", "momentum",
               "weight_decay", "weight_decay_mode", "lr_decay", "plateau_factor", "plateau_patience",
               "freeze_backbone"}


# ------------------------------------------------------------------------------ optimizer


@keras.saving.register_keras_serializable(package="kerapose")
class CaffeSGD(keras.optimizers.SGD):
    """SGD with momentum and Caffe's coupled L2 weight decay.

    ``g <- g + l2 * w`` for every variable named ``kernel`` (biases are not decayed, as with
    OpenPose's ``decay_mult: 0``), then Keras' SGD momentum step, which is Caffe's
    (``v = mu v + lr g; w -= v``).
    """

    def __init__(self, learning_rate=0.01, momentum: float = 0.9, l2: float = 0.0, **kwargs):
        super().__init__(learning_rate=learning_rate, momentum=momentum, **kwargs)
        if not l2 >= 0:
            raise ValueError(f"l2: expected a non-negative weight decay, got {l2!r}")
        self.l2 = float(l2)

    def update_step(self, gradient, variable, learning_rate):
        # a keras.Variable is named "kernel"; the TF backend passes its tf.Variable, "dense/kernel:0"
        if self.l2 and variable.name.rsplit("/", 1)[-1].split(":")[0] == "kernel":
            gradient = ops.add(ops.cast(gradient, variable.dtype), ops.multiply(self.l2, variable))
        return super().update_step(gradient, variable, learning_rate)

    def get_config(self) -> dict:
        return {**super().get_config(), "l2": self.l2}


def _optimizer(stage: dict) -> keras.optimizers.Optimizer:
    lr: Any = float(stage.get("learning_rate", 4e-5))
    decay = stage.get("lr_decay")
    if decay:
        # OpenPose's Caffe "step" policy: lr * factor ^ floor(iteration / every_steps)
        lr = keras.optimizers.schedules.ExponentialDecay(lr, int(decay["every_steps"]), float(decay["factor"]),
                                                         staircase=True)
    name = stage.get("optimizer", "sgd")
    wd = float(stage.get("weight_decay") or 0.0)
    if name == "adam":
        return keras.optimizers.Adam(lr, weight_decay=wd or None)
    if name != "sgd":
        raise ValueError(f"optimizer: unknown {name!r}; accepted: sgd, adam")
    momentum = float(stage.get("momentum", 0.9))
    if stage.get("weight_decay_mode", "l2") == "decoupled":
        return keras.optimizers.SGD(lr, momentum=momentum, weight_decay=wd or None)
    return CaffeSGD(lr, momentum=momentum, l2=wd)


# ------------------------------------------------------------------------------ config


def _read_yaml(path: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"training config not found: {path}")
    with open(path) as f:
        try:
            raw = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return raw


def load_paf_config(path: str, overrides: dict | None = None) -> dict:
    """Read a PAF-family recipe, fill :data:`PAF_DEFAULTS`, apply CLI overrides (``epochs``,
    ``data_root``), and check it; errors name the file and the field."""
    raw = _read_yaml(path)
    unknown = set(raw) - set(PAF_DEFAULTS)
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}; accepted: {sorted(PAF_DEFAULTS)}")
    cfg = copy.deepcopy(PAF_DEFAULTS)
    for key, value in raw.items():
        if isinstance(cfg.get(key), dict):
            if not isinstance(value, dict):
                raise ValueError(f"{path}: {key} must be a mapping, got {type(value).__name__}")
            cfg[key].update(value)
        else:
            cfg[key] = value
    apply_overrides(cfg, overrides)
    if cfg["model"].get("name") not in PAF_MODELS:
        raise ValueError(f"{path}: model.name is {cfg['model'].get('name')!r}; accepted: {', '.join(PAF_MODELS)}")
    size = cfg["model"].get("input_size")
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, int) and v > 0 and v % 8 == 0
                                                                        for v in size)):
        raise ValueError(f"{path}: model.input_size must be [H, W], positive multiples of 8, got {size!r}")
    if not cfg["stages"]:
        raise ValueError(f"{path}: no training stages")
    for i, st in enumerate(cfg["stages"]):
        if not isinstance(st, dict) or st.get("name") not in PAF_STAGES:
            got = st.get("name") if isinstance(st, dict) else st
            raise ValueError(f"{path}: stages[{i}].name is {got!r}; accepted: {', '.join(PAF_STAGES)}")
        check_keys(path, f"stages[{i}]", st, _STAGE_KEYS)
        if int(st.get("epochs", 0)) < 1:
            raise ValueError(f"{path}: stages[{i}].epochs must be >= 1")
        if st.get("lr_decay") is not None and set(st["lr_decay"]) != {"factor", "every_steps"}:
            raise ValueError(f"{path}: stages[{i}].lr_decay must have exactly factor and every_steps, "
                             f"got {sorted(st['lr_decay'])}")
        if st.get("weight_decay_mode", "l2") not in ("l2", "decoupled"):
            raise ValueError(f"{path}: stages[{i}].weight_decay_mode must be l2 or decoupled, "
                             f"got {st['weight_decay_mode']!r}")
    if cfg["data"]["root"] is None and not cfg["data"]["synthetic"]:
        raise ValueError(f"{path}: give data.root (or --data-root) or data.synthetic")
    # Fail now, not after hours of training, on a misspelt evaluation / target / augment key.
    for section, accepted in (("evaluate", _EVALUATE_KEYS), ("targets", {"sigma", "limb_width"})):
        check_keys(path, section, cfg[section], accepted)
    from kerapose.data.augment import AugmentConfig

    try:
        AugmentConfig(output_size=tuple(size), **cfg["augment"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: augment: {e}") from None
    return cfg


def build_paf_model(model_config: dict) -> keras.Model:
    """A PAF-family model from a recipe's ``model`` section, built with input_shape
    ``(None, None, 3)`` (crops of ``input_size`` in training, any size in evaluation)."""
    from kerapose.models import paf_models

    m = dict(model_config)
    name = m.pop("name")
    m.pop("input_size", None)
    if name not in PAF_MODELS:
        raise ValueError(f"model.name: expected one of {', '.join(PAF_MODELS)}, got {name!r}")
    cls = getattr(paf_models, PAF_MODELS[name])
    return cls(input_shape=(None, None, 3), name=name.replace("-", "_"), **m)


# ------------------------------------------------------------------------------ training


@restores_dtype_policy
def train_paf(config: dict, output: str, strategy: str = "default", verbose: int = 1,
              extra_callbacks: list | None = None) -> dict:
    """Train a PAF-family model with every stage of ``config`` (see module docstring) and
    evaluate it; returns the COCO keypoint figures plus ``model_path`` and ``history``.

    ``extra_callbacks`` are added to every stage's ``fit``.
    """
    from kerapose.data.augment import AugmentConfig
    from kerapose.data.coco import CocoKeypoints
    from kerapose.data.paf_targets import PafTargets, supervised_outputs
    from kerapose.data.pipeline import SkipCounter, keypoint_dataset
    from kerapose.losses import MaskedL2

    os.makedirs(output, exist_ok=True)
    keras.utils.set_random_seed(int(config["seed"]))
    policy = precision_policy(config.get("mixed_precision"))
    if policy:
        keras.mixed_precision.set_global_policy(policy)
    chief = _is_chief()
    num_workers, worker_index = _worker_position() if strategy == "multi-worker" else (1, 0)
    # As kerapose.train: a non-chief worker keeps its state (backups, progress, stage weights,
    # generated data) in OUTPUT/worker-I, so workers sharing OUTPUT never write the same file.
    state = output if chief else os.path.join(output, f"worker-{worker_index}")
    os.makedirs(state, exist_ok=True)
    root = _prepare_data(config, state)
    with open(os.path.join(state, "config.yaml"), "w") as f:
        yaml.safe_dump(config, f)
    strat = get_strategy(strategy)
    data = config["data"]
    train_set = CocoKeypoints(root, data["train_split"], keypoint_set=data["keypoint_set"]).restrict(
        data.get("image_ids"))
    val_set = CocoKeypoints(root, data["val_split"], keypoint_set=data["keypoint_set"]).restrict(
        data.get("image_ids"))
    progress_path = os.path.join(state, "progress.json")
    done = json.load(open(progress_path)) if os.path.isfile(progress_path) else {"stages": []}

    size = tuple(int(v) for v in config["model"]["input_size"])
    with strat.scope():
        model = build_paf_model(config["model"])
    names = supervised_outputs(model)
    targets = PafTargets.for_model(model, size, record_keypoint_set=data["keypoint_set"], **config["targets"])
    aug = AugmentConfig(output_size=size, **config["augment"])
    val_aug = _val_augment(size, aug.pad_value)
    history: dict = {}
    seed = int(config["seed"])
    for i, stage in enumerate(config["stages"]):
        stage_id = f"{i + 1}-{stage['name']}"
        stage_weights = os.path.join(state, stage_id, "weights.weights.h5")
        if stage_id in done["stages"]:
            print(f"[kerapose] stage {stage_id} already finished; loading its weights", flush=True)
            model.load_weights(stage_weights)
            continue
        print(f"[kerapose] stage {stage_id}: {stage['epochs']} epochs", flush=True)
        batch = int(stage.get("batch_size", config["batch_size"])) * strat.num_replicas_in_sync
        skips = SkipCounter()
        with strat.scope():
            model.backbone.trainable = not bool(stage.get("freeze_backbone", False))
            # The stage outputs only: the final `pafs`/`heatmaps` repeat the last stage.
            sub = keras.Model(model.input, {n: model.get_layer(n).output for n in names}, name=f"{model.name}_stages")
            sub.compile(optimizer=_optimizer(stage), loss={n: MaskedL2() for n in names}, jit_compile=False)
        # each worker decodes and augments only its own images (as kerapose.train)
        train_ds = keypoint_dataset(train_set, targets, aug, batch, seed=seed + i, skips=skips,
                                    shard=(num_workers, worker_index) if num_workers > 1 else None)
        val_ds = keypoint_dataset(val_set, targets, val_aug, batch, shuffle=False, repeat=False)
        steps = int(stage.get("steps_per_epoch") or max(1, len(train_set.image_ids) // batch))
        callbacks: list = [SkipReport(skips), *(extra_callbacks or [])]
        if stage.get("plateau_patience") and not stage.get("lr_decay"):
            callbacks.append(keras.callbacks.ReduceLROnPlateau(
                "val_loss", factor=float(stage.get("plateau_factor", 0.1)),
                patience=int(stage["plateau_patience"]), verbose=verbose))
        history[stage_id] = fit_stage(sub, model, train_ds, val_ds, epochs=int(stage["epochs"]), steps=steps,
                                      callbacks=callbacks, stage_id=stage_id, state=state, output=output,
                                      chief=chief, verbose=verbose, done=done)
    model.backbone.trainable = True
    final = os.path.join(output, "model.keras")
    if chief:
        _atomic_save(model, final)
    ev = dict(config.get("evaluate") or {})
    ev_size = tuple(ev.pop("input_size", None) or size)
    t0 = time.time()
    metrics = evaluate_paf_model(model, val_set, input_size=ev_size, pad_value=aug.pad_value,
                                 progress=verbose > 0, **ev)
    metrics["eval_seconds"] = time.time() - t0
    if num_workers > 1:  # wait for every worker before returning (as kerapose.train)
        strat.reduce(tf.distribute.ReduceOp.SUM, strat.run(lambda: tf.constant(1.0)), axis=None)
    metrics["model_path"] = final
    metrics["history"] = history
    return metrics


# ------------------------------------------------------------------------------ evaluation


def _val_augment(size: tuple[int, int], pad_value):
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
    :class:`kerapose.models.paf_tta.PafMultiScale` when ``scales`` != ``(1,)`` or ``flip``),
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
    from kerapose.models.paf_tta import PafMultiScale
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
    cfg = _val_augment(size, pad_value)
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
