"""The stage runner every family trains with.

:func:`train` runs a validated recipe (:func:`kerapose.training.recipe.load_recipe`): it sets the
seed and precision, finds this task's place in a cluster, prepares the data (a COCO-layout root
or a generated synthetic set), builds the family's model in the strategy's scope, and runs each
stage the family plans (:class:`~kerapose.training.spec.StagePlan`) as one ``model.fit`` with:

- ``OUTPUT/STAGE/{last,best}.keras``: the whole task model (not the stage's sub-model), written
  atomically after every epoch;
- ``BackupAndRestore``, so a killed run started again with the same command resumes mid-stage;
  finished stages are recorded in ``OUTPUT/progress.json`` and skipped on a rerun;
- CSV and TensorBoard logs, Keras' progress bar, and the pipeline's skipped-sample counts.

At the end the model is saved as ``OUTPUT/model.keras`` and scored on the validation split by the
family's evaluation; in a cluster every worker leaves together (:func:`~kerapose.training.distribute.barrier`).
"""

from __future__ import annotations

import json
import os
import time

import keras
import numpy as np
import yaml

from kerapose.models.registry import family_for_recipe
from kerapose.training.distribute import (barrier, batch_norm_layers, get_strategy, is_chief, task_state_dir,
                                          worker_position)
from kerapose.training.precision import describe_auto_precision, precision_policy, restores_dtype_policy
from kerapose.training.spec import TrainContext

__all__ = ["train", "fit_stage", "atomic_save", "TaskCheckpoint", "SkipReport", "prepare_data"]


def atomic_save(model: keras.Model, path: str) -> None:
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
        atomic_save(self.task_model, os.path.join(self.directory, "last.keras"))
        value = logs.get(self.monitor, logs.get("loss"))
        if value is not None and value < self.best:
            self.best = float(value)
            atomic_save(self.task_model, os.path.join(self.directory, "best.keras"))


class SkipReport(keras.callbacks.Callback):
    """Print, once per epoch, how many samples the pipeline skipped and why."""

    def __init__(self, counter):
        super().__init__()
        self.counter = counter

    def on_epoch_end(self, epoch, logs=None):
        if self.counter.total():
            print(f"\n[kerapose] epoch {epoch + 1}: {self.counter.report()}", flush=True)
            self.counter.reset()


def prepare_data(cfg: dict, output: str) -> str:
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
    """Run every stage of a validated recipe ``config`` and score the model (module docstring).

    Returns the family's COCO metrics plus ``model_path`` and ``history`` (per stage: the Keras
    history and ``seconds``). ``extra_callbacks`` are added to every stage's ``fit``.
    """
    from kerapose.data.coco import CocoKeypoints
    from kerapose.data.pipeline import SkipCounter

    recipe = family_for_recipe(config["model"]["name"]).recipe
    os.makedirs(output, exist_ok=True)
    seed = int(config["seed"])
    keras.utils.set_random_seed(seed)
    policy = precision_policy(config.get("mixed_precision"))
    if config.get("mixed_precision") == "auto" and verbose:
        print(f"[kerapose] {describe_auto_precision()}", flush=True)
    if policy:
        keras.mixed_precision.set_global_policy(policy)
    chief = is_chief()
    num_workers, worker_index = worker_position() if strategy == "multi-worker" else (1, 0)
    task = json.loads(os.environ.get("TF_CONFIG", "{}")).get("task") or {}
    state = task_state_dir(output)
    os.makedirs(state, exist_ok=True)
    root = prepare_data(config, state)
    with open(os.path.join(state, "config.yaml"), "w") as f:
        yaml.safe_dump(config, f)
    strat = get_strategy(strategy)
    data = config["data"]
    data_kps = recipe.data_keypoint_set(config)
    train_set = CocoKeypoints(root, data["train_split"], keypoint_set=data_kps).restrict(data.get("image_ids"))
    val_set = CocoKeypoints(root, data["val_split"], keypoint_set=data_kps).restrict(data.get("image_ids"))
    progress_path = os.path.join(state, "progress.json")
    done = json.load(open(progress_path)) if os.path.isfile(progress_path) else {"stages": []}

    with strat.scope():
        model = recipe.build(config)
    # Keras keeps BatchNormalization's moving statistics per replica (aggregation "none"), so
    # replicas that see different images drift apart. Batch statistics over the global batch
    # (sync BN, for the training run only) keep them equal on every replica and worker.
    sync_bn = [l for l in batch_norm_layers(model) if not l.synchronized] if strat.num_replicas_in_sync > 1 else []
    for layer in sync_bn:
        layer.synchronized = True
    history: dict = {}
    for i, stage in enumerate(config["stages"]):
        stage_id = f"{i + 1}-{stage['name']}"
        if stage_id in done["stages"]:
            print(f"[kerapose] stage {stage_id} already finished; loading its weights", flush=True)
            model.load_weights(os.path.join(state, stage_id, "weights.weights.h5"))
            continue
        print(f"[kerapose] stage {stage_id}: {stage['epochs']} epochs", flush=True)
        skips = SkipCounter()
        ctx = TrainContext(config=config, model=model, input_size=recipe.input_size(config), train_set=train_set,
                           val_set=val_set, strategy=strat, replicas=strat.num_replicas_in_sync,
                           shard=(num_workers, worker_index) if num_workers > 1 else None, seed=seed + i,
                           verbose=verbose, state=os.path.join(state, stage_id), skips=skips)
        with strat.scope():
            plan = recipe.plan_stage(ctx, i, stage)
            plan.model.compile(optimizer=plan.optimizer, loss=plan.loss, loss_weights=plan.loss_weights,
                               jit_compile=False)
        history[stage_id] = fit_stage(plan.model, model, plan.train_ds, plan.val_ds, epochs=int(stage["epochs"]),
                                      steps=plan.steps,
                                      callbacks=[SkipReport(skips), *plan.callbacks, *(extra_callbacks or [])],
                                      stage_id=stage_id, state=state, output=output, chief=chief, verbose=verbose,
                                      done=done)
        if plan.cleanup is not None:
            plan.cleanup()
    recipe.finish(model)
    for layer in sync_bn:
        layer.synchronized = False
    if task:  # every worker of a cluster records its final weights, so replicas can be compared
        model.save_weights(os.path.join(output, f"weights-{task['type']}-{task.get('index', 0)}.weights.h5"))
    final = os.path.join(output, "model.keras")
    if chief:
        atomic_save(model, final)
    t0 = time.time()
    metrics = recipe.evaluate(model, val_set, config, verbose)
    metrics["eval_seconds"] = time.time() - t0
    if num_workers > 1:
        barrier(strat)
    metrics["model_path"] = final
    metrics["history"] = history
    return metrics
