"""Person-segmentation targets and the loss-ignore (W) mask, at the network's output stride.

Masks come from the COCO polygons / RLE of each annotation through ``pycocotools.mask`` and
are *area-downsampled*: an output cell holds the fraction of its in-image pixels that the
region covers, so cell ``(i, j)`` agrees with :mod:`kerapose.codecs.grid` (it covers pixels
``s*i .. s*i + s - 1``).

* :func:`person_mask`: union of the non-crowd person masks (MultiPoseNet's segmentation
  target).
* :func:`ignore_mask`: the W mask of OpenPose / MultiPoseNet, ``1 - coverage`` of the union
  of crowd regions and of persons with no labelled keypoint: 0 where the loss must not
  penalise the network (people are there but have no keypoint target), 1 elsewhere.
"""

from __future__ import annotations

import numpy as np

from kerapose.codecs.grid import output_size

__all__ = [
    "person_mask",
    "ignore_mask",
    "crowd_ignore_mask",
    "region_mask",
    "downsample_area",
    "SegmentationCodec",
]


def _annotation_rle(segmentation, box, height: int, width: int):
    """One annotation -> a pycocotools RLE (None if it has no region at all)."""
    from pycocotools import mask as mask_utils

    seg = segmentation
    if isinstance(seg, list):
        # Degenerate polygons (fewer than 3 points) carry no area; pycocotools would
        # misread a 4-value one as a box.
        polys = [list(map(float, p)) for p in seg if p is not None and len(p) >= 6]
        if polys:
            return mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
        seg = None
    elif isinstance(seg, dict):
        if "counts" not in seg or "size" not in seg:
            raise ValueError(f"segmentation RLE needs 'counts' and 'size', got keys {sorted(seg)}")
        if list(seg["size"]) != [height, width]:
            raise ValueError(
                f"segmentation RLE size {list(seg['size'])} does not match the image "
                f"({height}, {width})"
            )
        if isinstance(seg["counts"], list):
            return mask_utils.frPyObjects(seg, height, width)
        return seg
    elif seg is not None:
        raise ValueError(f"segmentation: expected polygons (list) or RLE (dict), got {type(seg).__name__}")
    # No segmentation: fall back to the box, the only region the annotation gives.
    x1, y1, x2, y2 = (float(v) for v in box)
    if not (np.isfinite([x1, y1, x2, y2]).all() and x2 > x1 and y2 > y1):
        return None
    return mask_utils.frPyObjects(np.array([[x1, y1, x2 - x1, y2 - y1]], np.float64), height, width)[0]


def region_mask(record, select: np.ndarray) -> np.ndarray:
    """Full-resolution ``[H, W]`` uint8 union of the selected annotations' regions."""
    from pycocotools import mask as mask_utils

    select = np.asarray(select, bool).reshape(-1)
    n = len(record.boxes)
    if select.shape[0] != n:
        raise ValueError(f"select: expected {n} flags (one per annotation), got {select.shape[0]}")
    if len(record.segmentations) != n:
        raise ValueError(
            f"record {record.image_id}: {len(record.segmentations)} segmentations for {n} annotations"
        )
    h, w = int(record.height), int(record.width)
    rles = [
        r
        for i in np.flatnonzero(select)
        if (r := _annotation_rle(record.segmentations[i], record.boxes[i], h, w)) is not None
    ]
    if not rles:
        return np.zeros((h, w), np.uint8)
    return mask_utils.decode(mask_utils.merge(rles, intersect=0)).astype(np.uint8)


def downsample_area(mask: np.ndarray, stride: int) -> np.ndarray:
    """``[H, W]`` mask -> ``[ceil(H/s), ceil(W/s)]`` float32 fraction of each cell's in-image pixels."""
    m = np.asarray(mask, dtype=np.float32)
    if m.ndim != 2:
        raise ValueError(f"mask: expected [H, W], got shape {m.shape}")
    s = int(stride)
    h, w = output_size(m.shape, s)
    pad = ((0, h * s - m.shape[0]), (0, w * s - m.shape[1]))
    total = np.pad(m, pad).reshape(h, s, w, s).sum((1, 3))
    count = np.pad(np.ones_like(m), pad).reshape(h, s, w, s).sum((1, 3))
    return (total / count).astype(np.float32)


