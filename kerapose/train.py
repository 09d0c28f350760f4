"""Multi-stage `model.fit` training from a YAML recipe (MultiPoseNet, as in the paper).

Stages (each a ``model.fit`` with its own optimizer):

1. ``keypoints``: backbone + keypoint subnet on the heatmap/segmentation targets (masked L2 on
   the final and every intermediate output), Adam, learning rate divided by 10 on plateaux.
2. ``persons``: the RetinaNet person subnet with the backbone frozen (focal loss + smooth L1).
3. ``prn``: the Pose Residual Network on annotation-derived pairs (binary cross-entropy), or
   (``inputs: network``) on crops of the trained keypoint subnet's own heatmaps, at the
   ground-truth boxes or (``boxes: detections``) at the person subnet's matching detections.

Every stage writes ``OUTPUT/STAGE/{last,best}.keras`` (the whole MultiPoseNet, written
atomically), CSV and TensorBoard logs, and uses ``BackupAndRestore`` so that a killed run,
started again with the same command, resumes where it stopped; finished stages are recorded
in ``OUTPUT/progress.json`` and skipped.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import time
from typing import Any

import keras
import numpy as np
import tensorflow as tf
import yaml

__all__ = ["load_config", "check_keys", "get_strategy", "train", "fit_stage", "evaluate_model", "precision_policy",
           "STAGES"]

STAGES = ("keypoints", "persons", "prn")
# keys a MultiPoseNet stage accepts (a misspelt key is an error, not a silently ignored option)
STAGE_KEYS = ("name", "epochs", "steps_per_epoch", "batch_size", "optimizer", "learning_rate", "momentum",
              "weight_decay", "schedule", "plateau_factor", "plateau_patience", "freeze_backbone",
              "intermediate_weight", "inputs", "boxes", "warmup_steps")
_DEFAULTS: dict[str, Any] = {
    "model": {"name": "multiposenet", "backbone": "resnet50", "keypoint_set": "coco17", "input_size": [480, 480]},
    "data": {"root": None, "train_split": "train2017", "val_split": "val2017", "synthetic": None, "image_ids": None},
    "augment": {},
    "targets": {"sigma": 2.0},  # heatmap Gaussians' standard deviation in stride-4 output cells (8 px)
    "batch_size": 8,
    "seed": 0,
    "mixed_precision": False,
    "stages": [],
    "evaluate": {"max_people": 20, "score_threshold": 0.3},
}


def apply_overrides(cfg: dict, overrides: dict | None) -> dict:
    """The CLI's overrides on a loaded recipe (both trainers): ``epochs`` sets every stage's,
    ``data_root`` replaces the data (and drops ``synthetic``), other keys are set; ``None`` skips."""
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key == "epochs":
            for st in cfg["stages"]:
                st["epochs"] = int(value)
        elif key == "data_root":
            cfg["data"]["root"] = value
            cfg["data"]["synthetic"] = None
        else:
            cfg[key] = value
    return cfg


_PRECISIONS = {False: None, None: None, "float32": None, True: "mixed_float16", "float16": "mixed_float16",
               "bfloat16": "mixed_bfloat16"}


def precision_policy(value) -> str | None:
    """A recipe's ``mixed_precision`` (false / "float32", true = "float16", "bfloat16") -> the Keras
    dtype policy to set, or None for float32. bfloat16 is the one that pays on CPUs with
    AVX512_BF16 / AMX (float16 is emulated there); numbers in benchmarks/bench_training.py."""
    try:
        return _PRECISIONS[value]
    except (KeyError, TypeError):
        raise ValueError(
            f"mixed_precision: expected false, 'float32', true, 'float16' or 'bfloat16', got {value!r}") from None


def check_keys(path: str, where: str, given, accepted) -> None:
    """A recipe section's keys (both trainers): unknown ones are an error that lists the accepted."""
    extra = set(given) - set(accepted)
    if extra:
        raise ValueError(f"{path}: {where} has unknown keys {sorted(extra)}; accepted: {sorted(accepted)}")


_EVALUATE_KEYS = ("max_people", "score_threshold", "flip_test", "pose_score")


