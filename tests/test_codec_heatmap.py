"""HeatmapCodec: Gaussian encoding against the formula, sub-pixel decoding, the in-graph and
TFLite decoders against the numpy one, and the COCO round trip scored by pycocotools."""

from __future__ import annotations

import numpy as np
import pytest

from kerapose.codecs.grid import cell_to_pixel, output_size
from kerapose.codecs.heatmap import HeatmapCodec, oracle_keypoints
from kerapose.skeleton import COCO17


def _reference_encode(kp: np.ndarray, image_hw, stride: int, sigma: float, k: int) -> np.ndarray:
    """Straight from the definition: per cell, max over persons of the Gaussian at the cell centre."""
    h, w = output_size(image_hw, stride)
    ys, xs = np.meshgrid(cell_to_pixel(np.arange(h), stride), cell_to_pixel(np.arange(w), stride), indexing="ij")
    out = np.zeros((h, w, k))
    s_px = sigma * stride  # sigma in pixels
    for person in kp:
        for c, (x, y, v) in enumerate(person):
            if v > 0 and np.isfinite(x) and np.isfinite(y):
                g = np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * s_px**2))
                out[:, :, c] = np.maximum(out[:, :, c], g)
    return out


def _random_people(rng, n, k, hw, margin=12.0):
    kp = np.zeros((n, k, 3))
    kp[..., 0] = rng.uniform(margin, hw[1] - margin, (n, k))
    kp[..., 1] = rng.uniform(margin, hw[0] - margin, (n, k))
    kp[..., 2] = rng.choice([0, 1, 2], (n, k), p=[0.2, 0.3, 0.5])
    return kp


def test_encode_matches_definition():
    rng = np.random.default_rng(1)
    codec = HeatmapCodec(stride=4, sigma=2.0)
    kp = _random_people(rng, 4, 17, (61, 83))  # odd size: ceil() output grid
    hm = codec.encode(kp, (61, 83))
    assert hm.shape == (16, 21, 17) and hm.dtype == np.float32
    np.testing.assert_allclose(hm, _reference_encode(kp, (61, 83), 4, 2.0, 17), atol=1e-6)


def test_encode_takes_max_not_sum_over_people():
    codec = HeatmapCodec(stride=1, sigma=3.0)
    kp = np.zeros((2, 17, 3))
    kp[0, 0] = (10.0, 10.0, 2)
    kp[1, 0] = (12.0, 10.0, 2)
    hm = codec.encode(kp, (20, 30))
    assert hm[:, :, 0].max() == pytest.approx(1.0)
    assert hm[10, 11, 0] == pytest.approx(np.exp(-1 / 18), rel=1e-6)  # sum would be 2x that
    assert np.all(hm[:, :, 1:] == 0)


def test_encode_odd_inputs():
    codec = HeatmapCodec(stride=4, sigma=2.0)
    hw = (40, 48)
    # No people: zeros of the right shape, for [0, K, 3] and for an empty list.
    assert codec.encode(np.zeros((0, 17, 3)), hw).shape == (10, 12, 17)
    assert not codec.encode([], hw).any()
    kp = np.zeros((1, 17, 3))
    kp[0, 0] = (np.nan, 10.0, 2)  # NaN coordinate: skipped
    kp[0, 1] = (20.0, np.nan, 2)
    kp[0, 2] = (1000.0, -500.0, 2)  # far outside: its Gaussian misses the grid
    kp[0, 3] = (-3.0, 20.0, 2)  # just outside the left edge: the tail shows
    kp[0, 4] = (20.0, 20.0, 0)  # unlabelled: skipped
    kp[0, 5, 2] = np.nan  # NaN visibility: skipped
    kp[0, 6] = (1e30, -1e30, 2)  # absurdly far: no overflow, no contribution
    kp[0, 7] = (np.inf, 5.0, 2)
    hm = codec.encode(kp, hw)
    assert np.isfinite(hm).all()
    assert not hm[:, :, [0, 1, 2, 4, 5, 6, 7]].any()
    only_3 = np.zeros_like(kp)
    only_3[0, 3] = kp[0, 3]
    np.testing.assert_allclose(hm, _reference_encode(only_3, hw, 4, 2.0, 17), atol=1e-6)
    assert 0 < hm[:, 0, 3].max() < 1


