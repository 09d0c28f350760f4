"""End-to-end MultiPoseNet graph vs the numpy codecs, on a real image."""

import cv2
import numpy as np
import pytest

from kerapose.codecs.boxes import BoxCodec
from kerapose.codecs.prn import PRNCodec
from kerapose.models import MultiPoseNet


@pytest.fixture(scope="module")
def model():
    import keras

    keras.utils.set_random_seed(7)
    return MultiPoseNet("resnet18", prn_hidden=32)


@pytest.fixture(scope="module")
def image(coco_val):
    rec = coco_val.record(coco_val.image_ids[0])
    return cv2.imread(rec.path)[..., ::-1].copy()


def test_end_to_end_matches_numpy_pipeline(model, image):
    size = (256, 256)
    e2e = model.end_to_end(size, max_people=8, score_threshold=0.0)
    out = {k: np.asarray(v) for k, v in e2e(image[None]).items()}
    n = int(out["num_poses"][0])
    assert n == 8  # threshold 0: every slot filled
    # numpy reference: letterbox, network, decode boxes, crop heatmaps, PRN, decode keypoints
    h, w = image.shape[:2]
    scale = min(size[0] / h, size[1] / w)
    nh, nw = round(h * scale), round(w * scale)
    import tensorflow as tf

    resized = tf.image.resize(image[None].astype("float32"), (nh, nw)).numpy()
    canvas = np.zeros((1, *size, 3), "float32")
    canvas[:, :nh, :nw] = resized
    net = {k: np.asarray(v) for k, v in model(canvas).items()}
    boxes, scores = BoxCodec().decode(net["person_logits"][0], net["person_boxes"][0], size,
                                      score_threshold=0.0, max_detections=8)
    np.testing.assert_allclose(out["boxes"][0, :n], boxes / scale, rtol=1e-4, atol=1e-2)
    np.testing.assert_allclose(out["scores"][0, :n], scores, atol=1e-5)
    prn_codec = PRNCodec("coco17")
    crops = prn_codec.crop(net["heatmaps"][0, ..., :17], boxes, 4)
    kp = prn_codec.decode(np.asarray(model.prn(crops, training=False)), boxes)
    np.testing.assert_allclose(out["keypoints"][0, :n, :, :2], kp[..., :2] / scale, rtol=1e-4, atol=0.05)
    np.testing.assert_allclose(out["keypoints"][0, :n, :, 2], kp[..., 2], atol=1e-5)

    # pose_score="box_keypoints": box score x mean keypoint score, the poses re-sorted by it
    # (the numpy reference's, sorted with numpy)
    pose = scores * kp[..., 2].mean(-1)
    for m in (n, 4):  # all slots filled; 4 of 8 (a threshold between box scores): padding stays last
        threshold = 0.0 if m == n else float(scores[m - 1] + scores[m]) / 2
        ranked = model.end_to_end(size, max_people=8, score_threshold=threshold, pose_score="box_keypoints")
        got = {k: np.asarray(v) for k, v in ranked(image[None]).items()}
        assert int(got["num_poses"][0]) == m
        order = np.argsort(-pose[:m], kind="stable")
        np.testing.assert_allclose(got["scores"][0, :m], pose[order], atol=1e-5)
        np.testing.assert_allclose(got["boxes"][0, :m], boxes[order] / scale, rtol=1e-4, atol=1e-2)
        np.testing.assert_allclose(got["keypoints"][0, :m, :, :2], kp[order, :, :2] / scale, rtol=1e-4, atol=0.05)
        assert not got["scores"][0, m:].any() and not got["keypoints"][0, m:].any()
    assert not np.array_equal(np.argsort(-pose, kind="stable"), np.arange(n))  # the re-sort did something
    with pytest.raises(ValueError, match="pose_score: expected one of box, box_keypoints, got 'mean'"):
        model.end_to_end(size, pose_score="mean")


def test_predict_poses_unpads_and_checks_input(model, image):
    res = model.predict_poses([image, image[:200, :300].copy()], input_size=(128, 128), max_people=4,
                              score_threshold=0.0)
    assert len(res) == 2
    for r, img in zip(res, (image, image[:200, :300])):
        n = len(r["scores"])
        assert r["keypoints"].shape == (n, 17, 3) and r["boxes"].shape == (n, 4)
        # boxes are mapped back to the image's own pixels (clipped to the letterboxed area)
        assert r["boxes"][:, 2].max() <= max(img.shape[:2]) * 1.01
    with pytest.raises(ValueError, match="uint8"):
        model.predict_poses([image.astype("float32")])
    with pytest.raises(ValueError, match=r"RGB image \[H, W, 3\]"):
        model.predict_poses([image[..., 0]])
    with pytest.raises(ValueError, match="multiples of 32"):
        model.end_to_end((100, 128))


def test_flip_test_and_multi_scale(model, image):
    import tensorflow as tf

    from kerapose.models.multiposenet.end_to_end import HeatmapTestTimeAugment

    size = (128, 128)
    x = tf.random.uniform((1, *size, 3), 0, 255, seed=1)
    base = model(x)["heatmaps"]
    tta = HeatmapTestTimeAugment(model, model.keypoint_set.flip_index, flip=True)
    mirrored = model(tf.reverse(x, axis=[2]))["heatmaps"].numpy()[:, :, ::-1]
    perm = list(model.keypoint_set.flip_index) + [17]
    expected = (base.numpy() + mirrored[..., perm]) / 2
    np.testing.assert_allclose(tta(x, base).numpy(), expected, atol=1e-5)
    # left_wrist of the averaged map mixes in the mirrored right_wrist
    assert not np.allclose(tta(x, base).numpy()[..., 9], base.numpy()[..., 9])
    plain = model.end_to_end(size, max_people=4, score_threshold=0.0)(image[None])
    both = model.end_to_end(size, max_people=4, score_threshold=0.0, flip_test=True, scales=(0.75,))(image[None])
    np.testing.assert_allclose(plain["boxes"], both["boxes"], atol=1e-3)  # boxes from the base pass only
    assert np.abs(plain["keypoints"].numpy() - both["keypoints"].numpy()).max() > 0
    # predict_poses(flip_test=True) runs the flip-averaged graph: the same people as that graph
    flipped = model.end_to_end(size, max_people=4, score_threshold=0.0, flip_test=True)(image[None])
    got = model.predict_poses([image], input_size=size, max_people=4, score_threshold=0.0, flip_test=True)[0]
    n = int(flipped["num_poses"][0])
    np.testing.assert_allclose(got["keypoints"], flipped["keypoints"].numpy()[0, :n], atol=1e-4)
    fixed = MultiPoseNet("resnet18", input_shape=(64, 64, 3), prn_hidden=8)
    with pytest.raises(ValueError, match="multi-scale inference needs"):
        fixed.end_to_end((64, 64), scales=(0.5,))
