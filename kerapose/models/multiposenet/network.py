"""MultiPoseNet (Kocabas et al. 2018): keypoint subnet + RetinaNet person subnet + PRN."""

from __future__ import annotations

import keras

from kerapose.backbones.resnet import BACKBONE_LEVELS, resnet_backbone
from kerapose.heads.keypoint_subnet import keypoint_subnet
from kerapose.heads.prn import PRN_INPUT_HW, pose_residual_network
from kerapose.heads.retinanet import NUM_ANCHORS, retinanet_head
from kerapose.layers import SizeCheck
from kerapose.necks.fpn import feature_pyramid
from kerapose.models.multiposenet.constants import (MULTIPOSENET_BACKBONES, PERSON_LEVELS,
                                                    SIZE_MULTIPLE, check_pose_score)
from kerapose.models.multiposenet.end_to_end import multiposenet_end_to_end
from kerapose.models.poses import constructor_kwargs, predict_with_graph
from kerapose.skeleton import get_keypoint_set

__all__ = ["MultiPoseNet"]


@keras.saving.register_keras_serializable(package="kerapose")
class MultiPoseNet(keras.Model):
    """MultiPoseNet as one Keras model.

    Input: ``image`` RGB float 0..255, [B, H, W, 3] with H and W multiples of 32.
    Outputs (a dict):

    - ``heatmaps`` [B, H/4, W/4, K + 1]: K keypoint heatmaps and the person segmentation.
    - ``heatmaps_k2`` .. ``heatmaps_k5``: intermediate supervision, same shape.
    - ``person_logits`` [B, A, 1] and ``person_boxes`` [B, A, 4]: RetinaNet over P3..P7 with
      9 anchors per location (order of :class:`kerapose.codecs.boxes.BoxCodec`).

    The Pose Residual Network is a separate model, ``model.prn`` ([B, 56, 36, K] in and out),
    because it runs on RoIs cropped from the heatmaps; it is saved with the model.

    Args:
        backbone: ``"resnet18"``, ``"resnet50"`` or ``"resnet101"``.
        keypoint_set: keypoint set name (``kerapose.skeleton``); K comes from it.
        num_keypoints: optional consistency check against the keypoint set.
        input_shape: (H, W, 3); H and W may be None.
        backbone_weights: path of a keras.applications-format weight file (ImageNet).
        freeze_backbone: make the backbone non-trainable (the paper's person-subnet stage).
        fpn_size: channels of both pyramids.
        keypoint_head_size, keypoint_fuse_size: widths of the keypoint subnet (paper: 128, 512).
        backbone_width: the backbone's channel multiplier (1.0, the standard ResNet, is the only
            width ImageNet weights fit; 0.5 halves every layer for about half the step time).
        prn_hidden: hidden width of the PRN.
        prn_residual_scale: weight of the PRN's residual (its input heatmaps) in its logits;
            1 is the paper's (see :func:`kerapose.heads.prn.pose_residual_network`).
        pose_score: how :meth:`end_to_end` (and so export, serving and :meth:`predict_poses`)
            scores a pose unless told otherwise: ``"box"`` (the paper) or ``"box_keypoints"``
            (box score x mean keypoint score); see
            :class:`kerapose.models.multiposenet.end_to_end.MultiPoseNetDecoder`.
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        keypoint_set: str = "coco17",
        num_keypoints: int | None = None,
        input_shape: tuple = (None, None, 3),
        backbone_weights: str | None = None,
        freeze_backbone: bool = False,
        fpn_size: int = 256,
        backbone_width: float = 1.0,
        keypoint_head_size: int = 128,
        keypoint_fuse_size: int = 512,
        prn_hidden: int = 1024,
        prn_residual_scale: float = 1.0,
        pose_score: str = "box",
        name: str = "multiposenet",
        **kwargs,
    ):
        if backbone not in MULTIPOSENET_BACKBONES:
            raise ValueError(
                f"unknown MultiPoseNet backbone {backbone!r}; accepted: {', '.join(MULTIPOSENET_BACKBONES)}"
            )
        check_pose_score(pose_score)
        kps = get_keypoint_set(keypoint_set)
        if num_keypoints is not None and num_keypoints != kps.num_keypoints:
            raise ValueError(
                f"num_keypoints={num_keypoints} does not match keypoint set {kps.name!r} "
                f"({kps.num_keypoints} keypoints)"
            )
        input_shape = tuple(input_shape)
        SizeCheck.validate_shape(input_shape, SIZE_MULTIPLE)
        k = kps.num_keypoints

        image = keras.Input(shape=input_shape, name="image")
        checked = SizeCheck(SIZE_MULTIPLE, name="size_check")(image)
        bb = resnet_backbone(MULTIPOSENET_BACKBONES[backbone], input_shape=input_shape, weights=backbone_weights,
                             name="backbone", width=backbone_width)
        feats = bb(checked)
        channels = {lvl: int(bb.output[lvl].shape[-1]) for lvl in BACKBONE_LEVELS}
        kfpn = feature_pyramid(channels, levels=(2, 3, 4, 5), feature_size=fpn_size, prefix="K", name="keypoint_fpn")
        pfpn = feature_pyramid(channels, levels=(3, 4, 5), extra_levels=2, feature_size=fpn_size, prefix="P",
                               name="person_fpn")
        ksub = keypoint_subnet(k + 1, levels=(2, 3, 4, 5), feature_size=fpn_size, head_size=keypoint_head_size,
                               fuse_size=keypoint_fuse_size, name="keypoint_subnet")
        psub = retinanet_head(PERSON_LEVELS, num_classes=1, num_anchors=NUM_ANCHORS, feature_size=fpn_size,
                              name="person_subnet")
        kout = ksub(kfpn({c: feats[c] for c in ("C2", "C3", "C4", "C5")}))
        pout = psub(pfpn({c: feats[c] for c in ("C3", "C4", "C5")}))
        # Named float32 output layers: stable names for losses and export, and float32 outputs
        # under a mixed-precision policy.
        outputs = {key: keras.layers.Activation("linear", dtype="float32", name=key)(t)
                   for key, t in {**kout, **pout}.items()}
        super().__init__(inputs=image, outputs=outputs, name=name, **kwargs)

        self.backbone_name = backbone
        self.keypoint_set = kps
        self.input_shape_config = input_shape
        self.fpn_size = fpn_size
        self.backbone_width = float(backbone_width)
        self.keypoint_head_size = keypoint_head_size
        self.keypoint_fuse_size = keypoint_fuse_size
        self.prn_hidden = prn_hidden
        self.prn_residual_scale = float(prn_residual_scale)
        self.pose_score = pose_score
        self.backbone = bb
        self.prn = pose_residual_network(k, PRN_INPUT_HW, hidden=prn_hidden,
                                         residual_scale=self.prn_residual_scale, name="prn")
        self.freeze_backbone(freeze_backbone)

    @property
    def size_multiple(self) -> int:
        """Input sides must be multiples of this (C5's stride: every FPN upsampling lands exactly)."""
        return SIZE_MULTIPLE

    @property
    def num_keypoints(self) -> int:
        return self.keypoint_set.num_keypoints

    @property
    def keypoint_model(self) -> keras.Model:
        """image -> heatmaps (+ intermediate outputs): the paper's first training stage."""
        return keras.Model(self.input, {k: v for k, v in self.output.items() if k.startswith("heatmaps")},
                           name=f"{self.name}_keypoints")

    @property
    def person_model(self) -> keras.Model:
        """image -> person_logits, person_boxes: the paper's second training stage."""
        return keras.Model(self.input, {k: self.output[k] for k in ("person_logits", "person_boxes")},
                           name=f"{self.name}_persons")

    def end_to_end(self, input_size: tuple[int, int] = (480, 480), max_people: int = 20,
                   score_threshold: float = 0.3, iou_threshold: float = 0.5, flip_test: bool = False,
                   scales: tuple[float, ...] = (), pose_score: str | None = None) -> keras.Model:
        """The end-to-end model (uint8 image of any size -> people) sharing this model's weights.

        See :func:`kerapose.models.multiposenet.end_to_end.multiposenet_end_to_end` (``pose_score=None``:
        the model's own).
        """
        return multiposenet_end_to_end(self, input_size, max_people=max_people,
                                       score_threshold=score_threshold, iou_threshold=iou_threshold,
                                       flip_test=flip_test, scales=scales, pose_score=pose_score)

    def predict_poses(self, images, input_size: tuple[int, int] = (480, 480), max_people: int = 20,
                      score_threshold: float = 0.3, iou_threshold: float = 0.5,
                      flip_test: bool = False, pose_score: str | None = None) -> list[dict]:
        """Poses for a list of RGB uint8 images ([H, W, 3], any sizes).

        Returns one dict per image: ``keypoints`` [N, K, 3] (x, y, score), ``scores`` [N] and
        ``boxes`` [N, 4] in that image's pixels (N = detected people, unpadded). ``flip_test``
        averages the heatmaps with those of the mirrored image (left/right channels swapped);
        ``pose_score``: see :meth:`end_to_end` (None: the model's own).
        """
        key = (tuple(input_size), max_people, score_threshold, iou_threshold, bool(flip_test),
               pose_score or self.pose_score)

        return predict_with_graph(self.__dict__.setdefault("_end_to_end_cache", {}), key,
                                  lambda: self.end_to_end(*key[:5], pose_score=key[5]), images)

    def freeze_backbone(self, frozen: bool = True) -> None:
        self.backbone.trainable = not frozen
        self._backbone_frozen = bool(frozen)

    def get_config(self) -> dict:
        return {
            "backbone": self.backbone_name,
            "keypoint_set": self.keypoint_set.name,
            "input_shape": list(self.input_shape_config),
            "freeze_backbone": self._backbone_frozen,
            "fpn_size": self.fpn_size,
            "backbone_width": self.backbone_width,
            "keypoint_head_size": self.keypoint_head_size,
            "keypoint_fuse_size": self.keypoint_fuse_size,
            "prn_hidden": self.prn_hidden,
            "prn_residual_scale": self.prn_residual_scale,
            "pose_score": self.pose_score,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config: dict) -> "MultiPoseNet":
        config = constructor_kwargs(config)
        return cls(**config)
