"""RetinaNet box codec: anchors, IoU matching, round trips, NMS, in-graph decoding, TFLite."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from kerapose.codecs.boxes import BoxCodec, box_iou, nms, oracle_boxes
from kerapose.codecs.grid import cell_to_pixel
from kerapose.evaluation import box_results, evaluate_boxes


def _reference_anchors(image_hw, strides, sizes, ratios, scales):
    """Anchors built one by one in the documented head order (level, y, x, ratio, scale)."""
    out = []
    h, w = image_hw
    for stride, size in zip(strides, sizes):
        for y in range(math.ceil(h / stride)):
            for x in range(math.ceil(w / stride)):
                cx, cy = stride * x + (stride - 1) / 2, stride * y + (stride - 1) / 2
                for r in ratios:
                    for s in scales:
                        side = size * s
                        aw = side / math.sqrt(r)  # area side^2, h / w = r
                        ah = side * math.sqrt(r)
                        out.append((cx - aw / 2, cy - ah / 2, cx + aw / 2, cy + ah / 2))
    return np.array(out)


def _random_boxes(rng, n, size=200.0):
    xy = rng.uniform(0, size, (n, 2))
    wh = rng.uniform(5, size / 2, (n, 2))
    return np.concatenate([xy, xy + wh], 1)


def test_anchor_layout_matches_head_order():
    codec = BoxCodec()
    hw = (100, 150)  # not multiples of the strides: ceil grids
    a = codec.anchors(hw)
    ref = _reference_anchors(hw, codec.strides, codec.sizes, codec.ratios, codec.scales)
    assert a.dtype == np.float32 and a.shape == ref.shape == (codec.num_anchors(hw), 4)
    np.testing.assert_allclose(a, ref, rtol=0, atol=1e-4)
    assert codec.level_shapes(hw) == [(13, 19), (7, 10), (4, 5), (2, 3), (1, 2)]
    assert codec.anchors_per_location == 9
    # A head output [h, w, 9, C] of level P4 reshaped to [h*w*9, C] lines up with its anchors.
    (h3, w3), (h4, w4) = codec.level_shapes(hw)[:2]
    p4 = a[h3 * w3 * 9 : (h3 * w3 + h4 * w4) * 9].reshape(h4, w4, 9, 4)
    centre = (p4[..., :2] + p4[..., 2:]) / 2
    np.testing.assert_allclose(centre[2, 5, 4], [cell_to_pixel(5, 16), cell_to_pixel(2, 16)], atol=1e-4)
    assert codec.anchors(hw) is a  # cached


def test_box_iou_matches_pycocotools():
    rng = np.random.default_rng(0)
    a, b = _random_boxes(rng, 30), _random_boxes(rng, 20)

    def xywh(x):
        return np.concatenate([x[:, :2], x[:, 2:] - x[:, :2]], 1)

    ref = mask_utils.iou(xywh(a), xywh(b), [0] * len(b))
    np.testing.assert_allclose(box_iou(a, b), ref, atol=1e-12)


def test_encode_labels_follow_iou_thresholds():
    codec = BoxCodec(allow_low_quality_matches=False)
    hw = (256, 320)
    rng = np.random.default_rng(1)
    gt = _random_boxes(rng, 6, 160)  # inside the image: no clipping
    cls, box = codec.encode(gt, hw)
    assert cls.shape == (codec.num_anchors(hw), 1) and box.shape == (codec.num_anchors(hw), 4)
    assert cls.dtype == np.float32 and box.dtype == np.float32
    anchors = codec.anchors(hw).astype(np.float64)
    iou = box_iou(anchors, gt).max(1)
    centre = (anchors[:, :2] + anchors[:, 2:]) / 2
    outside = (centre[:, 0] >= hw[1]) | (centre[:, 1] >= hw[0])
    expect = np.where(iou >= 0.5, 1.0, np.where(iou >= 0.4, -1.0, 0.0))
    expect[outside & (iou < 0.5)] = -1.0
    np.testing.assert_array_equal(cls[:, 0], expect)
    assert (cls == 1).sum() > 10
    assert np.all(box[cls[:, 0] != 1] == 0)


def test_encode_decode_round_trip_and_exact_anchor():
    codec = BoxCodec()
    hw = (256, 256)
    anchors = codec.anchors(hw)
    gt = np.vstack([anchors[1234], [40.0, 30.0, 140.0, 230.0], [150.0, 20.0, 250.0, 100.0]])
    cls, box = codec.encode(gt, hw)
    assert cls[1234, 0] == 1 and np.allclose(box[1234], 0, atol=1e-5)
    pos = cls[:, 0] == 1
    decoded = codec.decode_deltas(box[pos], anchors[pos])
    matched = box_iou(decoded, gt).argmax(1)
    np.testing.assert_allclose(decoded, gt[matched], atol=1e-3)
    assert set(matched) == {0, 1, 2}
    # fizyr's corner targets: (gt - anchor) / anchor size / 0.2
    i = np.flatnonzero(pos)[0]
    a = anchors[i].astype(np.float64)
    wh = np.array([a[2] - a[0], a[3] - a[1]] * 2)
    np.testing.assert_allclose(box[i], (gt[matched[0]] - a) / wh / 0.2, rtol=1e-5, atol=1e-5)


def test_low_quality_matches_give_small_people_an_anchor():
    hw = (128, 128)
    tiny = np.array([[60.0, 60.0, 68.0, 70.0]])
    codec = BoxCodec()
    cls, box = codec.encode(tiny, hw)
    assert (cls == 1).sum() >= 1
    pos = cls[:, 0] == 1
    decoded = codec.decode_deltas(box[pos], codec.anchors(hw)[pos])
    np.testing.assert_allclose(decoded, tiny.repeat(pos.sum(), 0), atol=1e-3)
    cls, _ = BoxCodec(allow_low_quality_matches=False).encode(tiny, hw)
    assert (cls == 1).sum() == 0


def test_crowd_boxes_ignore_anchor_centres():
    codec = BoxCodec()
    hw = (256, 256)
    crowd = np.array([[0.0, 0.0, 100.0, 100.0]])
    person = np.array([[150.0, 150.0, 230.0, 250.0]])
    cls, _ = codec.encode(person, hw, ignore_boxes=crowd)
    anchors = codec.anchors(hw)
    centre = (anchors[:, :2] + anchors[:, 2:]) / 2
    inside = np.all((centre >= 0) & (centre <= 100), axis=1)
    assert np.all(cls[inside, 0] == -1)
    assert (cls[~inside, 0] == 1).sum() > 0 and (cls[~inside, 0] == 0).sum() > 0
    # crowd only: no positives, ignore in the crowd, negatives elsewhere
    cls_c, box_c = codec.encode(np.zeros((0, 4)), hw, ignore_boxes=crowd)
    assert (cls_c == 1).sum() == 0 and np.all(cls_c[inside, 0] == -1) and np.all(box_c == 0)
    assert np.all(cls_c[~inside, 0] == 0)  # 256 is a multiple of every stride: nothing outside


def test_odd_inputs():
    codec = BoxCodec()
    hw = (200, 300)
    empty_cls, empty_box = codec.encode(None, hw)
    assert not (empty_cls == 1).any() and np.all(empty_box == 0)
    anchors = codec.anchors(hw)
    centre = (anchors[:, :2] + anchors[:, 2:]) / 2
    outside = (centre[:, 0] >= 300) | (centre[:, 1] >= 200)
    assert outside.any() and np.all(empty_cls[outside, 0] == -1) and np.all(empty_cls[~outside, 0] == 0)
    np.testing.assert_array_equal(codec.encode(np.zeros((0, 4)), hw)[0], empty_cls)
    # zero-area, NaN, inf and fully outside boxes are dropped: same targets as no boxes
    junk = np.array(
        [[10, 10, 10, 50], [20, 20, 60, 20], [np.nan, 0, 50, 50], [0, 0, np.inf, 5],
         [400, 10, 500, 90], [-50, -50, -1, -1]]
    )
    cls, box = codec.encode(junk, hw)
    np.testing.assert_array_equal(cls, empty_cls)
    assert np.all(box == 0)
    # a box hanging over the border is clipped to the image
    over = np.array([[250.0, 120.0, 360.0, 260.0]])
    cls, box = codec.encode(over, hw)
    pos = cls[:, 0] == 1
    decoded = codec.decode_deltas(box[pos], anchors[pos])
    np.testing.assert_allclose(decoded, np.array([[250.0, 120.0, 300.0, 200.0]]).repeat(pos.sum(), 0), atol=1e-3)
    with pytest.raises(ValueError, match="boxes"):
        codec.encode(np.zeros((3, 5)), hw)
    with pytest.raises(ValueError, match="image_hw"):
        codec.anchors((0, 10))
    with pytest.raises(ValueError, match="cls_logits"):
        codec.decode(np.zeros((10, 1)), np.zeros((10, 4)), hw)
    with pytest.raises(ValueError, match="box_deltas"):
        codec.decode(np.zeros((len(anchors), 1)), np.zeros((len(anchors), 3)), hw)
    with pytest.raises(ValueError, match="negative_iou"):
        BoxCodec(positive_iou=0.3, negative_iou=0.4)


def test_decode_handles_nan_and_no_detections():
    codec = BoxCodec()
    hw = (128, 128)
    n = codec.num_anchors(hw)
    boxes, scores = codec.decode(np.full((n, 1), -10.0), np.zeros((n, 4)), hw)
    assert boxes.shape == (0, 4) and scores.shape == (0,)
    logits = np.full((n, 1), -10.0)
    logits[[5, 50]] = 5.0
    logits[7] = np.nan
    deltas = np.zeros((n, 4))
    deltas[50] = np.nan
    boxes, scores = codec.decode(logits, deltas, hw)
    assert len(boxes) == 1
    np.testing.assert_allclose(boxes[0], np.clip(codec.anchors(hw)[5], 0, 128), atol=1e-4)


def test_nms_matches_tensorflow():
    import tensorflow as tf

    rng = np.random.default_rng(2)
    for trial in range(5):
        boxes = _random_boxes(rng, 300, 300)
        scores = rng.random(300)
        for thr in (0.3, 0.5, 0.7):
            ref = tf.image.non_max_suppression(boxes[:, [1, 0, 3, 2]], scores, 300, iou_threshold=thr).numpy()
            np.testing.assert_array_equal(nms(boxes, scores, thr), ref)
        ref = tf.image.non_max_suppression(boxes, scores, 20, iou_threshold=0.5).numpy()
        np.testing.assert_array_equal(nms(boxes, scores, 0.5, max_output=20), ref)


def _random_outputs(codec, hw, batch, rng):
    n = codec.num_anchors(hw)
    cls = rng.normal(-4.0, 2.0, (batch, n, 1)).astype(np.float32)
    deltas = rng.normal(0.0, 0.5, (batch, n, 4)).astype(np.float32)
    cls[1, :, 0] = -20.0  # image 1: only a few candidates, fewer than M
    cls[1, rng.choice(n, 7, replace=False), 0] = 3.0
    return cls, deltas


def test_decode_tf_matches_numpy_and_converts_to_tflite_builtins():
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    codec = BoxCodec()
    hw = (96, 128)
    n = codec.num_anchors(hw)
    m = 40
    cls, deltas = _random_outputs(codec, hw, 3, np.random.default_rng(3))

    @tf.function(input_signature=[tf.TensorSpec([None, n, 1], tf.float32), tf.TensorSpec([None, n, 4], tf.float32)])
    def decode(c, d):
        return codec.decode_tf(c, d, hw, max_detections=m)

    tf_boxes, tf_scores, tf_num = (t.numpy() for t in decode(cls, deltas))
    assert tf_boxes.shape == (3, m, 4) and tf_scores.shape == (3, m) and tf_num.shape == (3,)
    for i in range(3):
        boxes, scores = codec.decode(cls[i], deltas[i], hw, max_detections=m)
        assert tf_num[i] == len(boxes)
        np.testing.assert_allclose(tf_boxes[i, : len(boxes)], boxes, atol=1e-3)
        np.testing.assert_allclose(tf_scores[i, : len(boxes)], scores, atol=1e-6)
        assert np.all(tf_boxes[i, len(boxes) :] == 0) and np.all(tf_scores[i, len(boxes) :] == 0)
    assert tf_num[0] == m and tf_num[1] <= 7

    converter = tf.lite.TFLiteConverter.from_concrete_functions([decode.get_concrete_function()], decode)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    interpreter = Interpreter(model_content=converter.convert())
    inputs = sorted(interpreter.get_input_details(), key=lambda d: d["shape_signature"][-1])
    for det, value in zip(inputs, (cls, deltas)):
        interpreter.resize_tensor_input(det["index"], value.shape)
    interpreter.allocate_tensors()
    for det, value in zip(inputs, (cls, deltas)):
        interpreter.set_tensor(det["index"], value)
    interpreter.invoke()
    outs = {o.ndim: o for o in (interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details())}
    np.testing.assert_array_equal(outs[1], tf_num)
    np.testing.assert_allclose(outs[3], tf_boxes, atol=1e-3)
    np.testing.assert_allclose(outs[2], tf_scores, atol=1e-6)


def test_decode_tf_inside_a_keras_model():
    import keras
    import tensorflow as tf

    codec = BoxCodec()
    hw = (64, 64)
    n = codec.num_anchors(hw)

    class Decode(keras.layers.Layer):
        def call(self, c, d):
            return codec.decode_tf(c, d, hw, max_detections=10)

    c_in, d_in = keras.Input((n, 1)), keras.Input((n, 4))
    model = keras.Model([c_in, d_in], Decode()(c_in, d_in))
    cls, deltas = _random_outputs(codec, hw, 2, np.random.default_rng(4))
    boxes, scores, num = model([tf.constant(cls), tf.constant(deltas)])
    ref_boxes, ref_scores = codec.decode(cls[0], deltas[0], hw, max_detections=10)
    np.testing.assert_allclose(boxes.numpy()[0, : num[0]], ref_boxes, atol=1e-3)


def test_oracle_box_ap_on_coco_mini_val(coco_val):
    codec = BoxCodec()
    results = []
    for rec in coco_val:
        boxes, scores = oracle_boxes(codec, rec)
        results += box_results(rec.image_id, boxes, scores)
    stats = evaluate_boxes(coco_val, results)
    assert stats["AP"] >= 0.95, stats
    # The same images resized to a fixed network input (boxes scaled): still near perfect.
    results = []
    for rec in coco_val:
        scale = 384 / max(rec.height, rec.width)
        rec.boxes = rec.boxes * scale
        boxes, scores = oracle_boxes(codec, rec, image_hw=(384, 384))
        results += box_results(rec.image_id, boxes / scale, scores)
    assert evaluate_boxes(coco_val, results)["AP"] >= 0.9


def test_config_round_trip():
    codec = BoxCodec(sizes=(24, 48, 96, 192, 384), positive_iou=0.6, negative_iou=0.45)
    again = BoxCodec.from_config(codec.get_config())
    assert again.get_config() == codec.get_config()
    np.testing.assert_array_equal(again.anchors((64, 80)), codec.anchors((64, 80)))
