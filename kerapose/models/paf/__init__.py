"""The part-affinity-field family: networks, tf-pose MobileNetV2, end-to-end graph, TTA, recipe."""

from kerapose.models.paf import end_to_end  # noqa: F401  (registers the end-to-end layers)
from kerapose.models.paf.mobilenet import PafMobileNetV2
from kerapose.models.paf.networks import FeatureTransferNet, MultiLevelNet, PafBaseline

__all__ = ["PafBaseline", "FeatureTransferNet", "MultiLevelNet", "PafMobileNetV2"]
