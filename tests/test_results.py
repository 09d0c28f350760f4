"""predictions.json rows (kerapose.predict._results) are valid COCO keypoint results for any person
model, and kerapose.evaluation.evaluate_results_file scores any COCO results file.

References: pycocotools' own ``COCO.loadRes`` + ``COCOeval`` run on the written file as it is,
and kerapose.evaluation.evaluate_keypoints on the same poses in COCO-17. Poses are the coco-mini
val ground truth with noise (OpenPose-18 poses: the same people through the skeleton table, the
neck added), so no network runs.
"""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from kerapose.evaluation import (
    KEYPOINT_METRICS, evaluate_keypoints, evaluate_results_file, keypoint_results, write_results,
)
from kerapose.predict import _results
from kerapose.skeleton import KeypointSet, coco17_to_openpose18

SCALE = 0.5  # the network ran on a half-size image: _results maps coordinates back


def _noisy_people(coco_val) -> list[tuple[int, str, np.ndarray, np.ndarray, np.ndarray]]:
    """Per image: (image id, file name, COCO-17 keypoints [N, 17, 3] (x, y, score), scores, boxes)."""
    rng = np.random.default_rng(3)
    out = []
    for rec in coco_val:
        m = (~rec.iscrowd) & (rec.num_keypoints_labelled > 0)
        kp = rec.keypoints[m].astype(np.float64)
        centre = (rec.boxes[m, None, :2] + rec.boxes[m, None, 2:]) / 2
        kp[..., :2] = np.where(kp[..., 2:] > 0, kp[..., :2], centre)  # unlabelled: on the person
        kp[..., :2] += rng.normal(0, 6.0, kp[..., :2].shape)
        kp[..., 2] = rng.uniform(0.2, 1.0, kp.shape[:2])
        out.append((rec.image_id, rec.file_name, kp, rng.uniform(0.1, 1.0, len(kp)), rec.boxes[m].astype(np.float64)))
    return out


