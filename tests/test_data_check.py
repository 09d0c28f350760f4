"""Broken annotations: skipped or repaired while loading, counted by kind with an example, reported
once per run by the training pipelines, and listed without training by check_dataset.

The dataset is written by the test: small generated images and a COCO-format file holding good
people and one or two annotations of every broken kind (kerapose.data.coco.ISSUE_KINDS).
"""

from __future__ import annotations

import json
import os
import re

import cv2
import numpy as np
import pytest

from kerapose.data.check import check_dataset
from kerapose.data.coco import ISSUE_KINDS, CocoKeypoints

H, W = 96, 128
SPLIT = "broken"
FILE = f"person_keypoints_{SPLIT}.json"


def _person(ann_id: int, image_id: int, **changes) -> dict:
    kp = []
    for j in range(17):
        kp += [30.0 + 2 * j, 15.0 + 3 * j, 2]
    ann = {"id": ann_id, "image_id": image_id, "category_id": 1, "iscrowd": 0, "bbox": [20.0, 10.0, 60.0, 70.0],
           "area": 3000.0, "num_keypoints": 17, "keypoints": kp,
           "segmentation": [[20.0, 10.0, 80.0, 10.0, 80.0, 80.0, 20.0, 80.0]]}
    ann.update(changes)
    return ann


# annotation id -> the kind it must be counted as (None: good)
BROKEN = {
    4: "invalid bbox", 5: "invalid bbox", 6: "keypoints wrong length", 7: "num_keypoints wrong",
    8: "degenerate polygon", 9: "image not found", 10: "keypoints outside image", 11: "duplicate annotation id",
    12: "bbox partly outside image", 13: "bbox outside image", 14: "invalid keypoints", 15: "invalid keypoints",
    16: "missing keypoints", 17: "invalid iscrowd", 18: "invalid area", 19: "invalid segmentation",
    21: "image not found",
}
KEPT = {1, 2, 3, 7, 8, 10, 12, 16, 18, 19}


def _annotations() -> list[dict]:
    good = _person(1, 1)
    anns = [good, _person(2, 2), _person(3, 3)]
    kp = list(good["keypoints"])
    outside, vis3, text = list(kp), list(kp), list(kp)
    outside[0], vis3[2], text[4] = 500.0, 3, "12"
    rle = {"size": [10, 10], "counts": [100]}  # not the image's size
    anns += [
        _person(4, 1, bbox=[20.0, float("nan"), 60.0, 70.0]),
        _person(5, 2, bbox=[20.0, 10.0, -60.0, 70.0]),
        _person(6, 3, keypoints=kp + [1.0, 1.0, 2]),
        _person(7, 1, num_keypoints=3),
        _person(8, 2, segmentation=[[10.0, 10.0, 20.0, 20.0], good["segmentation"][0]]),
        _person(9, 999),
        _person(10, 3, keypoints=outside),
        _person(1, 2),  # duplicate id
        _person(12, 1, bbox=[-5.0, 10.0, 60.0, 70.0]),
        _person(13, 2, bbox=[500.0, 10.0, 60.0, 70.0]),
        _person(14, 3, keypoints=vis3),
        _person(15, 1, keypoints=text),
        _person(16, 2, keypoints=[], num_keypoints=0),
        _person(17, 3, iscrowd=2),
        {k: v for k, v in _person(18, 1).items() if k != "area"},
        _person(19, 2, iscrowd=1, keypoints=[0] * 51, num_keypoints=0, segmentation=rle),
        {k: v for k, v in _person(20, 3).items() if k != "image_id"},
        _person(21, 7),  # on an invalid image entry
    ]
    return anns


