"""Task models."""

from kerapose.models.multiposenet import MultiPoseNet
from kerapose.models.paf_models import FeatureTransferNet, MultiLevelNet, PafBaseline
from kerapose.models.paf_mobilenet import PafMobileNetV2
from kerapose.models import paf_end_to_end  # noqa: E402,F401  (registers the PAF end-to-end layers)

__all__ = ["MultiPoseNet", "PafBaseline", "FeatureTransferNet", "MultiLevelNet", "PafMobileNetV2"]