def _cocoeval_file(ann_file: str, results_file: str) -> np.ndarray:
    """pycocotools on the file as it is: the reference."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(ann_file)
        ev = COCOeval(gt, gt.loadRes(results_file), "keypoints")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


@pytest.mark.parametrize("model_set", ["coco17", "openpose18"])
def test_prediction_rows_score_with_pycocotools_as_is(coco_val, coco_mini_root, tmp_path, model_set):
    people = _noisy_people(coco_val)
    ours, rows = [], []
    for image_id, name, kp, scores, boxes in people:
        ours += keypoint_results(image_id, kp, scores)
        model_kp = coco17_to_openpose18(kp) if model_set == "openpose18" else kp.copy()
        model_kp[..., :2] *= SCALE  # as the network saw them
        poses = {"keypoints": model_kp.astype(np.float32), "scores": scores.astype(np.float32),
                 "boxes": (boxes * SCALE).astype(np.float32)}
        rows += _results(poses, image_id, name, SCALE, keypoint_set=model_set)
    path = str(tmp_path / "predictions.json")
    write_results(rows, path)

    written = json.load(open(path))
    assert len(written) == len(ours) > 20
    for row in written:
        assert len(row["keypoints"]) == 17 * 3 and row["keypoint_set"] == model_set
        assert len(row["bbox"]) == 4
        if model_set == "coco17":
            assert "model_keypoints" not in row
        else:  # model_keypoints: the model's own order, in original pixels
            own = np.asarray(row["model_keypoints"]).reshape(18, 3)
            coco = np.asarray(row["keypoints"]).reshape(17, 3)
            np.testing.assert_allclose(own[0], coco[0], atol=1e-3)  # nose
            np.testing.assert_allclose(own[1, :2], (coco[5, :2] + coco[6, :2]) / 2, atol=1e-3)  # neck

    ann_file = str(coco_mini_root / "annotations" / "person_keypoints_val2017.json")
    reference = evaluate_keypoints(coco_val, ours)
    assert 0.2 < reference["AP"] < 0.95  # noisy enough that a wrong mapping would show
    stats = _cocoeval_file(ann_file, path)  # no kerapose code between the file and pycocotools
    for metric in ("AP", "AP50", "AP75", "AR"):
        assert stats[KEYPOINT_METRICS.index(metric)] == pytest.approx(reference[metric], abs=1e-6), metric
    from_file = evaluate_results_file(path, str(coco_mini_root), "val2017")
    for metric in KEYPOINT_METRICS:
        assert from_file[metric] == pytest.approx(reference[metric], abs=1e-6), metric


def test_rows_of_a_non_person_set_and_non_finite_poses():
    hand = KeypointSet("test_results_hand3", ("wrist", "thumb", "index"), (), ((0, 1), (0, 2)), (0.05, 0.03, 0.03))
    kp = np.arange(2 * 3 * 3, dtype=np.float32).reshape(2, 3, 3)
    poses = {"keypoints": kp, "scores": np.array([0.9, 0.8], np.float32), "boxes": np.zeros((2, 4), np.float32)}
    rows = _results(poses, 5, "a.jpg", 1.0, keypoint_set=hand)
    assert [len(r["keypoints"]) for r in rows] == [9, 9]  # its own keypoints: no COCO equivalent
    assert all(r["keypoint_set"] == hand.name and "model_keypoints" not in r for r in rows)

    bad = dict(poses, keypoints=kp.copy())
    bad["keypoints"][1, 2, 0] = np.nan
    with pytest.warns(RuntimeWarning, match="1 pose"):
        rows = _results(bad, 5, "a.jpg", 1.0, keypoint_set=hand)
    assert len(rows) == 1 and rows[0]["score"] == pytest.approx(0.9)
    nan_box = dict(poses, boxes=np.array([[0, 0, 1, 1], [np.inf, 0, 1, 1]], np.float32))
    with pytest.warns(RuntimeWarning):
        assert len(_results(nan_box, 5, "a.jpg", 1.0, keypoint_set=hand)) == 1
    # OpenPose-18: a NaN neck alone (dropped from the COCO keypoints) still leaves the row out,
    # since model_keypoints would carry it
    op = {"keypoints": np.ones((1, 18, 3), np.float32), "scores": np.ones(1, np.float32),
          "boxes": np.zeros((1, 4), np.float32)}
    op["keypoints"][0, 1, 0] = np.nan
    with pytest.warns(RuntimeWarning):
        assert _results(op, 5, "a.jpg", 1.0, keypoint_set="openpose18") == []


# ----------------------------------------------------------------------------- results files


def _gt_rows(ann_file: str, image_ids: list[int]) -> list[dict]:
    """Results written by hand from the annotation file: each labelled person, shifted a little."""
    data = json.load(open(ann_file))
    rows = []
    for ann in data["annotations"]:
        if ann["image_id"] in image_ids and ann["num_keypoints"] > 0 and not ann["iscrowd"]:
            kp = list(ann["keypoints"])
            for j in range(0, len(kp), 3):
                kp[j] += 3.0 if kp[j + 2] else ann["bbox"][0]
                kp[j + 1] += 0 if kp[j + 2] else ann["bbox"][1]
            rows.append({"image_id": ann["image_id"], "category_id": 1, "keypoints": kp,
                         "score": 0.5 + 0.01 * (ann["id"] % 7)})
    return rows


def test_evaluate_results_file_on_a_hand_written_file(coco_mini_root, tmp_path):
    ann_file = str(coco_mini_root / "annotations" / "person_keypoints_val2017.json")
    ids = sorted({a["image_id"] for a in json.load(open(ann_file))["annotations"]})[:8]
    path = tmp_path / "other_tool.json"
    path.write_text(json.dumps(_gt_rows(ann_file, ids)))
    got = evaluate_results_file(str(path), str(coco_mini_root), "val2017")
    ref = _cocoeval_file(ann_file, str(path))
    assert [got[m] for m in KEYPOINT_METRICS] == pytest.approx(list(ref), abs=1e-9)
    assert 0.0 < got["AP"] < 1.0  # images without results count their people as misses
    only = evaluate_results_file(str(path), str(coco_mini_root), "val2017", image_ids=ids)
    assert only["AP"] > got["AP"]


def test_evaluate_results_file_errors(coco_mini_root, tmp_path):
    root = str(coco_mini_root)
    ann_file = str(coco_mini_root / "annotations" / "person_keypoints_val2017.json")
    good = _gt_rows(ann_file, sorted({a["image_id"] for a in json.load(open(ann_file))["annotations"]})[:2])[0]

    def run(content) -> str:
        path = tmp_path / "r.json"
        path.write_text(content if isinstance(content, str) else json.dumps(content))
        return str(path)

    with pytest.raises(FileNotFoundError, match="results file not found"):
        evaluate_results_file(str(tmp_path / "nope.json"), root, "val2017")
    with pytest.raises(FileNotFoundError, match="annotation file not found"):
        evaluate_results_file(run([good]), root, "test2099")
    with pytest.raises(ValueError, match="not valid JSON"):
        evaluate_results_file(run('[{"image_id": 1,'), root, "val2017")
    with pytest.raises(ValueError, match="expected a JSON list"):
        evaluate_results_file(run({"image_id": 1}), root, "val2017")
    with pytest.raises(ValueError, match=r"results\[1\] is a int"):
        evaluate_results_file(run([good, 3]), root, "val2017")
    with pytest.raises(ValueError, match=r"results\[0\]: missing \['score'\]"):
        evaluate_results_file(run([{k: v for k, v in good.items() if k != "score"}]), root, "val2017")
    op = dict(good, keypoints=good["keypoints"] + [1.0, 2.0, 1.0])  # 18 keypoints
    with pytest.raises(ValueError, match=r"keypoints has 54 values, expected 51.*'openpose18'"):
        evaluate_results_file(run([good, op]), root, "val2017")
    with pytest.raises(ValueError, match="keypoints has 3 values"):
        evaluate_results_file(run([dict(good, keypoints=[1, 2, 3])]), root, "val2017")
    with pytest.raises(ValueError, match="finite"):
        evaluate_results_file(run('[' + json.dumps(good).replace('"score": ', '"score": NaN, "x": ') + ']'),
                              root, "val2017")
    with pytest.raises(ValueError, match="finite numbers, got 'a'"):
        evaluate_results_file(run([dict(good, keypoints=["a"] * 51)]), root, "val2017")
    with pytest.raises(ValueError, match=r"2 result\(s\) name 1 image id\(s\) .*\[424242\]"):
        evaluate_results_file(run([good, dict(good, image_id=424242), dict(good, image_id=424242)]), root, "val2017")
    with pytest.raises(ValueError, match="category_id 7"):
        evaluate_results_file(run([dict(good, category_id=7)]), root, "val2017")
    # an empty file is valid: nothing detected
    assert evaluate_results_file(run([]), root, "val2017")["AP"] == 0.0


# ----------------------------------------------------------------------------- predict -> pycocotools


def _predict_and_score(model: str, coco_mini_root, tmp_path, capsys, *extra: str) -> tuple[float, dict, dict]:
    """``kerapose predict`` on every val2017 image, then (1) ``COCO.loadRes`` + ``COCOeval`` on its
    predictions.json as it is, (2) ``kerapose eval --results`` on that file, (3) ``kerapose eval
    --model`` on the same model and split."""
    from kerapose.cli import main

    val = coco_mini_root / "val2017"
    ann = str(coco_mini_root / "annotations" / "person_keypoints_val2017.json")
    assert main(["predict", model, str(val), "--out", str(tmp_path / "pred"), "--no-draw", "--json", *extra]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == 28 and summary["errors"] == []
    stats = _cocoeval_file(ann, summary["predictions"])
    common = ["--data-root", str(coco_mini_root), "--split", "val2017", "--json"]
    assert main(["eval", "--results", summary["predictions"], *common]) == 0
    from_file = json.loads(capsys.readouterr().out)
    assert main(["eval", "--model", model, *common, *extra]) == 0
    direct = json.loads(capsys.readouterr().out)
    return float(stats[0]), from_file, direct


def test_predict_json_scores_as_is_and_equals_eval_for_the_imported_network(coco_mini_root, shared_dir, tmp_path,
                                                                             capsys):
    from kerapose.weights.tfpose import import_tfpose

    path = str(tmp_path / "tfpose.keras")
    import_tfpose(str(shared_dir / "weights" / "tfpose-mobilenet-v2-small" / "graph_opt.pb"), path)
    ap, from_file, direct = _predict_and_score(path, coco_mini_root, tmp_path, capsys)
    print(f"\ntf-pose network: predictions.json AP {ap:.4f}; eval --results {from_file['AP']:.4f}; "
          f"eval --model {direct['AP']:.4f}")
    assert round(ap, 3) == 0.197  # a trained network at native resolution: the README's and the benchmark's figure
    assert from_file["AP"] == pytest.approx(ap, abs=1e-6) and direct["AP"] == pytest.approx(ap, abs=1e-6)


def test_predict_json_scores_as_is_and_equals_eval_for_a_multiposenet(coco_mini_root, tmp_path, capsys):
    import keras

    from kerapose.models import MultiPoseNet

    keras.utils.set_random_seed(0)
    path = str(tmp_path / "mpn.keras")
    MultiPoseNet("resnet18", fpn_size=32, keypoint_head_size=16, keypoint_fuse_size=32, prn_hidden=16,
                 backbone_width=0.25).save(path)
    extra = ("--input-size", "128", "128", "--score-threshold", "0.0")
    ap, from_file, direct = _predict_and_score(path, coco_mini_root, tmp_path, capsys, *extra)
    assert direct["people"] > 0  # random weights: people are found, few are right
    assert from_file["AP"] == pytest.approx(ap, abs=1e-6) and direct["AP"] == pytest.approx(ap, abs=1e-6)
