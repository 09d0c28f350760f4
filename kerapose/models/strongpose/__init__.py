"""StrongPose (Ahmad and Yoon): strong keypoint heat maps, offsets, greedy pose plotting.

Declared here for the family registry: the network (:class:`StrongPose`), its built-in names
(:data:`BUILDERS`, random weights), the default input size, the in-graph decoder, the losses and
the training targets; ``family.py`` declares the family, ``recipe.py`` its training recipe.
"""

from __future__ import annotations

from typing import Callable

import keras

from kerapose.models.strongpose.decoder import StrongPoseDecoder, strongpose_decode_tf
from kerapose.models.strongpose.losses import (
    LOSS_WEIGHTS,
    PACKING,
    MaskedLogisticLoss,
    OffsetL1Loss,
    pack_targets,
    strongpose_losses,
)
from kerapose.models.strongpose.network import (
    DECODER_SETTINGS,
    DEFAULT_INPUT_SIZE,
    OUTPUTS,
    STRONGPOSE_BACKBONES,
    StrongPose,
)
from kerapose.models.strongpose.targets import StrongPoseTargets

__all__ = [
    "StrongPose",
    "StrongPoseDecoder",
    "strongpose_decode_tf",
    "MaskedLogisticLoss",
    "OffsetL1Loss",
    "pack_targets",
    "strongpose_losses",
    "LOSS_WEIGHTS",
    "PACKING",
    "StrongPoseTargets",
    "BUILDERS",
    "DECODER_SETTINGS",
    "DEFAULT_INPUT_SIZE",
    "OUTPUTS",
    "STRONGPOSE_BACKBONES",
]


def _builder(depth: int) -> Callable[..., keras.Model]:
    def build(input_shape=(None, None, 3), **kw):
        return StrongPose(backbone=f"resnet{depth}", input_shape=input_shape, name=f"strongpose_r{depth}", **kw)

    return build


# Built-in names -> constructors (output stride 16, the paper's training setting; pass
# output_stride=8 for its evaluation setting).
BUILDERS: dict[str, Callable[..., keras.Model]] = {
    f"strongpose-r{d}": _builder(d) for d in (18, 50, 101, 152)
}
