"""The PoseDet family's declaration (:class:`kerapose.models.family.ModelFamily`)."""

from __future__ import annotations

from typing import Callable

from kerapose.codecs.posedet import DEFAULT_STRIDES
from kerapose.models.family import ModelFamily
from kerapose.models.posedet.network import DEFAULT_INPUT_SIZE, POSEDET_CONFIGS, SIZE_MULTIPLE, PoseDet
from kerapose.models.posedet.recipe import RECIPE

__all__ = ["FAMILY"]


def _posedet(name: str) -> Callable:
    def build(input_shape=(None, None, 3), **kw):
        return PoseDet(input_shape=input_shape, name=name.replace("-", "_"), **{**POSEDET_CONFIGS[name], **kw})

    return build


def _oracle(assign: str) -> Callable:
    def make(keypoint_set: str, stride: int | None):
        from kerapose.codecs.posedet import PoseDetCodec, oracle_keypoints

        # --stride names the finest level; the pyramid doubles it per level, as the network's
        levels = range(len(DEFAULT_STRIDES))
        strides = DEFAULT_STRIDES if stride is None else tuple(int(stride) * 2 ** i for i in levels)
        codec = PoseDetCodec(keypoint_set, strides=strides, assign=assign)
        return lambda r: ("keypoints", *oracle_keypoints(codec, r))

    return make


FAMILY = ModelFamily(
    name="posedet",
    summary="PoseDet (Tian et al. 2021): FPN, dense pose candidates, keypoint-aware pose embedding, OKS-NMS",
    builders={name: _posedet(name) for name in POSEDET_CONFIGS},
    model_types=(PoseDet,),
    size_multiple=SIZE_MULTIPLE,
    default_input_size=DEFAULT_INPUT_SIZE,
    info_input_size=DEFAULT_INPUT_SIZE,
    recipe=RECIPE,
    # the paper's centroid assignment, and its ablation (box centre)
    oracles={"posedet": _oracle("centroid"), "posedet-box-center": _oracle("box_center")},
)
