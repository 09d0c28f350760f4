"""Person masks and ignore (W) masks against pycocotools' annToMask, downsampled independently."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from kerapose.codecs.grid import output_size
from kerapose.codecs.segmentation import SegmentationCodec, ignore_mask, person_mask, region_mask


def _cell_means(mask: np.ndarray, stride: int) -> np.ndarray:
    """Independent area downsampling: an explicit loop over output cells."""
    h, w = output_size(mask.shape, stride)
    out = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            out[i, j] = mask[i * stride : (i + 1) * stride, j * stride : (j + 1) * stride].mean()
    return out


def _ann_union(coco, image_id: int, keep) -> np.ndarray:
    info = coco.loadImgs([image_id])[0]
    out = np.zeros((info["height"], info["width"]), np.uint8)
    for ann in coco.loadAnns(coco.getAnnIds(imgIds=[image_id], iscrowd=None)):
        if keep(ann):
            out |= coco.annToMask(ann).astype(np.uint8)
    return out


@pytest.fixture(scope="module")
def crowd_record(coco_train):
    """A train image with a crowd region and several people (some without keypoints)."""
    for record in coco_train:
        if record.iscrowd.any() and (record.num_keypoints_labelled == 0).any() and (record.num_keypoints_labelled > 0).any():
            return record
    pytest.fail("coco-mini train2017 should hold an image with a crowd annotation")


def _strip(record, keep: np.ndarray):
    keep = np.asarray(keep, bool)
    return dataclasses.replace(
        record,
        keypoints=record.keypoints[keep],
        boxes=record.boxes[keep],
        iscrowd=record.iscrowd[keep],
        areas=record.areas[keep],
        ann_ids=record.ann_ids[keep],
        segmentations=[s for s, k in zip(record.segmentations, keep) if k],
    )


@pytest.mark.parametrize("stride", [4, 8])
def test_person_mask_matches_ann_to_mask(coco_val, stride):
    records = [r for r in coco_val if len(r.boxes) >= 2][:2]
    assert records
    for record in records:
        ref = _cell_means(_ann_union(coco_val.coco, record.image_id, lambda a: not a["iscrowd"]), stride)
        got = person_mask(record, stride)
        assert got.shape == output_size((record.height, record.width), stride) and got.dtype == np.float32
        np.testing.assert_allclose(got, ref, atol=1e-6)
        assert got.max() > 0.5 and 0 < got.mean() < 1


def test_ignore_mask_crowd_and_unlabelled_people(coco_train, crowd_record):
    r = crowd_record
    coco = coco_train.coco
    ref = 1.0 - _cell_means(
        _ann_union(coco, r.image_id, lambda a: a["iscrowd"] or a["num_keypoints"] == 0), 4
    )
    got = ignore_mask(r, 4)
    np.testing.assert_allclose(got, ref, atol=1e-6)
    # Inside the crowd region W is 0; on a labelled person (away from the others) it is 1.
    crowd = _cell_means(_ann_union(coco, r.image_id, lambda a: a["iscrowd"]), 4)
    assert (got[crowd == 1] == 0).all() and (crowd == 1).any()
    # The segmentation target does not include the crowd region.
    pm = person_mask(r, 4)
    persons = _cell_means(_ann_union(coco, r.image_id, lambda a: not a["iscrowd"]), 4)
    np.testing.assert_allclose(pm, persons, atol=1e-6)


def test_crowd_only_image(crowd_record):
    r = _strip(crowd_record, crowd_record.iscrowd)
    assert len(r.boxes) >= 1 and r.iscrowd.all()
    pm = person_mask(r, 4)
    w = ignore_mask(r, 4)
    assert not pm.any()
    assert (w == 0).any() and (w == 1).any() and w.min() >= 0
    mask, weights = SegmentationCodec(4, weights="crowd").encode(r)
    np.testing.assert_array_equal(weights, w)  # only crowds there: both weightings agree
    assert not mask.any()


def test_image_with_no_people(crowd_record):
    r = _strip(crowd_record, np.zeros(len(crowd_record.boxes), bool))
    mask, weights = SegmentationCodec(4).encode(r)
    shape = output_size((r.height, r.width), 4)
    assert mask.shape == weights.shape == shape
    assert not mask.any() and (weights == 1).all()


def test_rle_and_polygon_give_the_same_mask(coco_val):
    from pycocotools import mask as mask_utils

    record = next(r for r in coco_val if len(r.boxes))
    full = region_mask(record, np.ones(len(record.boxes), bool))
    rles = []
    for seg in record.segmentations:
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, record.height, record.width))
        rle["counts"] = rle["counts"].decode("ascii")  # as stored in COCO JSON
        rles.append(rle)
    as_rle = dataclasses.replace(record, segmentations=rles)
    np.testing.assert_array_equal(region_mask(as_rle, np.ones(len(rles), bool)), full)
    # Uncompressed RLE (the crowd format) too.
    dense = [
        {"size": [record.height, record.width], "counts": _uncompressed_counts(mask_utils.decode(r))} for r in rles
    ]
    np.testing.assert_array_equal(region_mask(dataclasses.replace(record, segmentations=dense), np.ones(len(rles), bool)), full)


def _uncompressed_counts(m: np.ndarray) -> list[int]:
    flat = m.reshape(-1, order="F")
    counts, current, run = [], 0, 0
    for v in flat:
        if v != current:
            counts.append(run)
            current, run = v, 0
        run += 1
    counts.append(run)
    return [int(c) for c in counts]


def test_missing_segmentation_falls_back_to_box(coco_val):
    record = next(r for r in coco_val if len(r.boxes))
    r = dataclasses.replace(record, segmentations=[None] * len(record.boxes))
    m = region_mask(r, np.arange(len(r.boxes)) == 0)
    x1, y1, x2, y2 = record.boxes[0]
    ys, xs = np.nonzero(m)
    assert abs(xs.min() - x1) <= 1 and abs(xs.max() + 1 - x2) <= 1
    assert abs(ys.min() - y1) <= 1 and abs(ys.max() + 1 - y2) <= 1


def test_decode_upsamples_to_full_resolution(coco_val):
    record = max(coco_val, key=lambda r: r.areas.sum() if len(r.areas) else 0)
    codec = SegmentationCodec(4)
    mask, _ = codec.encode(record)
    full = region_mask(record, ~record.iscrowd).astype(bool)
    dec = codec.decode(mask, (record.height, record.width))
    assert dec.shape == full.shape and dec.dtype == bool
    iou = (dec & full).sum() / (dec | full).sum()
    assert iou > 0.9, iou
    # Logits give the same mask as their probabilities.
    p = np.clip(mask, 1e-4, 1 - 1e-4)
    logits = np.log(p / (1 - p))
    np.testing.assert_array_equal(codec.decode(logits[..., None], (record.height, record.width)), codec.decode(p, (record.height, record.width)))


def test_bad_input(coco_val):
    codec = SegmentationCodec(4)
    with pytest.raises(ValueError, match="does not match image"):
        codec.decode(np.zeros((10, 10)), (100, 100))
    with pytest.raises(ValueError, match="segmentation output"):
        codec.decode(np.zeros((10, 10, 2)), (40, 40))
    with pytest.raises(ValueError, match="weights"):
        SegmentationCodec(4, weights="all")
    with pytest.raises(ValueError, match="stride"):
        person_mask(next(iter(coco_val)), 0)
    record = next(r for r in coco_val if len(r.boxes))
    with pytest.raises(ValueError, match="segmentation"):
        region_mask(dataclasses.replace(record, segmentations=[42] * len(record.boxes)), np.ones(len(record.boxes), bool))
