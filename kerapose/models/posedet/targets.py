"""PoseDet's training targets for one augmented crop, as :func:`kerapose.data.pipeline.keypoint_dataset`
takes them (``keypoint_set``, ``input_size``, ``output_shapes``, ``encode(crop)``).

- ``candidates`` ``[A + G, 3K + 1]``: :meth:`kerapose.codecs.posedet.PoseDetCodec.pack` (the
  coarse assignment per candidate, then the crop's people for the OKS-based stages);
- ``heatmaps_p3`` .. ``heatmaps_p6`` ``[h, w, K + 1]``: the codec's Gaussian maps per level packed
  with one loss-weight channel W for :class:`kerapose.losses.MaskedL2`: 0 over crowd regions and
  over people without a labelled keypoint in the crop (their joints are not drawn, so the network
  must not be taught that nothing is there), 1 elsewhere, as MultiPoseNet's and the PAF family's.
"""

from __future__ import annotations

import numpy as np

from kerapose.codecs.posedet import PoseDetCodec
from kerapose.codecs.segmentation import downsample_area, region_mask
from kerapose.skeleton import KeypointSet, get_keypoint_set

__all__ = ["PoseDetTargets"]


class PoseDetTargets:
    """Targets of :attr:`kerapose.models.posedet.PoseDet.training_model`'s outputs for one crop.

    Args:
        keypoint_set: the model's (and the records') keypoint set.
        input_size: (H, W) of the crops.
        strides: the model's pyramid strides (``model.strides``).
        codec_options: :class:`~kerapose.codecs.posedet.PoseDetCodec` arguments (``assign``,
            ``max_people``, ``min_keypoints``, ``heatmap_sigma``, ``size_ranges``).
    """

    def __init__(self, keypoint_set: str | KeypointSet = "coco17", input_size: tuple[int, int] = (512, 512),
                 strides=(8, 16, 32, 64), **codec_options) -> None:
        self.keypoint_set = get_keypoint_set(keypoint_set)
        try:
            h, w = (int(v) for v in input_size)
        except (TypeError, ValueError):
            raise ValueError(f"input_size: expected (H, W), got {input_size!r}") from None
        if h < 1 or w < 1 or (h, w) != tuple(input_size):
            raise ValueError(f"input_size: expected positive integers (H, W), got {input_size!r}")
        self.input_size = (h, w)
        self.codec = PoseDetCodec(self.keypoint_set, strides=strides, **codec_options)

    @classmethod
    def for_model(cls, model, input_size: tuple[int, int], **codec_options) -> "PoseDetTargets":
        """Targets matching a PoseDet model: its keypoint set and its levels."""
        return cls(model.keypoint_set, input_size, strides=model.strides, **codec_options)

    @property
    def output_shapes(self) -> dict:
        k = self.keypoint_set.num_keypoints
        rows = self.codec.num_candidates(self.input_size) + self.codec.max_people
        shapes = {"candidates": (rows, 3 * k + 1)}
        for name, (h, w) in zip(self.codec.heatmap_names, self.codec.grid_sizes(self.input_size)):
            shapes[name] = (h, w, k + 1)
        return shapes

    def encode(self, crop: dict) -> dict:
        """An :func:`kerapose.data.augment.augment` crop -> ``{output name: target}`` (float32)."""
        rec = crop["record"]
        if (int(rec.height), int(rec.width)) != self.input_size:
            raise ValueError(f"crop of image {rec.image_id} is {(rec.height, rec.width)}, targets expect "
                             f"input_size {self.input_size}")
        boxes = np.asarray(rec.boxes, np.float64).reshape(-1, 4)
        box_area = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
        areas = np.asarray(rec.areas, np.float64).reshape(-1)
        # OKS needs an area: an annotation without one (no segmentation) falls back on its box
        areas = np.where(areas > 0, areas, box_area)
        t = self.codec.encode(rec.keypoints, boxes, self.input_size, areas=areas, iscrowd=rec.iscrowd)
        packed = self.codec.pack(t)
        ignored = np.asarray(rec.iscrowd, bool).reshape(-1) | (rec.num_keypoints_labelled == 0)
        region = region_mask(rec, ignored) if ignored.any() else None
        for name, stride in zip(self.codec.heatmap_names, self.codec.strides):
            heat = packed[name]
            weight = (np.ones(heat.shape[:2], np.float32) if region is None
                      else 1.0 - downsample_area(region, stride))
            packed[name] = np.concatenate([heat, weight[..., None]], -1).astype(np.float32)
        packed["candidates"] = packed["candidates"].astype(np.float32)
        return packed
