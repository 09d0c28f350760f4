"""Geometric augmentation: exactness of the identity, flips, OpenCV's pixel convention, and an
independent reference warp (scipy.ndimage.affine_transform)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import scipy.ndimage as ndi

from kerapose.data.augment import (
    AugmentConfig,
    apply_affine,
    augment,
    compose,
    crop_matrix,
    flip_matrix,
    random_affine,
    record_masks,
    transform_boxes,
)
from kerapose.data.coco import ImageRecord
from kerapose.skeleton import COCO17

IDENTITY = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


@pytest.fixture(scope="module")
def sample(coco_val):
    """A val image with several people, some labelled keypoints, and its pixels."""
    for rec in coco_val:
        if (rec.num_keypoints_labelled > 0).sum() >= 2:
            img = cv2.imread(rec.path, cv2.IMREAD_COLOR)
            assert img is not None, rec.path
            return rec, img
    pytest.fail("no val image with two labelled people")


def _labelled_equal(a: np.ndarray, b: np.ndarray) -> None:
    np.testing.assert_array_equal(a[..., 2], b[..., 2])
    v = a[..., 2] > 0
    np.testing.assert_allclose(a[v][:, :2], b[v][:, :2], atol=1e-4)


def test_identity_config_returns_input_exactly(sample):
    rec, img = sample
    cfg = AugmentConfig(output_size=(rec.height, rec.width), rotation_deg=0, scale_range=(1, 1),
                        flip_prob=0, center="image")
    out = augment(rec, img, cfg, np.random.default_rng(0), "coco17")
    np.testing.assert_array_equal(out["image"], img)
    np.testing.assert_allclose(out["matrix"], IDENTITY)
    # Every labelled COCO keypoint lies on a pixel, so none is dropped.
    _labelled_equal(out["keypoints"], rec.keypoints)
    assert ((out["keypoints"][..., 2] > 0) == (rec.keypoints[..., 2] > 0)).all()
    clipped = np.clip(rec.boxes, 0, [rec.width, rec.height, rec.width, rec.height])
    np.testing.assert_allclose(out["boxes"], clipped, atol=1e-4)
    np.testing.assert_array_equal(out["masks"], record_masks(rec))
    np.testing.assert_array_equal(out["iscrowd"], rec.iscrowd)
    assert out["masks"].sum() > 0 and not out["flipped"]


def test_identity_crop_record_feeds_the_segmentation_codec(sample):
    from kerapose.codecs.segmentation import SegmentationCodec

    rec, img = sample
    cfg = AugmentConfig(output_size=(rec.height, rec.width), rotation_deg=0, scale_range=(1, 1),
                        flip_prob=0, center="image")
    crop = augment(rec, img, cfg, np.random.default_rng(0), COCO17)["record"]
    codec = SegmentationCodec(stride=4)
    for a, b in zip(codec.encode(rec), codec.encode(crop)):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_flip_twice_is_identity(sample):
    rec, img = sample
    masks = record_masks(rec)
    size = (rec.height, rec.width)
    once = apply_affine(img, rec.keypoints, rec.boxes, masks, IDENTITY, size, True, COCO17.flip_index)
    twice = apply_affine(*once, IDENTITY, size, True, COCO17.flip_index)
    assert not np.array_equal(once[0], img)
    np.testing.assert_array_equal(twice[0], img)
    _labelled_equal(twice[1], rec.keypoints)
    np.testing.assert_allclose(twice[2], np.clip(rec.boxes, 0, [size[1], size[0]] * 2), atol=1e-4)
    np.testing.assert_array_equal(twice[3], masks)
    # One flip is the mirror of the pixels and of the masks.
    np.testing.assert_array_equal(once[0], img[:, ::-1])
    np.testing.assert_array_equal(once[3], masks[:, :, ::-1])


def test_flipped_left_wrist_is_the_mirrored_right_wrist(sample):
    rec, img = sample
    w = rec.width
    _, kp, boxes, _ = apply_affine(img, rec.keypoints, rec.boxes, None, IDENTITY, (rec.height, w), True,
                                   COCO17.flip_index)
    lw, rw = COCO17.index("left_wrist"), COCO17.index("right_wrist")
    src = rec.keypoints[:, rw]
    has = src[:, 2] > 0
    assert has.any()
    np.testing.assert_allclose(kp[has, lw, 0], w - 1 - src[has, 0], atol=1e-4)
    np.testing.assert_allclose(kp[has, lw, 1], src[has, 1], atol=1e-4)
    np.testing.assert_array_equal(kp[:, lw, 2], src[:, 2])
    # Boxes mirror about the image edges.
    np.testing.assert_allclose(boxes[:, 0], np.clip(w - rec.boxes[:, 2], 0, w), atol=1e-4)


def _random_matrix(rng, in_hw, out_hw):
    centre = (rng.uniform(0.3, 0.7) * in_hw[1], rng.uniform(0.3, 0.7) * in_hw[0])
    return crop_matrix(centre, rng.uniform(0.8, 1.2), rng.uniform(-40, 40), out_hw, tuple(rng.uniform(-3, 3, 2)))


def test_keypoints_follow_the_pixels_exactly():
    """A keypoint and the image content under it move together (OpenCV's pixel convention)."""
    rng = np.random.default_rng(1)
    h, w, out = 60, 70, (64, 64)
    yy, xx = np.mgrid[:h, :w]
    oy, ox = np.mgrid[: out[0], : out[1]]
    for trial in range(40):
        m = crop_matrix((34.5, 29.5), rng.uniform(0.8, 1.2), rng.uniform(-40, 40), out, tuple(rng.uniform(-3, 3, 2)))
        flip = bool(trial % 2)
        # Single bright pixel: its warped argmax is the output pixel nearest the transformed point.
        p = np.array([rng.integers(25, 45), rng.integers(20, 40)], float)
        img = np.zeros((h, w), np.float32)
        img[int(p[1]), int(p[0])] = 1.0
        warped, kp, _, _ = apply_affine(img, np.array([[[p[0], p[1], 2.0]]]), np.zeros((1, 4)), None, m, out,
                                        flip, np.array([0]))
        assert kp[0, 0, 2] == 2
        iy, ix = np.unravel_index(np.argmax(warped), warped.shape)
        # sqrt(0.5): no pixel grid can do better than the nearest pixel under a rotation.
        assert np.hypot(ix - kp[0, 0, 0], iy - kp[0, 0, 1]) <= np.sqrt(0.5) + 1e-3
        # Smooth blob at a sub-pixel point: the warped centroid matches to a few hundredths.
        q = np.array([rng.uniform(28, 42), rng.uniform(24, 36)])
        blob = np.exp(-((xx - q[0]) ** 2 + (yy - q[1]) ** 2) / 8.0).astype(np.float32)
        warped, kp, _, _ = apply_affine(blob, np.array([[[q[0], q[1], 1.0]]]), np.zeros((1, 4)), None, m, out,
                                        flip, np.array([0]))
        centroid = np.array([(warped * ox).sum(), (warped * oy).sum()]) / warped.sum()
        np.testing.assert_allclose(centroid, kp[0, 0, :2], atol=0.05)


def test_unrotated_integer_shift_lands_on_the_exact_pixel():
    img = np.zeros((20, 30), np.uint8)
    img[7, 11] = 255
    m = np.array([[1.0, 0.0, 3.0], [0.0, 1.0, -2.0]])
    for flip in (False, True):
        warped, kp, _, _ = apply_affine(img, np.array([[[11.0, 7.0, 2.0]]]), np.zeros((1, 4)), None, m, (20, 30),
                                        flip, np.array([0]))
        iy, ix = np.unravel_index(np.argmax(warped), warped.shape)
        assert (ix, iy) == (kp[0, 0, 0], kp[0, 0, 1]) == ((29 - 14) if flip else 14, 5)
        assert warped[iy, ix] == 255


def test_image_warp_matches_scipy_reference(sample):
    rec, img = sample
    rng = np.random.default_rng(2)
    out_hw = (200, 240)
    for flip in (False, True):
        m = _random_matrix(rng, (rec.height, rec.width), out_hw)
        warped = apply_affine(img, np.zeros((0, 17, 3)), np.zeros((0, 4)), None, m, out_hw, flip,
                              COCO17.flip_index, pad_value=128)[0]
        full = compose(flip_matrix(out_hw[1]), m) if flip else m
        inv = np.linalg.inv(np.vstack([full, [0, 0, 1]]))
        swap = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]])
        rc = swap @ inv @ swap  # scipy maps output (row, col) to input (row, col)
        ref = np.stack([
            ndi.affine_transform(img[..., c].astype(np.float64), rc[:2, :2], offset=rc[:2, 2],
                                 output_shape=out_hw, order=1, mode="constant", cval=128.0)
            for c in range(3)
        ], axis=-1)
        oy, ox = np.mgrid[: out_hw[0], : out_hw[1]]
        src = np.stack([ox, oy, np.ones_like(ox)], axis=-1) @ inv[:2].T
        inside = ((src[..., 0] >= 1) & (src[..., 0] <= rec.width - 2)
                  & (src[..., 1] >= 1) & (src[..., 1] <= rec.height - 2))
        far = ((src[..., 0] < -1.5) | (src[..., 0] > rec.width + 0.5)
               | (src[..., 1] < -1.5) | (src[..., 1] > rec.height + 0.5))
        assert inside.mean() > 0.5
        diff = np.abs(warped.astype(np.float64) - ref)[inside]
        assert diff.max() <= 1.0 and diff.mean() < 0.3  # uint8 rounding only
        assert (warped[far] == 128).all()