def load_config(path: str, overrides: dict | None = None) -> dict:
    """Read a YAML recipe, fill defaults, apply CLI overrides, and check it."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"training config not found: {path}")
    with open(path) as f:
        try:
            raw = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    from kerapose.train_paf import PAF_MODELS, load_paf_config

    if isinstance(raw.get("model"), dict) and raw["model"].get("name") in PAF_MODELS:
        return load_paf_config(path, overrides)  # the PAF family's recipe schema (kerapose.train_paf)
    unknown = set(raw) - set(_DEFAULTS)
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}; accepted: {sorted(_DEFAULTS)}")
    cfg = copy.deepcopy(_DEFAULTS)
    for key, value in raw.items():
        if isinstance(cfg.get(key), dict) and isinstance(value, dict):
            cfg[key].update(value)
        else:
            cfg[key] = value
    apply_overrides(cfg, overrides)
    from kerapose.data.pipeline import PRN_PAIR_BOXES

    if not cfg["stages"]:
        raise ValueError(f"{path}: no training stages")
    for i, st in enumerate(cfg["stages"]):
        if not isinstance(st, dict):
            raise ValueError(f"{path}: stages[{i}] must be a mapping, got {type(st).__name__}")
        if st.get("name") not in STAGES:
            raise ValueError(f"{path}: stages[{i}].name is {st.get('name')!r}; accepted: {', '.join(STAGES)}")
        check_keys(path, f"stages[{i}]", st, STAGE_KEYS)
        inputs = st.get("inputs", "annotations")
        if inputs not in ("annotations", "network") or ("inputs" in st and st["name"] != "prn"):
            raise ValueError(f"{path}: stages[{i}].inputs is a prn-stage option: annotations or network, "
                             f"got {inputs!r} on a {st['name']} stage")
        boxes = st.get("boxes", "annotations")
        if boxes not in PRN_PAIR_BOXES or ("boxes" in st and inputs != "network"):
            raise ValueError(f"{path}: stages[{i}].boxes is an option of a prn stage with inputs: network, one of "
                             f"{', '.join(PRN_PAIR_BOXES)}; got {boxes!r} on a {st['name']} stage with inputs: {inputs}")
        if int(st.get("epochs", 0)) < 1:
            raise ValueError(f"{path}: stages[{i}].epochs must be >= 1")
        if st.get("schedule", "plateau") not in ("plateau", "cosine"):
            raise ValueError(f"{path}: stages[{i}].schedule is {st['schedule']!r}; accepted: plateau, cosine")
        if not float(st.get("intermediate_weight", 1.0)) >= 0:
            raise ValueError(f"{path}: stages[{i}].intermediate_weight must be >= 0")
        try:
            _warmup_steps(st)
        except ValueError as e:
            raise ValueError(f"{path}: stages[{i}].{e}") from None
    if cfg["data"]["root"] is None and not cfg["data"]["synthetic"]:
        raise ValueError(f"{path}: give data.root (or --data-root) or data.synthetic")
    check_keys(path, "evaluate", cfg["evaluate"], _EVALUATE_KEYS)
    from kerapose.models.multiposenet import check_pose_score

    for section in ("model", "evaluate"):  # evaluate.pose_score overrides the model's for the scoring
        if "pose_score" in cfg[section]:
            try:
                check_pose_score(cfg[section]["pose_score"])
            except ValueError as e:
                raise ValueError(f"{path}: {section}.{e}") from None
    check_keys(path, "targets", cfg["targets"], _DEFAULTS["targets"])
    if not float(cfg["targets"]["sigma"]) > 0:
        raise ValueError(f"{path}: targets.sigma must be > 0 (output cells), got {cfg['targets']['sigma']!r}")
    try:
        precision_policy(cfg["mixed_precision"])
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return cfg


class _MultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """MultiWorkerMirroredStrategy with the two ``reduce`` calls of Keras 3's TF trainer working.

    1. Before fitting, ``_maybe_symbolic_build`` reduces the whole first ``(x, y)`` batch with
       one eager ``strategy.reduce("MEAN", batch, axis=None)``, only to read its shapes and
       dtypes. The collective strategy reduces a single value, not a nested structure, and
       fails with "Attempt to convert a value (PerReplica...) ... to a Tensor"
       (keras-team/keras#20585, tensorflow/tensorflow#72388); reducing leaf by leaf would be
       an all-reduce of image batches across workers, which fails as soon as two workers'
       batches differ in size (a validation set's last batch). That probe gets this worker's
       own batch instead.
    2. Every step, the trainer averages the scalar logs with ``reduce("MEAN", v, axis=0)``,
       invalid for scalars ("Invalid reduction dimension 0 for input with 0 dimensions"); what
       it means (and what Keras does on one worker: ``reduce_mean`` of the stacked replicas)
       is the mean across replicas, ``axis=None``.
    """

    def reduce(self, reduce_op, value, axis):
        leaves = tf.nest.flatten(value)
        if (tf.nest.is_nested(value) and axis is None and tf.executing_eagerly()
                and all(isinstance(v, tf.distribute.DistributedValues) for v in leaves)):
            return tf.nest.map_structure(lambda v: self.experimental_local_results(v)[0], value)
        reduce_one = super().reduce

        def leaf(v):
            first = v.values[0] if isinstance(v, tf.distribute.DistributedValues) else v
            rank = getattr(getattr(first, "shape", None), "rank", None)
            return reduce_one(reduce_op, v, None if rank == 0 else axis)

        return tf.nest.map_structure(leaf, value)


def get_strategy(name: str) -> tf.distribute.Strategy:
    """``default`` | ``mirrored`` | ``multi-worker`` (reads TF_CONFIG)."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi-worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError("--strategy multi-worker needs the TF_CONFIG environment variable (cluster and task)")
        return _MultiWorkerMirroredStrategy()
    raise ValueError(f"unknown strategy {name!r}; accepted: default, mirrored, multi-worker")


def restores_dtype_policy(run):
    """Decorator of the trainers: the global dtype policy that a recipe's ``mixed_precision``
    sets lasts for the run only, so models the caller builds afterwards are float32 again."""

    @functools.wraps(run)
    def wrapper(*args, **kwargs):
        previous = keras.mixed_precision.global_policy()
        try:
            return run(*args, **kwargs)
        finally:
            keras.mixed_precision.set_global_policy(previous)

    return wrapper


def _is_chief() -> bool:
    tf_config = json.loads(os.environ.get("TF_CONFIG", "{}"))
    task = tf_config.get("task", {})
    return task.get("type", "chief") == "chief" or (task.get("type") == "worker" and int(task.get("index", 0)) == 0
                                                    and "chief" not in tf_config.get("cluster", {}))


def _worker_position() -> tuple[int, int]:
    """(number of training workers, this worker's index) from TF_CONFIG; (1, 0) outside a cluster.

    TF's own numbering: the chief first, then the workers in order (evaluators do not train).
    """
    tf_config = json.loads(os.environ.get("TF_CONFIG", "{}"))
    cluster, task = tf_config.get("cluster", {}), tf_config.get("task", {})
    chiefs, workers = len(cluster.get("chief", [])), len(cluster.get("worker", []))
    if not task or task.get("type") not in ("chief", "worker") or chiefs + workers <= 1:
        return 1, 0
    index = int(task.get("index", 0))
    return chiefs + workers, index if task["type"] == "chief" else chiefs + index


def _batch_norm_layers(layer) -> list:
    """Every BatchNormalization layer inside ``layer`` (nested models included), each once."""
    found: dict[int, keras.layers.BatchNormalization] = {}
    stack = [layer]
    while stack:
        current = stack.pop()
        if isinstance(current, keras.layers.BatchNormalization):
            found.setdefault(id(current), current)
        stack.extend(getattr(current, "layers", ()))
    return list(found.values())


def _atomic_save(model: keras.Model, path: str) -> None:
    tmp = f"{path}.tmp.keras"
    model.save(tmp)
    os.replace(tmp, path)


class TaskCheckpoint(keras.callbacks.Callback):
    """Save the whole task model (not the stage's sub-model) as last.keras / best.keras."""

    def __init__(self, task_model: keras.Model, directory: str, monitor: str = "val_loss", write: bool = True):
        super().__init__()
        self.task_model = task_model
        self.directory = directory
        self.monitor = monitor
        self.best = np.inf
        self.write = write

    def on_epoch_end(self, epoch, logs=None):
        if not self.write:
            return
        logs = logs or {}
        os.makedirs(self.directory, exist_ok=True)
        _atomic_save(self.task_model, os.path.join(self.directory, "last.keras"))
        value = logs.get(self.monitor, logs.get("loss"))
        if value is not None and value < self.best:
            self.best = float(value)
            _atomic_save(self.task_model, os.path.join(self.directory, "best.keras"))


class SkipReport(keras.callbacks.Callback):
    """Print, once per epoch, how many samples the pipeline skipped and why."""

    def __init__(self, counter):
        super().__init__()
        self.counter = counter

    def on_epoch_end(self, epoch, logs=None):
        if self.counter.total():
            print(f"\n[kerapose] epoch {epoch + 1}: {self.counter.report()}", flush=True)
            self.counter.reset()


def _prepare_data(cfg: dict, output: str) -> str:
    root = cfg["data"]["root"]
    if root:
        return root
    from kerapose.data.synthetic import generate_synthetic_coco

    syn = dict(cfg["data"]["synthetic"])
    root = os.path.join(output, "synthetic-data")
    if not os.path.isdir(os.path.join(root, "annotations")):
        print(f"[kerapose] generating the synthetic dataset in {root}", flush=True)
        syn["image_size"] = tuple(syn.get("image_size", cfg["model"]["input_size"]))
        generate_synthetic_coco(root, progress=True, **syn)
    cfg["data"]["train_split"], cfg["data"]["val_split"] = "train", "val"
    return root


def _build_model(cfg: dict):
    from kerapose.models import MultiPoseNet

    m = dict(cfg["model"])
    if m.pop("name", "multiposenet") != "multiposenet":
        raise ValueError("the training recipes cover MultiPoseNet (model.name: multiposenet)")
    size = tuple(m.pop("input_size"))
    return MultiPoseNet(input_shape=(*size, 3), **m), size


def _warmup_steps(stage: dict) -> int:
    warmup = stage.get("warmup_steps", 0)
    if not (isinstance(warmup, int) and not isinstance(warmup, bool) and warmup >= 0):
        raise ValueError(f"warmup_steps: expected an integer >= 0, got {warmup!r}")
    if warmup and stage.get("schedule", "plateau") != "cosine":
        raise ValueError(f"warmup_steps needs schedule: cosine, got schedule: {stage.get('schedule', 'plateau')}")
    return warmup


def _optimizer(stage: dict, total_steps: int | None = None) -> keras.optimizers.Optimizer:
    """The stage's optimizer. ``schedule: cosine`` decays the rate to 1 % over the stage's
    ``total_steps`` (then ReduceLROnPlateau is not used), after a linear ramp from 1 % over its
    first ``warmup_steps``; the default is a constant rate that ReduceLROnPlateau divides on
    plateaux (the paper's schedule)."""
    name = stage.get("optimizer", "adam")
    lr = float(stage.get("learning_rate", 1e-4))
    schedule = stage.get("schedule", "plateau")
    warmup = _warmup_steps(stage)
    if schedule == "cosine":
        total = max(1, int(total_steps or 1))
        if warmup >= total:
            raise ValueError(f"warmup_steps ({warmup}) must be below the stage's {total} steps")
        if warmup:
            lr = keras.optimizers.schedules.CosineDecay(0.01 * lr, decay_steps=total - warmup, alpha=0.01,
                                                        warmup_target=lr, warmup_steps=warmup)
        else:
            lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps=total, alpha=0.01)
    elif schedule != "plateau":
        raise ValueError(f"unknown schedule {schedule!r}; accepted: plateau, cosine")
    if name == "adam":
        return keras.optimizers.Adam(lr)
    if name == "sgd":
        return keras.optimizers.SGD(lr, momentum=float(stage.get("momentum", 0.9)),
                                    weight_decay=stage.get("weight_decay"))
    raise ValueError(f"unknown optimizer {name!r}; accepted: adam, sgd")


def fit_stage(sub: keras.Model, model: keras.Model, train_ds, val_ds, *, epochs: int, steps: int,
              callbacks: list, stage_id: str, state: str, output: str, chief: bool, verbose: int,
              done: dict) -> dict:
    """One training stage (both trainers): ``sub.fit`` with backups, CSV / TensorBoard logs and
    whole-model checkpoints in ``OUTPUT/STAGE_ID``, then the stage's weights and the progress
    file (atomically) in ``state``. Returns the stage's history plus ``seconds``."""
    stage_dir = os.path.join(output, stage_id)
    callbacks = [
        *callbacks,
        keras.callbacks.BackupAndRestore(os.path.join(state, "backup", stage_id)),
        keras.callbacks.CSVLogger(os.path.join(stage_dir, "log.csv") if chief else os.devnull, append=True),
        TaskCheckpoint(model, stage_dir, write=chief),
    ]
    if chief:
        os.makedirs(stage_dir, exist_ok=True)
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(output, "tensorboard", stage_id)))
    t0 = time.time()
    hist = sub.fit(train_ds, epochs=epochs, steps_per_epoch=steps, validation_data=val_ds,
                   callbacks=callbacks, verbose=verbose, shuffle=False)
    record = {k: [float(x) for x in v] for k, v in hist.history.items()}
    record["seconds"] = time.time() - t0
    stage_weights = os.path.join(state, stage_id, "weights.weights.h5")
    os.makedirs(os.path.dirname(stage_weights), exist_ok=True)
    model.save_weights(stage_weights)
    done["stages"].append(stage_id)
    progress_path = os.path.join(state, "progress.json")
    with open(progress_path + ".tmp", "w") as f:
        json.dump(done, f)
    os.replace(progress_path + ".tmp", progress_path)
    return record


