"""MultiPoseNet (Kocabas et al. 2018): network, end-to-end graph, recipe, family declaration."""

from kerapose.models.multiposenet.network import MultiPoseNet

__all__ = ["MultiPoseNet"]