def test_encode_rejects_bad_input():
    codec = HeatmapCodec()
    with pytest.raises(ValueError, match="keypoints"):
        codec.encode(np.zeros((2, 18, 3)), (64, 64))
    with pytest.raises(ValueError, match="image_hw"):
        codec.encode(np.zeros((1, 17, 3)), (0, 64))
    with pytest.raises(ValueError, match="heatmaps"):
        codec.decode_peaks(np.zeros((8, 8, 3)))
    with pytest.raises(ValueError, match="sigma"):
        HeatmapCodec(sigma=0)
    with pytest.raises(ValueError, match="stride"):
        HeatmapCodec(stride=0)
    with pytest.raises(ValueError, match="unknown keypoint set"):
        HeatmapCodec("nope")


@pytest.mark.parametrize("stride,sigma", [(4, 2.0), (8, 1.5), (1, 2.0)])
def test_decode_peaks_subpixel(stride, sigma):
    """An isolated Gaussian decodes to its keypoint within 0.05 px (refined) and not without."""
    rng = np.random.default_rng(stride)
    hw = (30 * stride, 40 * stride)
    codec = HeatmapCodec(stride=stride, sigma=sigma)
    # One person, keypoints well inside the image, one per channel (no interference).
    kp = np.zeros((1, 17, 3))
    kp[0, :, 0] = rng.uniform(3 * stride, hw[1] - 3 * stride, 17)
    kp[0, :, 1] = rng.uniform(3 * stride, hw[0] - 3 * stride, 17)
    kp[0, :, 2] = 2
    peaks = codec.decode_peaks(codec.encode(kp, hw))
    assert all(len(p) == 1 for p in peaks)
    xy = np.stack([p[0, :2] for p in peaks])
    err = np.hypot(*(xy - kp[0, :, :2]).T)
    assert err.max() < 0.05
    raw = HeatmapCodec(stride=stride, sigma=sigma, refine=False).decode_peaks(codec.encode(kp, hw))
    raw_err = np.hypot(*(np.stack([p[0, :2] for p in raw]) - kp[0, :, :2]).T)
    assert raw_err.max() <= stride / np.sqrt(2) + 1e-3
    if stride > 1:
        assert raw_err.mean() > 5 * err.mean()


def test_decode_peaks_threshold_order_and_cap():
    codec = HeatmapCodec(stride=1, sigma=1.0, max_peaks=2)
    hm = np.zeros((20, 20, 17), np.float32)
    hm[3, 3, 0], hm[10, 10, 0], hm[15, 4, 0], hm[5, 15, 0] = 0.5, 0.9, 0.05, 0.7
    hm[4, 3, 0] = 0.4  # 3x3 neighbour of (3, 3): suppressed
    peaks = codec.decode_peaks(hm)
    np.testing.assert_allclose(peaks[0][:, 2], [0.9, 0.7])  # sorted, capped at max_peaks
    np.testing.assert_allclose(peaks[0][:, :2], [[10, 10], [15, 5]], atol=0.5)
    all_peaks = HeatmapCodec(stride=1, max_peaks=10).decode_peaks(hm, threshold=0.0)
    assert len(all_peaks[0]) == 4  # 0.4 suppressed by its neighbour, 0.05 above threshold 0
    assert all(len(p) == 0 for p in peaks[1:])
    # Peaks on the border of the map are kept (padding is -inf, not 0).
    hm2 = np.zeros((6, 6, 17), np.float32)
    hm2[0, 5, 3] = 0.8
    p = HeatmapCodec(stride=4).decode_peaks(hm2)[3]
    assert p.shape == (1, 3) and p[0, 2] == pytest.approx(0.8)
    np.testing.assert_allclose(p[0, :2], cell_to_pixel(np.array([5, 0]), 4))