def _check_stride(stride) -> int:
    if int(stride) != stride or stride < 1:
        raise ValueError(f"stride must be a positive integer, got {stride!r}")
    return int(stride)


def person_mask(record, stride: int) -> np.ndarray:
    """Union of the non-crowd person masks at the output stride, ``[h, w]`` float32 in [0, 1]."""
    stride = _check_stride(stride)
    select = ~np.asarray(record.iscrowd, bool)
    return downsample_area(region_mask(record, select), stride)


def ignore_mask(record, stride: int) -> np.ndarray:
    """Loss weight W ``[h, w]`` float32: 0 over crowd regions and persons with no labelled keypoint."""
    stride = _check_stride(stride)
    select = np.asarray(record.iscrowd, bool) | (record.num_keypoints_labelled == 0)
    return (1.0 - downsample_area(region_mask(record, select), stride)).astype(np.float32)


def crowd_ignore_mask(record, stride: int) -> np.ndarray:
    """Loss weight ``[h, w]`` float32: 0 over crowd regions only."""
    stride = _check_stride(stride)
    select = np.asarray(record.iscrowd, bool)
    return (1.0 - downsample_area(region_mask(record, select), stride)).astype(np.float32)


class SegmentationCodec:
    """Person-segmentation target and its loss weights at one stride.

    Args:
        stride: output stride.
        weights: ``"ignore"`` (default): :func:`ignore_mask`, the W mask of the whole
            keypoint subnet (crowds and persons without keypoints ignored); ``"crowd"``:
            only crowd regions ignored (persons without keypoints still have a valid mask).
    """

    WEIGHTS = ("ignore", "crowd")

    def __init__(self, stride: int = 4, weights: str = "ignore") -> None:
        self.stride = _check_stride(stride)
        if weights not in self.WEIGHTS:
            raise ValueError(f"weights: expected one of {self.WEIGHTS}, got {weights!r}")
        self.weights = weights

    def get_config(self) -> dict:
        return {"stride": self.stride, "weights": self.weights}

    def encode(self, record) -> tuple[np.ndarray, np.ndarray]:
        """-> ``(mask [h, w], weights [h, w])`` float32."""
        weights = ignore_mask if self.weights == "ignore" else crowd_ignore_mask
        return person_mask(record, self.stride), weights(record, self.stride)

    def decode(
        self,
        logits_or_probs: np.ndarray,
        image_hw: tuple[int, int],
        threshold: float = 0.5,
        from_logits: bool | None = None,
    ) -> np.ndarray:
        """Output ``[h, w]`` (or ``[h, w, 1]``) -> full-resolution ``[H, W]`` bool mask.

        ``from_logits=None`` treats the input as logits when any value lies outside [0, 1].
        Upsampling is bilinear with cell centres at ``s*j + (s-1)/2`` (the grid convention,
        which is also OpenCV's half-pixel mapping).
        """
        import cv2

        p = np.asarray(logits_or_probs, dtype=np.float32)
        if p.ndim == 3 and p.shape[-1] == 1:
            p = p[..., 0]
        if p.ndim != 2:
            raise ValueError(f"segmentation output: expected [h, w] or [h, w, 1], got shape {p.shape}")
        try:
            hh, ww = (int(v) for v in image_hw)
        except (TypeError, ValueError):
            raise ValueError(f"image_hw: expected (height, width), got {image_hw!r}") from None
        expected = output_size((hh, ww), self.stride)
        if p.shape != expected:
            raise ValueError(
                f"segmentation output {p.shape} does not match image {hh}x{ww} at stride "
                f"{self.stride} (expected {expected})"
            )
        if from_logits is None:
            from_logits = bool(p.size) and (p.min() < 0.0 or p.max() > 1.0)
        if from_logits:
            p = 1.0 / (1.0 + np.exp(-p))
        s = self.stride
        up = cv2.resize(p, (p.shape[1] * s, p.shape[0] * s), interpolation=cv2.INTER_LINEAR)
        return up[:hh, :ww] >= threshold
