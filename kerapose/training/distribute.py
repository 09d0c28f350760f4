"""Distribution: the strategy a recipe runs under, this task's place in a cluster, and the
exit barrier, for every family's training."""

from __future__ import annotations

import json
import os

import keras
import tensorflow as tf

__all__ = ["get_strategy", "is_chief", "worker_position", "task_state_dir", "batch_norm_layers", "barrier"]


class MultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
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
        return MultiWorkerMirroredStrategy()
    raise ValueError(f"unknown strategy {name!r}; accepted: default, mirrored, multi-worker")


def is_chief() -> bool:
    tf_config = json.loads(os.environ.get("TF_CONFIG", "{}"))
    task = tf_config.get("task", {})
    return task.get("type", "chief") == "chief" or (task.get("type") == "worker" and int(task.get("index", 0)) == 0
                                                    and "chief" not in tf_config.get("cluster", {}))


def worker_position() -> tuple[int, int]:
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


def batch_norm_layers(layer) -> list:
    """Every BatchNormalization layer inside ``layer`` (nested models included), each once."""
    found: dict[int, keras.layers.BatchNormalization] = {}
    stack = [layer]
    while stack:
        current = stack.pop()
        if isinstance(current, keras.layers.BatchNormalization):
            found.setdefault(id(current), current)
        stack.extend(getattr(current, "layers", ()))
    return list(found.values())


def task_state_dir(output: str) -> str:
    """Where this task keeps its state (backups, progress, stage weights, generated data): OUTPUT
    for the chief, OUTPUT/TYPE-INDEX (as in TF_CONFIG, e.g. worker-1) for the others, so that
    workers sharing OUTPUT never write the same file and each can resume."""
    if is_chief():
        return output
    task = json.loads(os.environ.get("TF_CONFIG", "{}")).get("task") or {}
    return os.path.join(output, f"{task.get('type', 'worker')}-{task.get('index', 0)}")


def barrier(strategy: tf.distribute.Strategy) -> None:
    """Leave together (an all-reduce as a barrier): worker 0 hosts the cluster's coordination
    service, and a worker whose peer has exited logs "unhealthy task" heartbeat errors."""
    strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.constant(1.0)), axis=None)
