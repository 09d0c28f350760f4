"""Task models."""

from kerapose.models.multiposenet import MultiPoseNet
from kerapose.models.paf_models import FeatureTransferNet, MultiLevelNet, PafBaseline

__all__ = ["MultiPoseNet", "PafBaseline", "FeatureTransferNet", "MultiLevelNet"]