@restores_dtype_policy
def train(config: dict, output: str, strategy: str = "default", verbose: int = 1,
          extra_callbacks: list | None = None) -> dict:
    """Run every stage of ``config`` (see module docstring); returns the final metrics.

    ``extra_callbacks`` are added to every stage's ``fit``.
    """
    from kerapose.train_paf import PAF_MODELS, train_paf

    if config["model"].get("name") in PAF_MODELS:  # OpenPose baseline, FTN, MLN: kerapose.train_paf
        return train_paf(config, output, strategy=strategy, verbose=verbose, extra_callbacks=extra_callbacks)
    from kerapose.codecs.prn import PRNCodec
    from kerapose.data.augment import AugmentConfig
    from kerapose.data.coco import CocoKeypoints
    from kerapose.data.pipeline import (MultiPoseNetTargets, SkipCounter, keypoint_dataset, network_prn_pairs,
                                        prn_dataset)
    from kerapose.losses import MaskedL2, RetinaFocalLoss, RetinaSmoothL1, prn_loss
    from kerapose.models.multiposenet import KEYPOINT_STRIDE

    os.makedirs(output, exist_ok=True)
    keras.utils.set_random_seed(int(config["seed"]))
    policy = precision_policy(config.get("mixed_precision"))
    if policy:
        keras.mixed_precision.set_global_policy(policy)
    chief = _is_chief()
    num_workers, worker_index = _worker_position() if strategy == "multi-worker" else (1, 0)
    # A non-chief worker keeps its own state (backups, progress, stage weights, generated data) in
    # OUTPUT/TYPE-INDEX (as in TF_CONFIG, e.g. worker-1): workers that share OUTPUT never write the
    # same file, and each can resume.
    task = json.loads(os.environ.get("TF_CONFIG", "{}")).get("task") or {}
    state = output if chief else os.path.join(output, f"{task.get('type', 'worker')}-{task.get('index', 0)}")
    os.makedirs(state, exist_ok=True)
    root = _prepare_data(config, state)
    with open(os.path.join(state, "config.yaml"), "w") as f:
        yaml.safe_dump(config, f)
    strat = get_strategy(strategy)
    # data.image_ids restricts both splits (an overfit check trains and scores the same images)
    ids = config["data"].get("image_ids")
    train_set = CocoKeypoints(root, config["data"]["train_split"], keypoint_set=config["model"]["keypoint_set"])
    val_set = CocoKeypoints(root, config["data"]["val_split"], keypoint_set=config["model"]["keypoint_set"])
    train_set.restrict(ids)
    val_set.restrict(ids)
    progress_path = os.path.join(state, "progress.json")
    done = json.load(open(progress_path)) if os.path.isfile(progress_path) else {"stages": []}

    with strat.scope():
        model, size = _build_model(config)
    # Keras keeps BatchNormalization's moving statistics per replica (aggregation "none"), so
    # replicas that see different images drift apart. Batch statistics over the global batch
    # (sync BN, for the training run only) keep them equal on every replica and worker.
    sync_bn = [l for l in _batch_norm_layers(model) if not l.synchronized] if strat.num_replicas_in_sync > 1 else []
    for layer in sync_bn:
        layer.synchronized = True
    aug = AugmentConfig(output_size=size, **config.get("augment", {}))
    val_aug = AugmentConfig(output_size=size, rotation_deg=0.0, scale_range=(1.0, 1.0), flip_prob=0.0,
                            center="image", fit_image=True)
    history: dict = {}
    seed = int(config["seed"])
    for i, stage in enumerate(config["stages"]):
        name = stage["name"]
        stage_id = f"{i + 1}-{name}"
        stage_weights = os.path.join(state, stage_id, "weights.weights.h5")
        if stage_id in done["stages"]:
            print(f"[kerapose] stage {stage_id} already finished; loading its weights", flush=True)
            model.load_weights(stage_weights)
            continue
        print(f"[kerapose] stage {stage_id}: {stage['epochs']} epochs", flush=True)
        batch = int(stage.get("batch_size", config["batch_size"])) * strat.num_replicas_in_sync
        skips = SkipCounter()
        callbacks: list = [SkipReport(skips), *(extra_callbacks or [])]
        weights = None  # per-output loss weights (keypoints stage: intermediate_weight)
        with strat.scope():
            if name in ("keypoints", "persons"):
                model.freeze_backbone(bool(stage.get("freeze_backbone", name == "persons")))
                person = name == "persons"
                targets = MultiPoseNetTargets(config["model"]["keypoint_set"], size, person_targets=person,
                                              heatmap_targets=not person,
                                              sigma=float(config.get("targets", _DEFAULTS["targets"])["sigma"]))
                sub = model.person_model if person else model.keypoint_model
                keys = list(targets.output_shapes)
                if person:
                    losses = {"person_logits": RetinaFocalLoss(), "person_boxes": RetinaSmoothL1()}
                else:
                    losses = {k: MaskedL2() for k in keys}
                    # intermediate_weight scales the losses of the heatmaps_k* outputs (paper: 1)
                    side = float(stage.get("intermediate_weight", 1.0))
                    if not side >= 0:
                        raise ValueError(f"stages[{i}].intermediate_weight must be >= 0, got {side!r}")
                    weights = {k: 1.0 if k == "heatmaps" else side for k in keys}
                # each worker decodes and augments only its own images (tf.data's DATA auto-sharding
                # would run the whole numpy pipeline on every worker and drop the others' samples)
                train_ds = keypoint_dataset(train_set, targets, aug, batch, seed=seed + i, skips=skips,
                                            shard=(num_workers, worker_index) if num_workers > 1 else None)
                val_ds = keypoint_dataset(val_set, targets, val_aug, batch, shuffle=False, repeat=False)
                steps = int(stage.get("steps_per_epoch") or max(1, len(train_set) // batch))
            else:
                codec = PRNCodec(config["model"]["keypoint_set"])
                sub = model.prn
                losses = prn_loss()
                # inputs: annotations (the paper: rendered ground truth) or network (the trained
                # keypoint subnet's heatmaps at the ground-truth boxes)
                source = stage.get("inputs", "annotations")
                if source == "network":
                    # boxes: annotations (ground truth) or detections (the person subnet's, as at
                    # inference; the persons stage must come first)
                    where = stage.get("boxes", "annotations")
                    print("[kerapose] PRN pairs from the keypoint subnet's heatmaps at the "
                          f"{'detected' if where == 'detections' else 'ground-truth'} boxes", flush=True)
                    net = model if where == "detections" else model.keypoint_model
                    train_pairs, val_pairs = (
                        network_prn_pairs(d, codec, net, size, KEYPOINT_STRIDE, skips=skips,
                                          progress=verbose > 0, boxes=where) for d in (train_set, val_set))
                elif source == "annotations":
                    train_pairs, val_pairs = None, None
                else:
                    raise ValueError(f"stages[{i}].inputs: expected 'annotations' or 'network', got {source!r}")
                train_ds, n_pairs = prn_dataset(train_set, codec, batch, seed=seed + i, pairs=train_pairs)
                val_ds, _ = prn_dataset(val_set, codec, batch, shuffle=False, flip=False, repeat=False,
                                        pairs=val_pairs)
                steps = int(stage.get("steps_per_epoch") or max(1, n_pairs // batch))
            sub.compile(optimizer=_optimizer(stage, steps * int(stage["epochs"])), loss=losses, loss_weights=weights,
                        jit_compile=False)
        if stage.get("schedule", "plateau") == "plateau":
            callbacks.append(keras.callbacks.ReduceLROnPlateau(
                "val_loss", factor=float(stage.get("plateau_factor", 0.1)),
                patience=int(stage.get("plateau_patience", 3)), verbose=verbose))
        history[stage_id] = fit_stage(sub, model, train_ds, val_ds, epochs=int(stage["epochs"]), steps=steps,
                                      callbacks=callbacks, stage_id=stage_id, state=state, output=output,
                                      chief=chief, verbose=verbose, done=done)
    model.freeze_backbone(False)
    for layer in sync_bn:
        layer.synchronized = False
    if task:  # every worker of a cluster records its final weights, so replicas can be compared
        model.save_weights(os.path.join(output, f"weights-{task['type']}-{task.get('index', 0)}.weights.h5"))
    final = os.path.join(output, "model.keras")
    if chief:
        _atomic_save(model, final)
    metrics = evaluate_model(model, val_set, input_size=size, **config.get("evaluate", {}))
    if num_workers > 1:
        # Leave together (an all-reduce as a barrier): worker 0 hosts the cluster's coordination
        # service, and a worker whose peer has exited logs "unhealthy task" heartbeat errors.
        strat.reduce(tf.distribute.ReduceOp.SUM, strat.run(lambda: tf.constant(1.0)), axis=None)
    metrics["model_path"] = final
    metrics["history"] = history
    return metrics


def evaluate_model(model, dataset, input_size=(480, 480), max_people: int = 20, score_threshold: float = 0.3,
                   image_ids=None, progress: bool = True, flip_test: bool = False,
                   pose_score: str | None = None) -> dict:
    """COCO keypoint AP of a MultiPoseNet end to end (boxes -> PRN -> keypoints) on a dataset split
    (``pose_score`` None: the model's own)."""
    from kerapose.data.pipeline import read_image
    from kerapose.evaluation import evaluate_keypoints, keypoint_results

    ids = list(image_ids or dataset.image_ids)
    results: list[dict] = []
    bar = keras.utils.Progbar(len(ids), unit_name="image") if progress else None
    for n, image_id in enumerate(ids):
        rec = dataset.record(image_id)
        image = read_image(rec.path)
        pose = model.predict_poses([image], input_size=tuple(input_size), max_people=max_people,
                                   score_threshold=score_threshold, flip_test=flip_test,
                                   pose_score=pose_score)[0]
        results += keypoint_results(image_id, pose["keypoints"], pose["scores"])
        if bar is not None:
            bar.update(n + 1)
    metrics = evaluate_keypoints(dataset.coco, results, image_ids=ids, keypoint_set=dataset.keypoint_set,
                                 per_keypoint=True)
    metrics.update(images=len(ids), people=len(results))
    return metrics
