"""PoseDet (Tian et al. 2021): multi-person poses by detection, with keypoint-aware pose embeddings.

Backbone (ResNet or MobileNetV2) -> FPN P3..P6 (strides 8..64) -> one head shared by every level
(:func:`kerapose.heads.posedet.posedet_head`) -> every cell of every level is a pose candidate.
The network's outputs are concatenated over the levels (P3 first, row-major within a level: the
candidate order of :class:`kerapose.codecs.posedet.PoseDetCodec`), with poses in input pixels.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from kerapose.backbones.mobilenetv2 import FullExtent, mobilenetv2_backbone
from kerapose.backbones.resnet import resnet_backbone
from kerapose.codecs.grid import cell_to_pixel
from kerapose.codecs.posedet import level_names
from kerapose.heads.posedet import HEAD_NORMS, posedet_head
from kerapose.layers import SizeCheck
from kerapose.necks.fpn import feature_pyramid
from kerapose.skeleton import get_keypoint_set
from kerapose.models.poses import constructor_kwargs

__all__ = ["PoseDet", "POSEDET_BACKBONES", "POSEDET_CONFIGS", "SIZE_MULTIPLE", "DEFAULT_INPUT_SIZE",
           "CandidatePoses"]

POSEDET_BACKBONES = ("resnet18", "resnet50", "resnet101", "mobilenetv2")
SIZE_MULTIPLE = 32  # the FPN's top-down path needs H, W multiples of C5's stride; P6 is a SAME conv
DEFAULT_INPUT_SIZE = (512, 512)  # the paper's training crops and its fast setting's test size
# Named settings for the family's builders (``PoseDet(**POSEDET_CONFIGS[name])``); GMACs at
# 512x512 in docs/posedet.md. The head widths are the authors' DLA-34 setting (128).
POSEDET_CONFIGS: dict[str, dict] = {
    "posedet-r50": {"backbone": "resnet50"},
    "posedet-r18": {"backbone": "resnet18"},
    "posedet-r101": {"backbone": "resnet101"},
    # the light setting: MobileNetV2 and 64-channel FPN / head (3.9 of 4.1 GMACs at inference)
    "posedet-mnv2": {"backbone": "mobilenetv2", "fpn_size": 64, "head_size": 64, "embed_size": 64},
    # narrow everything, for CPU tests and smoke runs
    "posedet-tiny": {"backbone": "resnet18", "backbone_width": 0.25, "fpn_size": 16, "head_size": 16,
                     "embed_size": 16},
}
_MAX_BACKBONE_LEVEL = 5  # C5; levels above it are extra stride-2 convolutions


@keras.saving.register_keras_serializable(package="kerapose")
class CandidatePoses(keras.layers.Layer):
    """One level's offsets ``[B, h, w, 2K]`` (strides) -> poses ``[B, h * w, K, 2]`` in input pixels.

    Candidate (i, j) sits at the cell centre of :mod:`kerapose.codecs.grid`; joint k is at
    ``cell_to_pixel(j + dx_k), cell_to_pixel(i + dy_k)``. With a static grid size (a fixed
    input size) the candidate locations are constants in the graph.
    """

    keeps_float = True  # int8 export keeps it float32: candidate poses are pixel coordinates

    def __init__(self, stride: int, num_keypoints: int, **kwargs):
        super().__init__(**kwargs)
        if int(stride) != stride or stride < 1:
            raise ValueError(f"stride: expected a positive integer, got {stride!r}")
        self.stride = int(stride)
        self.num_keypoints = int(num_keypoints)

    def call(self, offsets):
        offsets = tf.cast(offsets, tf.float32)
        h, w = offsets.shape[1], offsets.shape[2]
        if isinstance(h, int) and isinstance(w, int):
            ii, jj = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
            cells = tf.constant(np.stack([jj, ii], -1).reshape(1, h * w, 1, 2), tf.float32)
        else:
            shape = tf.shape(offsets)
            h, w = shape[1], shape[2]
            cols = tf.cast(tf.range(w), tf.float32)
            rows = tf.cast(tf.range(h), tf.float32)
            grid = tf.stack([tf.broadcast_to(cols[None, :], [h, w]), tf.broadcast_to(rows[:, None], [h, w])], -1)
            cells = tf.reshape(grid, [1, -1, 1, 2])
        flat = tf.reshape(offsets, [tf.shape(offsets)[0], -1, self.num_keypoints, 2])
        # cell -> pixel is affine: pixel = cell * stride + cell_to_pixel(0)
        return (cells + flat) * float(self.stride) + float(cell_to_pixel(0.0, self.stride))

    def compute_output_shape(self, offsets_shape):
        b, h, w = offsets_shape[:3]
        return (b, None if h is None or w is None else h * w, self.num_keypoints, 2)

    def get_config(self) -> dict:
        return {**super().get_config(), "stride": self.stride, "num_keypoints": self.num_keypoints}


def _check_levels(levels) -> tuple[int, ...]:
    try:
        levels = tuple(int(v) for v in levels)
    except (TypeError, ValueError):
        raise ValueError(f"levels: expected consecutive pyramid levels such as (3, 4, 5, 6), got {levels!r}") from None
    if (not levels or any(b - a != 1 for a, b in zip(levels, levels[1:])) or levels[0] < 2
            or levels[0] > _MAX_BACKBONE_LEVEL):
        raise ValueError(f"levels: expected consecutive levels starting at 2..5 (C2..C5), e.g. (3, 4, 5, 6); "
                         f"got {levels!r}")
    return levels


@keras.saving.register_keras_serializable(package="kerapose")
class PoseDet(keras.Model):
    """PoseDet as one Keras model.

    Input: ``image`` RGB float 0..255, [B, H, W, 3], H and W multiples of 32. Outputs (a dict,
    A candidates = the cells of all levels, P3 first, row-major):

    - ``poses`` [B, A, K, 2]: each candidate's refined pose (x, y input pixels);
    - ``coarse_poses`` [B, A, K, 2]: its coarse pose (the bypass branch);
    - ``logits`` [B, A, 1]: its classification logit (sigmoid: the pose's score);
    - ``heatmaps_p3`` .. ``heatmaps_p6`` [B, H/s, W/s, K]: intermediate supervision of each
      FPN level (training only; the end-to-end graph does not use them).

    :attr:`training_model` packs these for :mod:`kerapose.models.posedet.losses`.

    Args:
        backbone: ``"resnet18"``, ``"resnet50"``, ``"resnet101"`` or ``"mobilenetv2"``.
        keypoint_set: keypoint set name (``kerapose.skeleton``); K comes from it.
        num_keypoints: optional consistency check against the keypoint set.
        input_shape: (H, W, 3); H and W may be None.
        backbone_weights: path of a keras.applications-format ImageNet weight file.
        backbone_width: ResNet channel multiplier / MobileNetV2 ``alpha``.
        levels: FPN levels (strides ``2**l``); levels above 5 are extra stride-2 convs (P6 on C5,
            as the authors' ``add_extra_convs="on_input"``).
        fpn_size, head_size, embed_size: widths of the FPN, the head's 3x3 convs and the pose
            embeddings (the authors' DLA-34 setting: 128 each).
        coarse_convs, refine_convs, cls_convs, heatmap_convs: 3x3 convs per head branch.
        norm: the head's normalisation (``"group"``, ``"batch"``, ``"none"``).
        gradient_scale: gradient from the pose embeddings into the coarse offsets (0.1).
        prior_probability: every candidate's initial score.
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        keypoint_set: str = "coco17",
        num_keypoints: int | None = None,
        input_shape: tuple = (None, None, 3),
        backbone_weights: str | None = None,
        backbone_width: float = 1.0,
        levels: tuple[int, ...] = (3, 4, 5, 6),
        fpn_size: int = 128,
        head_size: int = 128,
        embed_size: int = 128,
        coarse_convs: int = 3,
        refine_convs: int = 2,
        cls_convs: int = 2,
        heatmap_convs: int = 1,
        norm: str = "group",
        gradient_scale: float = 0.1,
        prior_probability: float = 0.01,
        name: str = "posedet",
        **kwargs,
    ):
        if backbone not in POSEDET_BACKBONES:
            raise ValueError(f"unknown PoseDet backbone {backbone!r}; accepted: {', '.join(POSEDET_BACKBONES)}")
        if norm not in HEAD_NORMS:
            raise ValueError(f"norm: expected one of {', '.join(HEAD_NORMS)}, got {norm!r}")
        kps = get_keypoint_set(keypoint_set)
        if num_keypoints is not None and num_keypoints != kps.num_keypoints:
            raise ValueError(f"num_keypoints={num_keypoints} does not match keypoint set {kps.name!r} "
                             f"({kps.num_keypoints} keypoints)")
        for arg, v in (("fpn_size", fpn_size), ("head_size", head_size), ("embed_size", embed_size)):
            if int(v) != v or v < 1:
                raise ValueError(f"{arg}: expected a positive integer, got {v!r}")
        levels = _check_levels(levels)
        input_shape = tuple(input_shape)
        SizeCheck.validate_shape(input_shape, SIZE_MULTIPLE)
        k = kps.num_keypoints

        image = keras.Input(shape=input_shape, name="image")
        checked = SizeCheck(SIZE_MULTIPLE, name="size_check")(image)
        if backbone == "mobilenetv2":
            bb = mobilenetv2_backbone(alpha=backbone_width, input_shape=input_shape, name="backbone")
            if backbone_weights is not None:
                from kerapose.weights.applications import load_applications_weights

                load_applications_weights(bb, backbone_weights, allow_missing=True)
            feats = bb([checked, FullExtent(name="full_extent")(checked)])
        else:
            bb = resnet_backbone(int(backbone[len("resnet"):]), input_shape=input_shape, weights=backbone_weights,
                                 name="backbone", width=backbone_width)
            feats = bb(checked)
        lateral = tuple(lv for lv in levels if lv <= _MAX_BACKBONE_LEVEL)
        lateral = tuple(range(lateral[0], _MAX_BACKBONE_LEVEL + 1))  # the top-down path starts at C5
        channels = {f"C{lv}": int(bb.output[f"C{lv}"].shape[-1]) for lv in lateral}
        fpn = feature_pyramid(channels, levels=lateral, extra_levels=max(0, levels[-1] - _MAX_BACKBONE_LEVEL),
                              feature_size=fpn_size, prefix="P", name="fpn")
        pyramid = fpn({c: feats[c] for c in channels})
        head = posedet_head(k, fpn_size, feat_channels=head_size, embed_channels=embed_size,
                            coarse_convs=coarse_convs, refine_convs=refine_convs, cls_convs=cls_convs,
                            heatmap_convs=heatmap_convs, norm=norm, gradient_scale=gradient_scale,
                            prior_probability=prior_probability, name="head")
        strides = tuple(2 ** lv for lv in levels)
        coarse, refined, logits, heatmaps = [], [], [], {}
        for lv, s, hm_name in zip(levels, strides, level_names(strides)):
            out = head(pyramid[f"P{lv}"])  # one head, shared by every level
            coarse.append(CandidatePoses(s, k, name=f"coarse_poses_p{lv}")(out["coarse"]))
            refined.append(CandidatePoses(s, k, name=f"poses_p{lv}")(out["refined"]))
            logits.append(layers.Reshape((-1, 1), name=f"logits_p{lv}")(out["logits"]))
            heatmaps[hm_name] = out["heatmaps"]

        def cat(ts, name):
            return ts[0] if len(ts) == 1 else layers.Concatenate(axis=1, name=f"{name}_concat")(ts)

        tensors = {"poses": cat(refined, "poses"), "coarse_poses": cat(coarse, "coarse_poses"),
                   "logits": cat(logits, "logits"), **heatmaps}
        # named float32 outputs: stable names for losses and export, float32 under mixed precision
        outputs = {key: layers.Activation("linear", dtype="float32", name=key)(t) for key, t in tensors.items()}
        super().__init__(inputs=image, outputs=outputs, name=name, **kwargs)

        self.backbone_name = backbone
        self.keypoint_set = kps
        self.input_shape_config = input_shape
        self.backbone_width = float(backbone_width)
        self.levels = levels
        self.strides = strides
        self.fpn_size = int(fpn_size)
        self.head_size = int(head_size)
        self.embed_size = int(embed_size)
        self.head_convs = {"coarse_convs": int(coarse_convs), "refine_convs": int(refine_convs),
                           "cls_convs": int(cls_convs), "heatmap_convs": int(heatmap_convs)}
        self.norm = norm
        self.gradient_scale = float(gradient_scale)
        self.prior_probability = float(prior_probability)
        self.backbone = bb

    @property
    def num_keypoints(self) -> int:
        return self.keypoint_set.num_keypoints

    @property
    def size_multiple(self) -> int:
        """H and W of the input must be multiples of this."""
        return SIZE_MULTIPLE

    @property
    def heatmap_names(self) -> tuple[str, ...]:
        return level_names(self.strides)

    @property
    def training_model(self) -> keras.Model:
        """image -> ``candidates`` [B, A, 4K + 1] and the ``heatmaps_p*``: what the losses of
        :mod:`kerapose.models.posedet.losses` take. A candidate's row is its coarse pose (2K:
        x0, y0, x1, ...), its refined pose (2K) and its logit, so that the refinement and
        classification losses see the coarse pose they assign by. Shares this model's weights."""
        cache = self.__dict__.setdefault("_training_model_cache", {})
        if "model" not in cache:
            k2 = 2 * self.num_keypoints
            out = self.output
            parts = [layers.Reshape((-1, k2), name="pack_coarse")(out["coarse_poses"]),
                     layers.Reshape((-1, k2), name="pack_poses")(out["poses"]), out["logits"]]
            packed = layers.Concatenate(axis=-1, dtype="float32", name="candidates")(parts)
            cache["model"] = keras.Model(self.input, {"candidates": packed,
                                                      **{n: out[n] for n in self.heatmap_names}},
                                         name=f"{self.name}_training")
        return cache["model"]

    def end_to_end(self, input_size: tuple[int, int] = DEFAULT_INPUT_SIZE, max_people: int = 20,
                   score_threshold: float = 0.3, nms: str = "oks", oks_threshold: float | None = None,
                   iou_threshold: float = 0.5, pre_nms_top_k: int = 100) -> keras.Model:
        """The end-to-end model (uint8 image of any size -> people) sharing this model's weights.

        See :func:`kerapose.models.posedet.decoder.posedet_end_to_end`.
        """
        from kerapose.models.posedet.decoder import posedet_end_to_end

        return posedet_end_to_end(self, input_size, max_people=max_people, score_threshold=score_threshold,
                                  nms=nms, oks_threshold=oks_threshold, iou_threshold=iou_threshold,
                                  pre_nms_top_k=pre_nms_top_k)

    def predict_poses(self, images, input_size: tuple[int, int] = DEFAULT_INPUT_SIZE, max_people: int = 20,
                      score_threshold: float = 0.3, nms: str = "oks", oks_threshold: float | None = None,
                      iou_threshold: float = 0.5, pre_nms_top_k: int = 100) -> list[dict]:
        """Poses for a list of RGB uint8 images ([H, W, 3], any sizes): one dict per image with
        ``keypoints`` [N, K, 3] (x, y, score), ``scores`` [N], ``boxes`` [N, 4] in its pixels."""
        from kerapose.models.poses import predict_with_graph

        key = (tuple(int(v) for v in input_size), int(max_people), float(score_threshold), nms, oks_threshold,
               float(iou_threshold), int(pre_nms_top_k))
        return predict_with_graph(self.__dict__.setdefault("_end_to_end_cache", {}), key,
                                  lambda: self.end_to_end(*key), images)

    def get_config(self) -> dict:
        return {
            "backbone": self.backbone_name,
            "keypoint_set": self.keypoint_set.name,
            "input_shape": list(self.input_shape_config),
            "backbone_width": self.backbone_width,
            "levels": list(self.levels),
            "fpn_size": self.fpn_size,
            "head_size": self.head_size,
            "embed_size": self.embed_size,
            **self.head_convs,
            "norm": self.norm,
            "gradient_scale": self.gradient_scale,
            "prior_probability": self.prior_probability,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config: dict) -> "PoseDet":
        config = constructor_kwargs(config)
        config["levels"] = tuple(config.get("levels", (3, 4, 5, 6)))
        return cls(**config)
