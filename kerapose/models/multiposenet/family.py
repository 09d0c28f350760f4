"""The MultiPoseNet family's declaration (:class:`kerapose.models.family.ModelFamily`)."""

from __future__ import annotations

from typing import Callable

from kerapose.heads.prn import pose_residual_network
from kerapose.models.family import ModelFamily
from kerapose.models.multiposenet.constants import KEYPOINT_STRIDE, SIZE_MULTIPLE
from kerapose.models.multiposenet.network import MultiPoseNet
from kerapose.models.multiposenet.recipe import RECIPE

__all__ = ["FAMILY"]


def _multiposenet(depth: int) -> Callable:
    def build(input_shape=(None, None, 3), **kw):
        return MultiPoseNet(backbone=f"resnet{depth}", input_shape=input_shape, name=f"multiposenet_r{depth}", **kw)

    return build


def _prn(input_shape=None, **kw):
    return pose_residual_network(**kw)


def _heatmap_oracle(keypoint_set: str, stride: int | None):
    from kerapose.codecs.heatmap import HeatmapCodec, oracle_keypoints

    hc = HeatmapCodec(keypoint_set, stride=stride or KEYPOINT_STRIDE)
    return lambda r: ("keypoints", *oracle_keypoints(hc, r))


def _boxes_oracle(keypoint_set: str, stride: int | None):
    from kerapose.codecs.boxes import BoxCodec, oracle_boxes

    bc = BoxCodec()
    return lambda r: ("boxes", *oracle_boxes(bc, r))


def _prn_oracle(keypoint_set: str, stride: int | None):
    from kerapose.codecs.heatmap import HeatmapCodec
    from kerapose.codecs.prn import PRNCodec, oracle_keypoints

    hc = HeatmapCodec(keypoint_set, stride=stride or KEYPOINT_STRIDE)
    prn = PRNCodec(keypoint_set)
    return lambda r: ("keypoints", *oracle_keypoints(prn, hc, r))


FAMILY = ModelFamily(
    name="multiposenet",
    summary="MultiPoseNet (Kocabas et al. 2018): ResNet-FPN, keypoint + person subnets, Pose Residual Network",
    builders={
        "prn": _prn,
        "multiposenet-r18": _multiposenet(18),
        "multiposenet-r50": _multiposenet(50),
        "multiposenet-r101": _multiposenet(101),
    },
    model_types=(MultiPoseNet,),
    size_multiple=SIZE_MULTIPLE,
    default_input_size=(480, 480),
    info_input_size=(480, 480),
    recipe=RECIPE,
    oracles={"heatmap": _heatmap_oracle, "boxes": _boxes_oracle, "prn": _prn_oracle},
)
