"""COCO-format keypoint datasets through pycocotools.

A dataset root has the COCO layout::

    ROOT/annotations/person_keypoints_SPLIT.json
    ROOT/SPLIT/<file_name of each image>

:class:`CocoKeypoints` turns it into per-image :class:`ImageRecord` objects holding the
kerapose data contract (keypoints ``[N, K, 3]`` in pixels, boxes ``[N, 4]`` as x1, y1, x2, y2).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from dataclasses import dataclass, field

import numpy as np

from kerapose.skeleton import COCO17, KeypointSet, get_keypoint_set

__all__ = ["ImageRecord", "CocoKeypoints", "annotation_path", "load_coco"]


@dataclass
class ImageRecord:
    """One image and its person annotations (crowd regions included, flagged by ``iscrowd``)."""

    image_id: int
    file_name: str
    path: str
    height: int
    width: int
    keypoints: np.ndarray  # [N, K, 3] float32 (x, y, v)
    boxes: np.ndarray  # [N, 4] float32 (x1, y1, x2, y2)
    iscrowd: np.ndarray  # [N] bool
    areas: np.ndarray  # [N] float32
    ann_ids: np.ndarray  # [N] int64
    segmentations: list = field(default_factory=list)  # raw COCO polygons / RLE per annotation

    @property
    def num_keypoints_labelled(self) -> np.ndarray:
        return (self.keypoints[..., 2] > 0).sum(-1)


def annotation_path(root: str, split: str) -> str:
    return os.path.join(root, "annotations", f"person_keypoints_{split}.json")


def load_coco(ann_file: str):
    """Load an annotation file with pycocotools, quietly, with a clear error if it is absent."""
    from pycocotools.coco import COCO

    if not os.path.isfile(ann_file):
        raise FileNotFoundError(f"COCO annotation file not found: {ann_file}")
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            return COCO(ann_file)
        except json.JSONDecodeError as e:
            raise ValueError(f"{ann_file}: not valid JSON ({e})") from None


class CocoKeypoints:
    """Person keypoint annotations of one split of a COCO-layout dataset.

    Args:
        root: dataset root (see module docstring).
        split: split name, e.g. ``"val2017"``.
        keypoint_set: keypoint set of the annotations (COCO-17 by default).
        category_id: the person category; by default the first category of the file.
        ann_file: explicit annotation path (overrides root/split for the JSON).
    """

    def __init__(
        self,
        root: str,
        split: str,
        keypoint_set: str | KeypointSet = COCO17,
        category_id: int | None = None,
        ann_file: str | None = None,
    ) -> None:
        self.root = root
        self.split = split
        self.ann_file = ann_file or annotation_path(root, split)
        self.image_dir = os.path.join(root, split)
        self.keypoint_set = get_keypoint_set(keypoint_set)
        self.coco = load_coco(self.ann_file)
        cats = self.coco.loadCats(self.coco.getCatIds())
        if not cats:
            raise ValueError(f"{self.ann_file}: no categories")
        self.category_id = category_id if category_id is not None else cats[0]["id"]
        cat = self.coco.loadCats([self.category_id])[0]
        names = cat.get("keypoints")
        k = self.keypoint_set.num_keypoints
        if names is not None and len(names) != k:
            raise ValueError(
                f"{self.ann_file}: category {self.category_id} has {len(names)} keypoints, "
                f"keypoint set {self.keypoint_set.name!r} expects {k}"
            )
        self.image_ids = sorted(self.coco.getImgIds())
        self.skipped_annotations = 0

    def restrict(self, image_ids) -> "CocoKeypoints":
        """Keep only ``image_ids`` (in that order), e.g. a recipe's ``data.image_ids``; ``None``
        keeps every image. An id that is not in the split is a ``ValueError`` naming it."""
        if image_ids is None:
            return self
        ids = [int(i) for i in image_ids]
        missing = sorted(set(ids) - set(self.image_ids))
        if missing:
            raise ValueError(f"data.image_ids: {missing[:5]} not in split {self.split!r} ({self.ann_file})")
        self.image_ids = ids
        return self

    def __len__(self) -> int:
        return len(self.image_ids)

    def __iter__(self):
        for image_id in self.image_ids:
            yield self.record(image_id)

    def record(self, image_id: int) -> ImageRecord:
        """The :class:`ImageRecord` of one image. Malformed annotations are skipped and counted."""
        info = self.coco.loadImgs([image_id])[0]
        ann_ids = self.coco.getAnnIds(imgIds=[image_id], catIds=[self.category_id], iscrowd=None)
        k = self.keypoint_set.num_keypoints
        kps, boxes, crowd, areas, ids, segs = [], [], [], [], [], []
        for ann in self.coco.loadAnns(ann_ids):
            raw = ann.get("keypoints") or [0.0] * (3 * k)
            bbox = ann.get("bbox")
            if len(raw) != 3 * k or bbox is None or len(bbox) != 4:
                self.skipped_annotations += 1
                continue
            kp = np.asarray(raw, dtype=np.float32).reshape(k, 3)
            if not np.all(np.isfinite(kp)) or not np.all(np.isfinite(bbox)):
                self.skipped_annotations += 1
                continue
            x, y, w, h = (float(v) for v in bbox)
            kps.append(kp)
            boxes.append((x, y, x + max(w, 0.0), y + max(h, 0.0)))
            crowd.append(bool(ann.get("iscrowd", 0)))
            areas.append(float(ann.get("area", w * h)))
            ids.append(int(ann["id"]))
            segs.append(ann.get("segmentation"))
        return ImageRecord(
            image_id=int(image_id),
            file_name=info["file_name"],
            path=os.path.join(self.image_dir, info["file_name"]),
            height=int(info["height"]),
            width=int(info["width"]),
            keypoints=np.asarray(kps, np.float32).reshape(-1, k, 3),
            boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
            iscrowd=np.asarray(crowd, bool),
            areas=np.asarray(areas, np.float32),
            ann_ids=np.asarray(ids, np.int64),
            segmentations=segs,
        )