def _noisy_maps(codec, rng, b, hw):
    maps = []
    for _ in range(b):
        kp = _random_people(rng, 5, 17, hw, margin=-10)  # some keypoints outside the image
        hm = codec.encode(kp, hw)
        maps.append(hm + rng.normal(0, 0.02, hm.shape).astype(np.float32))
    return np.stack(maps)


def _compare_with_numpy(codec, maps, xy, scores, thr):
    for i in range(maps.shape[0]):
        ref = codec.decode_peaks(maps[i], threshold=thr)
        for c in range(codec.num_channels):
            n = len(ref[c])
            assert np.all(scores[i, c, n:] <= thr)
            np.testing.assert_allclose(scores[i, c, :n], ref[c][:, 2], atol=1e-6)
            np.testing.assert_allclose(xy[i, c, :n], ref[c][:, :2], atol=1e-3)


def test_decode_peaks_tf_equals_numpy():
    rng = np.random.default_rng(7)
    codec = HeatmapCodec(stride=4, sigma=2.0, max_peaks=30)
    maps = _noisy_maps(codec, rng, 3, (96, 128))
    xy, scores = codec.decode_peaks_tf(maps, top_k=30)
    assert xy.shape == (3, 17, 30, 2) and scores.shape == (3, 17, 30)
    _compare_with_numpy(codec, maps, xy.numpy(), scores.numpy(), 0.1)


def test_decode_peaks_tf_converts_to_tflite_builtins():
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    rng = np.random.default_rng(3)
    codec = HeatmapCodec(stride=4, sigma=2.0, max_peaks=20)
    maps = _noisy_maps(codec, rng, 2, (64, 80))

    @tf.function(input_signature=[tf.TensorSpec([2, 16, 20, 17], tf.float32)])
    def decode(hm):
        return codec.decode_peaks_tf(hm, top_k=20)

    conv = tf.lite.TFLiteConverter.from_concrete_functions([decode.get_concrete_function()], decode)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    interp = Interpreter(model_content=conv.convert())
    interp.allocate_tensors()
    interp.set_tensor(interp.get_input_details()[0]["index"], maps)
    interp.invoke()
    outs = {tuple(d["shape"]): interp.get_tensor(d["index"]) for d in interp.get_output_details()}
    xy, scores = outs[(2, 17, 20, 2)], outs[(2, 17, 20)]
    _compare_with_numpy(codec, maps, xy, scores, 0.1)


def test_round_trip_ap_on_coco_val(coco_val):
    """Encode GT, decode peaks, group by GT identity, score with pycocotools: AP >= 0.99."""
    from kerapose.evaluation import evaluate_keypoints, keypoint_results

    codec = HeatmapCodec(COCO17, stride=4, sigma=2.0)
    results = []
    n_people = 0
    for record in coco_val:
        kp, scores = oracle_keypoints(codec, record)
        n_people += len(kp)
        assert kp.shape == (len(scores), 17, 3)
        results += keypoint_results(record.image_id, kp, scores)
    assert n_people == 27  # every person with keypoints in coco-mini val
    stats = evaluate_keypoints(coco_val.coco, results)
    assert stats["AP"] >= 0.99, stats
    assert stats["AR"] >= 0.99, stats


def test_oracle_keypoints_odd_records(coco_val):
    import dataclasses

    codec = HeatmapCodec()
    record = next(r for r in coco_val if r.num_keypoints_labelled.max() > 0)
    empty = dataclasses.replace(
        record,
        keypoints=np.zeros((0, 17, 3), np.float32),
        boxes=np.zeros((0, 4), np.float32),
        iscrowd=np.zeros(0, bool),
        areas=np.zeros(0, np.float32),
        ann_ids=np.zeros(0, np.int64),
        segmentations=[],
    )
    kp, scores = oracle_keypoints(codec, empty)
    assert kp.shape == (0, 17, 3) and scores.shape == (0,)
    kp, scores = oracle_keypoints(codec, record)
    gt = record.keypoints[record.num_keypoints_labelled > 0]
    lab = gt[..., 2] > 0
    assert np.all(kp[~lab] == 0)
    assert np.abs(kp[lab][:, :2] - gt[lab][:, :2]).max() < 1.0
