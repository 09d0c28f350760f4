"""The StrongPose family's declaration (:class:`kerapose.models.family.ModelFamily`)."""

from __future__ import annotations

from typing import Callable

from kerapose.models.family import ModelFamily
from kerapose.models.strongpose import BUILDERS
from kerapose.models.strongpose.network import DEFAULT_INPUT_SIZE, StrongPose
from kerapose.models.strongpose.recipe import RECIPE

__all__ = ["FAMILY"]

# The built-in names run at output stride 16 (the paper's training stride): inputs must be
# multiples of 16 to keep the backbone and map grids aligned (StrongPose.size_multiple).
SIZE_MULTIPLE = 16


def _oracle(edge_hops: int) -> Callable:
    def make(keypoint_set: str, stride: int | None):
        from kerapose.codecs.strongpose import StrongPoseCodec, oracle_counts, oracle_keypoints

        codec = StrongPoseCodec(keypoint_set, stride=stride or 8, edge_hops=edge_hops)

        def oracle(record):
            keypoints, scores = oracle_keypoints(codec, record)
            return "keypoints", keypoints, scores, oracle_counts(codec, record, keypoints)

        return oracle

    return make


FAMILY = ModelFamily(
    name="strongpose",
    summary="StrongPose (Ahmad and Yoon): atrous ResNet, strong keypoint heat maps + offsets, body heat map, "
            "greedy pose plotting",
    builders=dict(BUILDERS),
    model_types=(StrongPose,),
    size_multiple=SIZE_MULTIPLE,
    default_input_size=DEFAULT_INPUT_SIZE,  # the paper's 401 x 401 rounded to a multiple of 16
    info_input_size=DEFAULT_INPUT_SIZE,  # `kerapose info NAME --input-size 401 401` gives the paper's size
    recipe=RECIPE,
    # the default mid-range edges (limbs + two-limb pairs), and the limbs alone (PersonLab-like)
    oracles={"strongpose": _oracle(2), "strongpose-limbs": _oracle(1)},
)
