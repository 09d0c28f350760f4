"""Task models, one package per family (:mod:`kerapose.models.registry` lists them)."""

from kerapose.models.multiposenet import MultiPoseNet
from kerapose.models.paf import FeatureTransferNet, MultiLevelNet, PafBaseline, PafMobileNetV2
from kerapose.models.posedet import PoseDet
from kerapose.models.strongpose import StrongPose

__all__ = ["MultiPoseNet", "PafBaseline", "FeatureTransferNet", "MultiLevelNet", "PafMobileNetV2", "PoseDet",
           "StrongPose"]
