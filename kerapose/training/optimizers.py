"""Optimizers and learning-rate schedules of a recipe stage, for every family."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

__all__ = ["CaffeSGD", "stage_optimizer", "step_schedule", "plateau_callbacks"]


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


def stage_optimizer(stage: dict, total_steps: int | None = None) -> keras.optimizers.Optimizer:
    """The optimizer of a validated stage (:class:`kerapose.training.schema.StageBase`).

    Learning rate: constant (``schedule: plateau``; divided by ``plateau_factor`` on plateaux
    when ``plateau_patience`` is set, :func:`plateau_callbacks`), Caffe's step policy
    (``lr_decay: {factor, every_steps}``), steps at given epochs (``lr_steps: {epochs, factor}``,
    the detection papers' "decreased at epochs 180 and 200"; an epoch is ``total_steps / epochs``
    steps), or ``schedule: cosine``: decayed to 1 % over the stage's ``total_steps`` after a linear
    ramp from 1 % over its first ``warmup_steps``. ``sgd`` decays weights Caffe's way
    (``weight_decay_mode: l2``, :class:`CaffeSGD`) or Keras' (``decoupled``); ``adam`` takes
    Keras' decoupled ``weight_decay``. ``global_clipnorm`` clips the norm of all gradients together.
    ``ema_momentum`` turns on Polyak averaging (Keras' ``use_ema``): at the end of the stage's
    ``fit`` the trainable weights become their moving averages (per-epoch checkpoints and the
    validation loss still see the raw weights).
    """
    lr: Any = float(stage["learning_rate"])
    warmup = int(stage.get("warmup_steps") or 0)
    if stage.get("schedule", "plateau") == "cosine":
        total = max(1, int(total_steps or 1))
        if warmup >= total:
            raise ValueError(f"warmup_steps ({warmup}) must be below the stage's {total} steps")
        if warmup:
            lr = keras.optimizers.schedules.CosineDecay(0.01 * lr, decay_steps=total - warmup, alpha=0.01,
                                                        warmup_target=lr, warmup_steps=warmup)
        else:
            lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps=total, alpha=0.01)
    elif stage.get("lr_decay"):
        decay = stage["lr_decay"]
        # OpenPose's Caffe "step" policy: lr * factor ^ floor(iteration / every_steps)
        lr = keras.optimizers.schedules.ExponentialDecay(lr, int(decay["every_steps"]), float(decay["factor"]),
                                                         staircase=True)
    elif stage.get("lr_steps"):
        lr = step_schedule(lr, stage["lr_steps"]["epochs"], float(stage["lr_steps"].get("factor", 0.1)),
                           _steps_per_epoch(stage, total_steps))
    name = stage.get("optimizer", "adam")
    wd = float(stage.get("weight_decay") or 0.0)
    options: dict[str, Any] = {}
    if stage.get("global_clipnorm"):
        options["global_clipnorm"] = float(stage["global_clipnorm"])
    if stage.get("ema_momentum"):
        # Keras' fit() ends with finalize_variable_values: the averages replace the weights
        options.update(use_ema=True, ema_momentum=float(stage["ema_momentum"]))
    if name == "adam":
        return keras.optimizers.Adam(lr, weight_decay=wd or None, **options)
    if name != "sgd":
        raise ValueError(f"optimizer: unknown {name!r}; accepted: adam, sgd")
    momentum = float(stage.get("momentum", 0.9))
    if stage.get("weight_decay_mode", "l2") == "decoupled":
        return keras.optimizers.SGD(lr, momentum=momentum, weight_decay=wd or None, **options)
    return CaffeSGD(lr, momentum=momentum, l2=wd, **options)


def _steps_per_epoch(stage: dict, total_steps: int | None) -> int:
    epochs = int(stage.get("epochs") or 1)
    if not total_steps or total_steps < epochs:
        raise ValueError(f"lr_steps needs the stage's total_steps (at least one per epoch), got {total_steps!r} "
                         f"for {epochs} epochs")
    return int(total_steps) // epochs


def step_schedule(learning_rate: float, epochs, factor: float, steps_per_epoch: int
                  ) -> keras.optimizers.schedules.LearningRateSchedule:
    """``learning_rate`` times ``factor`` after each epoch of ``epochs`` (epoch numbers from 1:
    ``[180, 200]`` lowers the rate from the 181st epoch on, and again from the 201st)."""
    # Keras passes the 0-based iteration of the update; PiecewiseConstantDecay switches after a bound
    bounds = [int(e) * int(steps_per_epoch) - 1 for e in epochs]
    if not bounds or any(b <= a for a, b in zip(bounds, bounds[1:])) or bounds[0] < 0:
        raise ValueError(f"lr_steps.epochs: expected increasing positive epoch numbers, got {list(epochs)}")
    values = [float(learning_rate) * float(factor) ** i for i in range(len(bounds) + 1)]
    return keras.optimizers.schedules.PiecewiseConstantDecay(bounds, values)


def plateau_callbacks(stage: dict, verbose: int = 1) -> list[keras.callbacks.Callback]:
    """``ReduceLROnPlateau`` for a constant-rate stage with ``plateau_patience``, else nothing."""
    if (stage.get("schedule", "plateau") != "plateau" or stage.get("lr_decay") or stage.get("lr_steps")
            or not stage.get("plateau_patience")):
        return []
    return [keras.callbacks.ReduceLROnPlateau("val_loss", factor=float(stage.get("plateau_factor", 0.1)),
                                              patience=int(stage["plateau_patience"]), verbose=verbose)]