def test_scale_two_maps_box_edges_and_pixels_consistently():
    img = np.zeros((10, 12, 3), np.uint8)
    img[2:5, 3:7] = 200  # a 4x3 block: box edges (3, 2) .. (7, 5)
    m = np.array([[2.0, 0.0, 0.5], [0.0, 2.0, 0.5]])  # cv2.resize's 2x mapping
    warped, _, boxes, masks = apply_affine(img, np.zeros((1, 17, 3)), np.array([[3.0, 2.0, 7.0, 5.0]]),
                                           [(img[..., 0] > 0).astype(np.uint8)], m, (20, 24))
    np.testing.assert_allclose(boxes, [[6.0, 4.0, 14.0, 10.0]])
    ys, xs = np.nonzero(masks[0])
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (6, 4, 14, 10)
    # Same sampling as cv2.resize; the two round their fixed-point weights differently.
    ref = cv2.resize(img, (24, 20), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(warped.astype(int), ref.astype(int), atol=1)


def test_rotated_boxes_contain_their_warped_masks(sample):
    rec, img = sample
    rng = np.random.default_rng(3)
    masks = record_masks(rec)
    m = _random_matrix(rng, (rec.height, rec.width), (320, 320))
    _, _, boxes, warped = apply_affine(img, rec.keypoints, rec.boxes, masks, m, (320, 320), True, COCO17.flip_index)
    assert ((boxes[:, :2] >= 0) & (boxes[:, 2:] <= 320)).all()
    for box, mk in zip(boxes, warped):
        ys, xs = np.nonzero(mk)
        if xs.size:
            assert xs.min() >= box[0] - 1 and xs.max() + 1 <= box[2] + 1
            assert ys.min() >= box[1] - 1 and ys.max() + 1 <= box[3] + 1


def test_keypoints_outside_and_unlabelled_become_zero():
    kp = np.array([[[5.0, 5.0, 2.0], [50.0, 5.0, 2.0], [5.0, 5.0, 0.0], [-0.5, 9.4, 1.0], [9.5, 0.0, 2.0]]])
    img = np.zeros((10, 10), np.uint8)
    box = np.array([[0.0, 0.0, 60.0, 10.0]])
    _, out, boxes, _ = apply_affine(img, kp, box, None, IDENTITY, (10, 10))
    np.testing.assert_array_equal(out[0, :, 2], [2, 0, 0, 1, 0])
    np.testing.assert_array_equal(out[0, 1], [0, 0, 0])
    np.testing.assert_array_equal(out[0, 2], [0, 0, 0])
    np.testing.assert_allclose(out[0, 3], [-0.5, 9.4, 1.0], atol=1e-6)
    np.testing.assert_allclose(boxes, [[0, 0, 10, 10]])
    # A box entirely outside the crop collapses to an empty box but is kept (indices stay aligned).
    far = transform_boxes(np.array([[20.0, 20.0, 30.0, 30.0]]), IDENTITY, (10, 10))
    assert far[0, 2] - far[0, 0] == 0


def test_no_annotations(sample):
    _, img = sample
    h, w = img.shape[:2]
    empty = ImageRecord(1, "x.jpg", "x.jpg", h, w, np.zeros((0, 17, 3), np.float32), np.zeros((0, 4), np.float32),
                        np.zeros(0, bool), np.zeros(0, np.float32), np.zeros(0, np.int64), [])
    for center in ("crowd", "person", "image"):
        cfg = AugmentConfig(output_size=(64, 96), center=center, pad_value=128)
        out = augment(empty, img, cfg, np.random.default_rng(0), "coco17")
        assert out["image"].shape == (64, 96, 3) and out["image"].dtype == np.uint8
        assert out["keypoints"].shape == (0, 17, 3) and out["boxes"].shape == (0, 4)
        assert out["masks"].shape == (0, 64, 96) and out["record"].segmentations == []


def test_center_modes_and_target_height(sample):
    rec, _ = sample
    people = np.flatnonzero(~rec.iscrowd)
    centres = (rec.boxes[:, :2] + rec.boxes[:, 2:]) / 2 - 0.5
    out_c = np.array([(200 - 1) / 2, (100 - 1) / 2])
    still = dict(output_size=(100, 200), rotation_deg=0, scale_range=(1, 1), flip_prob=0)
    m = random_affine(rec, AugmentConfig(center="crowd", **still), np.random.default_rng(0))
    np.testing.assert_allclose(m[:, :2] @ centres[people].mean(0) + m[:, 2], out_c, atol=1e-4)
    chosen = set()
    for seed in range(20):
        m = random_affine(rec, AugmentConfig(center="person", target_height=50, **still), np.random.default_rng(seed))
        mapped = centres @ m[:, :2].T + m[:, 2]
        hit = np.flatnonzero(np.abs(mapped - out_c).max(axis=1) < 1e-4)
        assert hit.size >= 1
        i = int(hit[0])
        assert rec.num_keypoints_labelled[i] > 0  # people with keypoints are preferred
        np.testing.assert_allclose(m[0, 0] * (rec.boxes[i, 3] - rec.boxes[i, 1]), 50.0, rtol=1e-6)
        chosen.add(i)
    assert len(chosen) >= 2
    m = random_affine((300, 400), AugmentConfig(center="crowd", fit_image=True, **still), np.random.default_rng(0))
    np.testing.assert_allclose(m, [[1 / 3, 0, out_c[0] - 199.5 / 3], [0, 1 / 3, out_c[1] - 149.5 / 3]])


def test_random_crops_stay_consistent(sample):
    """Random configs: keypoints of the crop sit on the warped person masks' regions."""
    rec, img = sample
    cfg = AugmentConfig(output_size=(256, 256), center="person", center_jitter=8, pad_value=128)
    rng = np.random.default_rng(4)
    for _ in range(3):
        out = augment(rec, img, cfg, rng, COCO17)
        kp, masks = out["keypoints"], out["masks"]
        assert out["image"].shape == (256, 256, 3)
        v = kp[..., 2] > 0
        assert v.any()
        # Every kept keypoint is on the crop.
        assert (kp[v][:, :2] >= -0.5).all() and (kp[v][:, :2] < 255.5).all()
        # Areas scale with the warp's determinant.
        det = abs(np.linalg.det(out["matrix"][:, :2]))
        np.testing.assert_allclose(out["record"].areas, rec.areas * det, rtol=1e-5)
        # The crop record's RLEs decode to the warped masks.
        from pycocotools import mask as mask_utils

        np.testing.assert_array_equal(np.moveaxis(mask_utils.decode(out["record"].segmentations), -1, 0), masks)


def test_many_masks_warp_exactly():
    rng = np.random.default_rng(5)
    masks = (rng.random((70, 30, 40)) > 0.5).astype(np.uint8)
    m = _random_matrix(rng, (30, 40), (25, 35))
    out = apply_affine(np.zeros((30, 40), np.uint8), np.zeros((0, 17, 3)), np.zeros((0, 4)), masks, m, (25, 35))[3]
    ref = np.stack([cv2.warpAffine(x, m, (35, 25), flags=cv2.INTER_NEAREST) for x in masks])
    np.testing.assert_array_equal(out, ref)
    # Independent nearest-neighbour reference: each output pixel reads the input pixel nearest
    # its preimage (the nearest tie here is 2e-4 px away; multi-channel OpenCV warps get ~0.2 % wrong).
    inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))
    oy, ox = np.mgrid[:25, :35]
    src = np.stack([ox, oy, np.ones_like(ox)], axis=-1) @ inv[:2].T
    sx, sy = np.floor(src[..., 0] + 0.5).astype(int), np.floor(src[..., 1] + 0.5).astype(int)
    ok = (sx >= 0) & (sx < 40) & (sy >= 0) & (sy < 30)
    exact = np.zeros_like(out)
    exact[:, ok] = masks[:, sy[ok], sx[ok]]
    np.testing.assert_array_equal(out, exact)


def test_bad_input_raises_value_error(sample):
    rec, img = sample
    with pytest.raises(ValueError, match="output_size"):
        AugmentConfig(output_size=(0, 10))
    with pytest.raises(ValueError, match="center"):
        AugmentConfig(center="middle")
    with pytest.raises(ValueError, match="scale_range"):
        AugmentConfig(scale_range=(1.2, 0.8))
    with pytest.raises(ValueError, match="image"):
        augment(rec, img[:10], AugmentConfig(), np.random.default_rng(0), "coco17")
    with pytest.raises(ValueError, match="flip_index"):
        apply_affine(img, rec.keypoints, rec.boxes, None, IDENTITY, (10, 10), flip=True)
    with pytest.raises(ValueError, match="matrix"):
        apply_affine(img, rec.keypoints, rec.boxes, None, np.eye(3), (10, 10))
    with pytest.raises(ValueError, match="keypoints"):
        augment(rec, img, AugmentConfig(), np.random.default_rng(0), "openpose18")
