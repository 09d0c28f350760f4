"""kerapose.evaluation against pycocotools on the real coco-mini val annotations."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os

import numpy as np
import pytest
from pycocotools.cocoeval import COCOeval

from kerapose.evaluation import (
    BOX_METRICS,
    KEYPOINT_METRICS,
    box_results,
    evaluate_boxes,
    evaluate_keypoints,
    keypoint_results,
    oks,
    oks_nms,
    write_results,
)
from kerapose.skeleton import COCO17, KeypointSet


def _gt_pose_results(coco_val, rng=None, noise=0.0, score_random=False):
    """The val ground truth as keypoint results; unlabelled keypoints sit at the box centre
    so that every keypoint of a detection lies on its person."""
    res = []
    for rec in coco_val:
        m = (~rec.iscrowd) & (rec.num_keypoints_labelled > 0)
        kp = rec.keypoints[m].astype(np.float64)
        centre = (rec.boxes[m, None, :2] + rec.boxes[m, None, 2:]) / 2
        kp[..., :2] = np.where(kp[..., 2:] > 0, kp[..., :2], centre)
        kp[..., 2] = 1.0
        if noise:
            kp[..., :2] += rng.normal(0, noise, kp[..., :2].shape)
        scores = rng.random(m.sum()) if score_random else np.ones(m.sum())
        res += keypoint_results(rec.image_id, kp, scores)
    return res


def _cocoeval_stats(coco, results, iou_type):
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco, coco.loadRes(copy.deepcopy(results)), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def test_oks_matches_pycocotools_compute_oks(coco_val):
    rng = np.random.default_rng(0)
    coco = coco_val.coco
    results = []
    for rec in coco_val:  # every annotation, crowd and keypoint-less ones included
        kp = rec.keypoints.astype(np.float64).copy()
        kp[..., :2] += rng.normal(0, 8, kp[..., :2].shape)
        results += keypoint_results(rec.image_id, kp, rng.random(len(kp)))
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco, coco.loadRes(copy.deepcopy(results)), "keypoints")
        ev._prepare()
    compared = 0
    for img in coco_val.image_ids:
        ref = ev.computeOks(img, 1)
        if len(ref) == 0:
            continue
        gts, dts = ev._gts[img, 1], ev._dts[img, 1]
        dts = [dts[i] for i in np.argsort([-d["score"] for d in dts], kind="mergesort")]
        g = np.array([a["keypoints"] for a in gts], np.float64).reshape(len(gts), -1, 3)
        d = np.array([a["keypoints"] for a in dts], np.float64).reshape(len(dts), -1, 3)
        areas = np.array([a["area"] for a in gts])
        boxes = np.array([a["bbox"] for a in gts], np.float64)
        boxes[:, 2:] += boxes[:, :2]
        np.testing.assert_allclose(oks(g, areas, d, COCO17.sigmas, gt_boxes=boxes), ref, rtol=1e-10, atol=1e-12)
        # Without boxes, ground truths with no labelled keypoint score 0 and the rest agree.
        labelled = (g[:, :, 2] > 0).any(1)
        plain = oks(g, areas, d, "coco17")
        np.testing.assert_allclose(plain[:, labelled], ref[:, labelled], rtol=1e-10, atol=1e-12)
        assert np.all(plain[:, ~labelled] == 0)
        compared += ref.size
    assert compared > 50


def test_oks_rejects_bad_shapes():
    with pytest.raises(ValueError, match="sigmas"):
        oks(np.zeros((1, 17, 3)), np.ones(1), np.zeros((1, 17, 3)), sigmas=np.ones(5))
    with pytest.raises(ValueError, match="gt_areas"):
        oks(np.zeros((2, 17, 3)), np.ones(3), np.zeros((1, 17, 3)))
    with pytest.raises(ValueError, match="dt_keypoints"):
        oks(np.zeros((1, 17, 3)), np.ones(1), np.zeros((1, 17)))


def test_ground_truth_as_results_gives_ap_one(coco_val):
    res = _gt_pose_results(coco_val)
    assert len(res) == 27
    out = evaluate_keypoints(coco_val, res, per_keypoint=True)
    assert set(out) == set(KEYPOINT_METRICS) | {"per_keypoint"}
    assert out["AP"] == 1.0 and out["AR"] == 1.0
    assert out["per_keypoint"] == {name: 1.0 for name in COCO17.keypoints}


def test_evaluate_keypoints_is_exactly_cocoeval_stats(coco_val):
    rng = np.random.default_rng(1)
    res = _gt_pose_results(coco_val, rng, noise=6.0, score_random=True)
    res += keypoint_results(coco_val.image_ids[0], rng.uniform(0, 300, (3, 17, 3)), rng.random(3))  # false positives
    out = evaluate_keypoints(coco_val.coco, res)
    ref = _cocoeval_stats(coco_val.coco, res, "keypoints")
    assert [out[m] for m in KEYPOINT_METRICS] == [float(v) for v in ref]
    assert 0.0 < out["AP"] < 1.0
    # Restricting to some images: same as COCOeval with params.imgIds.
    ids = coco_val.image_ids[:10]
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco_val.coco, coco_val.coco.loadRes(copy.deepcopy(res)), "keypoints")
        ev.params.imgIds = ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    sub = evaluate_keypoints(coco_val.coco, res, image_ids=ids)
    assert [sub[m] for m in KEYPOINT_METRICS] == [float(v) for v in ev.stats]


def test_results_are_not_mutated(coco_val):
    res = _gt_pose_results(coco_val)
    before = copy.deepcopy(res)
    evaluate_keypoints(coco_val, res)
    assert res == before


def test_per_keypoint_breakdown_drops_only_the_perturbed_keypoint(coco_val):
    rng = np.random.default_rng(2)
    wrist = COCO17.index("left_wrist")
    res = _gt_pose_results(coco_val)
    for r in res:
        kp = np.asarray(r["keypoints"]).reshape(17, 3)
        kp[wrist, :2] += rng.choice([-1, 1], 2) * rng.uniform(10, 25, 2)
        r["keypoints"] = kp.reshape(-1).tolist()
    out = evaluate_keypoints(coco_val, res, per_keypoint=True)
    per = out["per_keypoint"]
    assert per["left_wrist"] < 0.9
    assert all(v == 1.0 for name, v in per.items() if name != "left_wrist")
    assert out["AP"] < 1.0


def test_custom_keypoint_set_sigmas_are_used(coco_val):
    rng = np.random.default_rng(3)
    res = _gt_pose_results(coco_val, rng, noise=10.0)
    wide = KeypointSet(
        name="coco17_wide_sigmas",
        keypoints=COCO17.keypoints,
        flip_pairs=COCO17.flip_pairs,
        limbs=COCO17.limbs,
        sigmas=tuple(3 * s for s in COCO17.sigmas),
    )
    normal = evaluate_keypoints(coco_val, res)
    loose = evaluate_keypoints(coco_val, res, keypoint_set=wide)
    assert loose["AP"] > normal["AP"]


def test_empty_results_give_zeros(coco_val):
    out = evaluate_keypoints(coco_val, [], per_keypoint=True)
    assert all(out[m] == 0.0 for m in KEYPOINT_METRICS)
    assert set(out["per_keypoint"]) == set(COCO17.keypoints)
    assert all(v == 0.0 for v in out["per_keypoint"].values())
    boxes = evaluate_boxes(coco_val, [])
    assert all(boxes[m] == 0.0 for m in BOX_METRICS)


def test_bad_results_raise(coco_val):
    res = _gt_pose_results(coco_val)[:1]
    bad = [dict(res[0], image_id=-5)]
    with pytest.raises(ValueError, match="image_id -5"):
        evaluate_keypoints(coco_val, bad)
    short = [dict(res[0], keypoints=res[0]["keypoints"][:30])]
    with pytest.raises(ValueError, match="expected 51"):
        evaluate_keypoints(coco_val, short)
    with pytest.raises(ValueError, match="image_ids"):
        evaluate_keypoints(coco_val, res, image_ids=[123456789])
    with pytest.raises(ValueError, match="coco_gt"):
        evaluate_keypoints(42, res)


def test_keypoint_results_format_and_nan_rows():
    kp = np.arange(2 * 17 * 3, dtype=np.float64).reshape(2, 17, 3) + 0.123456789
    kp2 = np.concatenate([kp, np.full((1, 17, 3), np.nan)])
    with pytest.warns(RuntimeWarning, match="dropped 1"):
        res = keypoint_results(7, kp2, np.array([0.5, 0.25, 0.9]), category_id=3)
    assert len(res) == 2
    assert res[0]["image_id"] == 7 and res[0]["category_id"] == 3 and res[1]["score"] == 0.25
    assert res[0]["keypoints"] == kp[0].reshape(-1).tolist()  # nothing rounded, per-keypoint scores kept
    ones = keypoint_results(7, kp, np.ones(2), keypoint_scores=False)
    assert ones[0]["keypoints"][2::3] == [1.0] * 17
    assert keypoint_results(1, np.zeros((0, 17, 3)), np.zeros(0)) == []
    with pytest.raises(ValueError, match="keypoints"):
        keypoint_results(1, np.zeros((2, 17)), np.zeros(2))
    with pytest.raises(ValueError, match="scores"):
        keypoint_results(1, np.zeros((2, 17, 3)), np.zeros(3))
    with pytest.warns(RuntimeWarning, match="dropped 1"):
        assert len(keypoint_results(1, np.zeros((2, 17, 3)), np.array([1.0, np.nan]))) == 1


def test_box_results_and_atomic_write(tmp_path):
    boxes = np.array([[10.5, 20.25, 30.5, 60.25], [0, 0, np.nan, 1]])
    with pytest.warns(RuntimeWarning, match="dropped 1"):
        res = box_results(5, boxes, np.float32([0.75, 0.5]))
    assert res == [{"image_id": 5, "category_id": 1, "bbox": [10.5, 20.25, 20.0, 40.0], "score": 0.75}]
    with pytest.raises(ValueError, match="boxes"):
        box_results(5, np.zeros((2, 3)), np.zeros(2))
    path = tmp_path / "sub" / "results.json"
    extra = [{"image_id": np.int64(3), "score": np.float32(0.5), "bbox": np.arange(4.0)}]
    write_results(res + extra, str(path))
    loaded = json.loads(path.read_text())
    assert loaded[0] == res[0] and loaded[1]["bbox"] == [0.0, 1.0, 2.0, 3.0] and loaded[1]["image_id"] == 3
    write_results([], str(path))  # replaces in place
    assert json.loads(path.read_text()) == []
    with pytest.raises(TypeError):
        write_results([{"x": object()}], str(path))
    assert json.loads(path.read_text()) == []  # a failed write leaves the old file
    assert os.listdir(path.parent) == ["results.json"]  # no temporary files left


def test_evaluate_boxes_matches_cocoeval(coco_val):
    rng = np.random.default_rng(4)
    perfect, noisy = [], []
    for rec in coco_val:
        b = rec.boxes[~rec.iscrowd].astype(np.float64)
        perfect += box_results(rec.image_id, b, np.ones(len(b)))
        jitter = b + rng.normal(0, 6, b.shape)
        noisy += box_results(rec.image_id, jitter, rng.random(len(b)))
    out = evaluate_boxes(coco_val, perfect)
    assert out["AP"] == 1.0 and out["AR100"] == 1.0 and out["AR"] == out["AR100"]
    out = evaluate_boxes(coco_val, noisy)
    ref = _cocoeval_stats(coco_val.coco, noisy, "bbox")
    assert [out[m] for m in BOX_METRICS] == [float(v) for v in ref]
    assert 0.0 < out["AP"] < 1.0


def test_oks_nms_removes_shifted_duplicates_keeps_people(coco_val):
    # The 27 labelled people of val, placed in one frame: distinct poses.
    people, areas = [], []
    for rec in coco_val:
        m = (~rec.iscrowd) & (rec.num_keypoints_labelled > 0)
        kp = rec.keypoints[m].astype(np.float64)
        centre = (rec.boxes[m, None, :2] + rec.boxes[m, None, 2:]) / 2
        kp[..., :2] = np.where(kp[..., 2:] > 0, kp[..., :2], centre)
        people.append(kp)
        areas.append(rec.areas[m].astype(np.float64))
    people, areas = np.concatenate(people), np.concatenate(areas)
    people[..., 2] = 0.9
    n = len(people)
    dup = people.copy()
    dup[..., :2] += 1.0  # the same people, shifted by one pixel
    kp = np.concatenate([people, dup])
    scores = np.concatenate([np.linspace(0.6, 0.5, n), np.linspace(0.9, 0.8, n)])
    keep = oks_nms(kp, scores, np.concatenate([areas, areas]), "coco17", threshold=0.9)
    # The duplicates score higher, so they are kept in score order and the originals go.
    np.testing.assert_array_equal(keep, np.arange(n, 2 * n))
    # Distinct people alone are all kept, best score first.
    keep = oks_nms(people, np.arange(n, dtype=float), areas, COCO17.sigmas)
    np.testing.assert_array_equal(keep, np.arange(n)[::-1])
    # The suppression rule is OKS > threshold: consistent with the oks() similarities.
    sim = oks(np.concatenate([people[:1, :, :2], np.ones((1, 17, 1))], -1), areas[:1], dup[:1])[0, 0]
    assert sim > 0.9
    assert len(oks_nms(np.concatenate([people[:1], dup[:1]]), [1.0, 0.5], areas[[0, 0]], threshold=0.999)) == 2
    assert len(oks_nms(np.zeros((0, 17, 3)), np.zeros(0), np.zeros(0))) == 0
    with pytest.raises(ValueError, match="threshold"):
        oks_nms(people, np.ones(n), areas, threshold=1.5)
    with pytest.raises(ValueError, match="areas"):
        oks_nms(people, np.ones(n), areas[:1])
