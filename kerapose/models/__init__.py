"""Task models."""

from kerapose.models.multiposenet import MultiPoseNet

__all__ = ["MultiPoseNet"]
