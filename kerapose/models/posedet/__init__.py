"""PoseDet (Tian et al. 2021): the network, its in-graph decoder and its losses.

The codec (targets, oracle) is :mod:`kerapose.codecs.posedet`; the design choices and where
they follow the paper or the authors' code are in docs/posedet.md.
"""

from kerapose.models.posedet.decoder import PoseDetDecoder, posedet_end_to_end
from kerapose.models.posedet.losses import PoseDetLoss, posedet_losses
from kerapose.models.posedet.network import (DEFAULT_INPUT_SIZE, POSEDET_BACKBONES, POSEDET_CONFIGS, SIZE_MULTIPLE,
                                             PoseDet)

__all__ = ["PoseDet", "PoseDetDecoder", "PoseDetLoss", "posedet_end_to_end", "posedet_losses",
           "POSEDET_BACKBONES", "POSEDET_CONFIGS", "SIZE_MULTIPLE", "DEFAULT_INPUT_SIZE"]