@pytest.fixture(scope="module")
def broken_root(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("broken")
    (root / SPLIT).mkdir()
    (root / "annotations").mkdir()
    rng = np.random.default_rng(0)
    images = []
    for i in (1, 2, 3, 4, 5, 6):
        images.append({"id": i, "file_name": f"{i:04d}.jpg", "height": H, "width": W})
        if i in (1, 2, 3, 6):
            cv2.imwrite(str(root / SPLIT / f"{i:04d}.jpg"), rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
    images[5]["height"] = 100  # image 6: the entry's size is not the file's
    (root / SPLIT / "0005.jpg").write_bytes(b"not a jpeg")
    # image 4 has no file; image 7's entry is invalid
    images.append({"id": 7, "file_name": "0007.jpg", "height": 0, "width": W})
    data = {"images": images, "annotations": _annotations(),
            "categories": [{"id": 1, "name": "person", "keypoints": [f"k{j}" for j in range(17)], "skeleton": []}]}
    with open(root / "annotations" / FILE, "w") as f:
        json.dump(data, f)  # NaN written as JSON's NaN literal, as numpy-based writers do
    return str(root)


def _expected_counts() -> dict:
    counts: dict = {"invalid image entry": 1, "invalid annotation": 1}
    for kind in BROKEN.values():
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def test_each_broken_kind_is_skipped_or_repaired_and_counted(broken_root):
    ds = CocoKeypoints(broken_root, SPLIT)
    issues = ds.annotation_issues
    assert issues.counts == _expected_counts()
    for kind, example in issues.examples.items():
        assert FILE in example, example
    first = {}
    for ann_id, kind in BROKEN.items():  # file order: the example is the first of its kind
        first.setdefault(kind, 1 if kind == "duplicate annotation id" else ann_id)
    for kind, ann_id in first.items():
        assert re.search(rf"annotation {ann_id}\b", issues.examples[kind]), (kind, issues.examples[kind])
    assert "annotations[19]" in issues.examples["invalid annotation"]  # no image_id: named by position
    assert "annotations[10]" in issues.examples["duplicate annotation id"]
    skipped = sum(n for k, n in issues.counts.items() if ISSUE_KINDS[k][:2] == ("annotation", "skipped"))
    assert issues.skipped_annotations == ds.skipped_annotations == skipped == 11
    assert issues.repairs == 7 and issues.skipped_images == 1

    # the usable annotations, repaired
    assert set(ds.coco.anns) == KEPT and sorted(ds.image_ids) == [1, 2, 3, 4, 5, 6]
    anns = ds.coco.anns
    assert anns[7]["num_keypoints"] == 17
    assert anns[8]["segmentation"] == [_person(8, 2)["segmentation"][0]]
    assert anns[10]["keypoints"][0] == W and anns[10]["keypoints"][1:3] == [15.0, 2]
    assert anns[12]["bbox"] == [0.0, 10.0, 55.0, 70.0]
    assert anns[16]["keypoints"] == [0.0] * 51 and anns[16]["num_keypoints"] == 0
    assert anns[18]["area"] == 60.0 * 70.0
    assert anns[19]["segmentation"] == []
    rec = ds.record(3)
    assert sorted(rec.ann_ids.tolist()) == [3, 10] and rec.keypoints[list(rec.ann_ids).index(10), 0, 0] == W

    report = issues.report()
    for kind, n in _expected_counts().items():
        assert f"{n} " in report and kind in report


def test_cleaned_ground_truth_scores_with_pycocotools(broken_root):
    from kerapose.evaluation import evaluate_keypoints, keypoint_results

    ds = CocoKeypoints(broken_root, SPLIT)
    results = []
    for rec in ds:
        keep = (~rec.iscrowd) & (rec.num_keypoints_labelled > 0)
        results += keypoint_results(rec.image_id, rec.keypoints[keep], np.ones(int(keep.sum())))
    assert evaluate_keypoints(ds, results)["AP"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="not a valid COCO annotation file.*check_dataset"):
        evaluate_keypoints(os.path.join(broken_root, "annotations", FILE), results)  # the raw file


def test_pipelines_train_on_it_and_report_once(broken_root, capsys):
    from kerapose.data.augment import AugmentConfig
    from kerapose.data.paf_targets import PafTargets
    from kerapose.data.pipeline import MultiPoseNetTargets, SkipCounter, keypoint_dataset

    ds = CocoKeypoints(broken_root, SPLIT)
    skips = SkipCounter()
    mpn = MultiPoseNetTargets("coco17", (64, 64), intermediate_levels=(3,))
    batches = list(keypoint_dataset(ds, mpn, batch_size=2, shuffle=False, repeat=False, deterministic=True,
                                    skips=skips))
    assert sum(len(images) for images, _ in batches) == 3 and skips.total() == 0
    for images, targets in batches:
        assert set(targets) == set(mpn.output_shapes)
        assert all(np.isfinite(t.numpy()).all() for t in targets.values())
        assert targets["heatmaps"].shape[1:] == (16, 16, 17 + 2)
        assert float(targets["heatmaps"][..., :17].numpy().max()) > 0.5
    paf = PafTargets("openpose18", (64, 64), stages=1)
    aug = AugmentConfig(output_size=(64, 64))
    images, targets = next(iter(keypoint_dataset(ds, paf, aug, batch_size=3, repeat=False, deterministic=True)))
    assert images.shape == (3, 64, 64, 3) and set(targets) == {"pafs_stage1", "heatmaps_stage1"}
    assert targets["pafs_stage1"].shape == (3, 8, 8, 38 + 1)
    assert all(np.isfinite(t.numpy()).all() for t in targets.values())

    out = capsys.readouterr().out
    assert out.count(f"{FILE}: 11 annotation(s) skipped, 7 repair(s), 1 image(s) skipped") == 1  # once per run
    for kind in _expected_counts():
        assert kind in out
    assert "annotation 4 (image 1): bbox [20.0, nan, 60.0, 70.0]" in out


def test_check_dataset_lists_everything_without_training(broken_root):
    report = check_dataset(broken_root, SPLIT)
    expected = dict(_expected_counts(), **{"image file missing": 1})
    assert report.issues.counts == expected and not report.ok
    assert (report.images, report.annotations) == (7, 21)
    assert (report.usable_images, report.usable_annotations, report.labelled_people) == (5, 10, 8)
    assert "0004.jpg" in report.issues.examples["image file missing"]

    decoded = check_dataset(broken_root, SPLIT, decode_images=True)
    assert decoded.issues.counts == dict(expected, **{"unreadable image": 1, "image size mismatch": 1})
    assert decoded.usable_images == 3
    text = decoded.summary()
    for kind, n in decoded.issues.counts.items():
        assert any(kind in line and f" {n} " in line for line in text.splitlines()), kind
    assert "e.g. " in text and "0005.jpg" in text
    as_json = json.loads(json.dumps(decoded.as_dict()))
    assert as_json["skipped_annotations"] == 11 and as_json["ok"] is False
    assert {r["kind"] for r in as_json["issues"]} == set(decoded.issues.counts)
    assert as_json["issues"][0]["action"] == "skipped"


def test_check_dataset_on_clean_coco_and_file_errors(coco_mini_root, tmp_path):
    report = check_dataset(str(coco_mini_root), "val2017", decode_images=True)
    assert report.ok and report.issues.counts == {}
    assert (report.images, report.usable_images, report.labelled_people) == (28, 28, 27)
    assert "no problems found" in report.summary()
    with pytest.raises(FileNotFoundError, match="annotation file not found"):
        check_dataset(str(tmp_path), "val2017")
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "person_keypoints_x.json").write_text("[" * 100_000)
    with pytest.raises(ValueError, match="not valid JSON"):
        check_dataset(str(tmp_path), "x")
    (tmp_path / "annotations" / "person_keypoints_x.json").write_text('{"images": 3}')
    with pytest.raises(ValueError, match="'images' must be a list"):
        check_dataset(str(tmp_path), "x")


def test_restrict_is_a_view_that_leaves_the_loader_whole(coco_train):
    # a session-wide loader narrowed in place once cut a later test's 86 people to 9
    total = len(coco_train)
    first, second = coco_train.image_ids[1], coco_train.image_ids[0]
    view = coco_train.restrict([first, second])
    assert [r.image_id for r in view] == [first, second]
    assert len(coco_train) == total and coco_train.image_ids == sorted(coco_train.image_ids)
    with pytest.raises(ValueError, match=r"data.image_ids: \[-1\] not in split 'train2017'"):
        coco_train.restrict([first, -1])
