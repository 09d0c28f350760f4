"""kerapose.data.synthetic: the written COCO set loads, scores AP 1.0 against itself with
pycocotools, and its labels agree with the pixels the renderer drew."""

from __future__ import annotations

import contextlib
import copy
import io
import os

import cv2
import numpy as np
import pytest
from pycocotools.cocoeval import COCOeval

from kerapose.data.coco import CocoKeypoints, annotation_path
from kerapose.data.synthetic import generate_synthetic_coco, render_scene, scene_rng
from kerapose.skeleton import COCO17, KeypointSet

SIZE = (128, 128)
SEED = 3
RATES = {"crowd_rate": 0.25, "unlabeled_rate": 0.25}  # high, so the ignore cases occur in 24 images


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "coco"
    summary = generate_synthetic_coco(
        str(root), num_train=20, num_val=4, image_size=SIZE, seed=SEED, progress=False, **RATES
    )
    return root, summary


def _anns(ds: CocoKeypoints, image_id: int) -> list[dict]:
    return ds.coco.loadAnns(ds.coco.getAnnIds(imgIds=[image_id], iscrowd=None))


def _gt_as_results(ds: CocoKeypoints, shift: float = 0.0) -> list[dict]:
    res = []
    for ann in ds.coco.loadAnns(ds.coco.getAnnIds(iscrowd=False)):
        if ann["num_keypoints"] == 0:
            continue
        kp = np.asarray(ann["keypoints"], np.float64).reshape(-1, 3)
        kp[:, :2] += shift
        kp[:, 2] = 1.0
        res.append({"image_id": ann["image_id"], "category_id": 1, "keypoints": kp.ravel().tolist(), "score": 1.0})
    return res


def _keypoint_ap(ds: CocoKeypoints, results: list[dict]) -> float:
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(ds.coco, ds.coco.loadRes(copy.deepcopy(results)), "keypoints")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0])


def test_layout_and_coco_keypoints_load(synth):
    root, summary = synth
    assert summary["root"] == str(root)
    ann_ids, image_ids = set(), set()
    for split, n in (("train", 20), ("val", 4)):
        assert summary["splits"][split]["images"] == n
        assert summary["splits"][split]["annotation_file"] == annotation_path(str(root), split)
        ds = CocoKeypoints(str(root), split)
        assert len(ds) == n
        cat = ds.coco.loadCats([ds.category_id])[0]
        assert cat["keypoints"] == list(COCO17.keypoints)
        assert cat["skeleton"] == [[a + 1, b + 1] for a, b in COCO17.limbs]
        for rec in ds:
            assert rec.keypoints.shape[1:] == (17, 3) and rec.keypoints.shape[0] == len(rec.boxes)
            img = cv2.imread(rec.path)
            assert img is not None and img.shape == (*SIZE, 3) and (rec.height, rec.width) == SIZE
            v = rec.keypoints[..., 2]
            assert set(np.unique(v)) <= {0.0, 1.0, 2.0}
            # Unlabelled keypoints are (0, 0, 0), as in COCO.
            assert np.all(rec.keypoints[v == 0][:, :2] == 0)
            ann_ids.update(rec.ann_ids.tolist())
            image_ids.add(rec.image_id)
        assert ds.skipped_annotations == 0
        n_anns = len(ds.coco.getAnnIds(iscrowd=None))
        assert n_anns == summary["splits"][split]["annotations"]
    total = summary["splits"]["train"]["annotations"] + summary["splits"]["val"]["annotations"]
    assert len(ann_ids) == total and len(image_ids) == 24  # unique across both splits


@pytest.mark.parametrize("split", ["train", "val"])
def test_ground_truth_as_results_scores_ap_one(synth, split):
    root, _ = synth
    ds = CocoKeypoints(str(root), split)
    assert _keypoint_ap(ds, _gt_as_results(ds)) == pytest.approx(1.0)
    # The same check fails for keypoints a few pixels off, so it can fail.
    assert _keypoint_ap(ds, _gt_as_results(ds, shift=4.0)) < 0.9


def test_keypoints_in_box_and_visible_ones_on_their_mask(synth):
    root, _ = synth
    ds = CocoKeypoints(str(root), "train")
    on_mask = total = 0
    for rec in ds:
        for ann in _anns(ds, rec.image_id):
            kp = np.asarray(ann["keypoints"], np.float64).reshape(-1, 3)
            x, y, w, h = ann["bbox"]
            lab = kp[kp[:, 2] > 0]
            assert ann["num_keypoints"] == len(lab)
            assert np.all((lab[:, 0] >= x) & (lab[:, 0] <= x + w) & (lab[:, 1] >= y) & (lab[:, 1] <= y + h))
            mask = ds.coco.annToMask(ann).astype(bool)
            assert ann["area"] == pytest.approx(mask.sum())
            vis = kp[kp[:, 2] == 2]
            iy, ix = np.round(vis[:, 1]).astype(int), np.round(vis[:, 0]).astype(int)
            on_mask += int(mask[iy, ix].sum())
            total += len(vis)
            # The box is the mask's box, grown only to hold labelled keypoints.
            ys, xs = np.nonzero(mask)
            assert x <= xs.min() and y <= ys.min() and x + w >= xs.max() + 1 and y + h >= ys.max() + 1
    assert total > 100 and on_mask == total


def test_labels_match_the_rendered_pixels(synth):
    """Re-render each image from its seed: it is the JPEG on disk, every annotation's mask is
    its person's visible pixels, and visible keypoints sit on drawn (non-background) pixels."""
    root, _ = synth
    ds = CocoKeypoints(str(root), "train")
    differ = checked = occluded = 0
    for i, rec in enumerate(ds):
        scene = render_scene(scene_rng(SEED, "train", i), SIZE, (1, 4), **RATES)
        ok, jpeg = cv2.imencode(".jpg", scene.image, [cv2.IMWRITE_JPEG_QUALITY, 95])
        np.testing.assert_array_equal(cv2.imread(rec.path), cv2.imdecode(jpeg, cv2.IMREAD_COLOR))
        people = [p for p in scene.people if p.visible.any()]
        anns = _anns(ds, rec.image_id)
        crowd = [a for a in anns if a["iscrowd"]]
        anns = [a for a in anns if not a["iscrowd"]]
        assert len(anns) == len(people) and len(crowd) == int(scene.crowd is not None)
        if crowd:
            np.testing.assert_array_equal(ds.coco.annToMask(crowd[0]).astype(bool), scene.crowd)
        later = np.zeros(SIZE, bool)
        for p, ann in reversed(list(zip(people, anns))):
            np.testing.assert_array_equal(ds.coco.annToMask(ann).astype(bool), p.visible)
            kp = np.asarray(ann["keypoints"], np.float64).reshape(-1, 3)
            if not p.labelled:
                assert ann["num_keypoints"] == 0
                later |= p.mask
                continue
            iy, ix = np.round(kp[:, 1]).astype(int), np.round(kp[:, 0]).astype(int)
            for j in np.flatnonzero(kp[:, 2] == 2):
                patch = (slice(max(iy[j] - 1, 0), iy[j] + 2), slice(max(ix[j] - 1, 0), ix[j] + 2))
                d = np.abs(scene.image[patch].astype(float) - scene.background[patch]).sum(-1).mean()
                differ += d > 30
                checked += 1
            for j in np.flatnonzero(kp[:, 2] == 1):  # occluded: covered by someone drawn later
                assert later[iy[j], ix[j]] and not p.visible[iy[j], ix[j]]
                occluded += 1
            later |= p.mask
    assert checked > 100 and differ >= 0.95 * checked
    assert occluded > 0


def test_several_people_overlap_and_ignore_cases(synth):
    root, summary = synth
    ds = CocoKeypoints(str(root), "train")
    max_people, overlapping = 0, 0
    for rec in ds:
        keep = (~rec.iscrowd) & (rec.num_keypoints_labelled > 0)
        b = rec.boxes[keep]
        max_people = max(max_people, len(b))
        for i in range(len(b)):
            for j in range(i + 1, len(b)):
                iw = min(b[i, 2], b[j, 2]) - max(b[i, 0], b[j, 0])
                ih = min(b[i, 3], b[j, 3]) - max(b[i, 1], b[j, 1])
                overlapping += iw > 0 and ih > 0
    assert max_people >= 2 and overlapping >= 1
    s = summary["splits"]["train"]
    assert s["crowd_regions"] >= 1 and s["unlabeled_people"] >= 1 and s["occluded_keypoints"] >= 1
    crowd = [a for a in ds.coco.loadAnns(ds.coco.getAnnIds(iscrowd=True))]
    assert all(isinstance(a["segmentation"]["counts"], list) and a["num_keypoints"] == 0 for a in crowd)


def test_left_limbs_lighter_than_right():
    """The left/right cue a flip must respect: per person, left elbows and knees are drawn
    lighter than right ones (most of the time; a limb can cover the other side's joint)."""
    lighter = pairs = 0
    for i in range(25):
        scene = render_scene(scene_rng(7, "train", i), SIZE, (1, 3), 0.0, 0.0)
        gray = cv2.cvtColor(scene.image, cv2.COLOR_BGR2GRAY).astype(float)
        for p in scene.people:
            kp = p.keypoints
            for left, right in ((7, 8), (13, 14)):
                if kp[left, 2] == 2 and kp[right, 2] == 2:
                    yl, xl = int(round(kp[left, 1])), int(round(kp[left, 0]))
                    yr, xr = int(round(kp[right, 1])), int(round(kp[right, 0]))
                    lighter += gray[yl, xl] > gray[yr, xr]
                    pairs += 1
    assert pairs > 30 and lighter >= 0.75 * pairs


def test_clothed_style_marks_the_joints():
    """style="clothed" draws the upper and lower segments of arms and legs in different colours,
    so that elbows and knees are colour boundaries: the midpoints of shoulder-elbow and
    elbow-wrist (hip-knee, knee-ankle) differ in colour far more often than in the stick style,
    where a limb is one colour. Its limbs are also thicker (adult proportions)."""
    def contrast(style: str) -> tuple[list, float]:
        diffs, area, people = [], 0.0, 0
        for i in range(25):
            scene = render_scene(scene_rng(7, "train", i), SIZE, (1, 3), 0.0, 0.0, style=style)
            img = scene.image.astype(float)
            for p in scene.people:
                kp = p.keypoints
                height = np.ptp(kp[kp[:, 2] > 0, 1]) if (kp[:, 2] > 0).sum() > 1 else 0.0
                if height > 0:
                    area += p.mask.sum() / height**2
                    people += 1
                for a, b, c in ((5, 7, 9), (6, 8, 10), (11, 13, 15), (12, 14, 16)):
                    if (kp[[a, b, c], 2] == 2).all():
                        m1, m2 = (kp[a, :2] + kp[b, :2]) / 2, (kp[b, :2] + kp[c, :2]) / 2
                        (x1, y1), (x2, y2) = np.rint(m1).astype(int), np.rint(m2).astype(int)
                        if p.visible[y1, x1] and p.visible[y2, x2]:
                            diffs.append(np.abs(img[y1, x1] - img[y2, x2]).sum())
        return diffs, area / people

    stick, stick_area = contrast("stick")
    clothed, clothed_area = contrast("clothed")
    assert len(clothed) > 40 and len(stick) > 40
    assert np.mean(np.asarray(clothed) > 40) > 0.7 > 0.3 > np.mean(np.asarray(stick) > 40)
    assert clothed_area > 1.1 * stick_area  # mask area per squared keypoint height
    with pytest.raises(ValueError, match="style"):
        render_scene(scene_rng(7, "train", 0), SIZE, (1, 3), style="cartoon")


def test_person_height_sets_the_figure_sizes():
    def extents(person_height):
        out = []
        for i in range(15):
            scene = render_scene(scene_rng(4, "train", i), SIZE, (1, 2), 0.0, 0.0, person_height=person_height)
            for p in scene.people:
                kp = p.keypoints[p.keypoints[:, 2] > 0]
                out.append(max(np.ptp(kp[:, 0]), np.ptp(kp[:, 1])) / SIZE[0])
        return np.asarray(out)

    small, large = extents((0.2, 0.3)), extents((0.7, 0.95))
    # keypoints span most of a figure's height (head top and feet lie beyond them)
    assert small.max() < 0.3 and np.median(large) > 0.5 and large.max() <= 0.95


def test_deterministic_for_a_seed(tmp_path):
    kw = dict(num_train=3, num_val=2, image_size=SIZE, progress=False, **RATES)
    a = generate_synthetic_coco(str(tmp_path / "a"), seed=5, **kw)
    b = generate_synthetic_coco(str(tmp_path / "b"), seed=5, **kw)
    c = generate_synthetic_coco(str(tmp_path / "c"), seed=6, **kw)
    for split in ("train", "val"):
        ja = open(a["splits"][split]["annotation_file"], "rb").read()
        assert ja == open(b["splits"][split]["annotation_file"], "rb").read()
        assert ja != open(c["splits"][split]["annotation_file"], "rb").read()
        names = sorted(os.listdir(a["splits"][split]["image_dir"]))
        assert names == sorted(os.listdir(b["splits"][split]["image_dir"])) and names
        for n in names:
            ia = cv2.imread(os.path.join(a["splits"][split]["image_dir"], n))
            ib = cv2.imread(os.path.join(b["splits"][split]["image_dir"], n))
            np.testing.assert_array_equal(ia, ib)


def test_refuses_to_overwrite_and_is_atomic(tmp_path, monkeypatch):
    import kerapose.data.synthetic as synthetic

    out = tmp_path / "ds"
    out.mkdir()  # an empty directory is fine
    generate_synthetic_coco(str(out), 2, 1, image_size=SIZE, progress=False)
    with pytest.raises(ValueError, match="not empty"):
        generate_synthetic_coco(str(out), 3, 1, image_size=SIZE, progress=False)
    assert len(CocoKeypoints(str(out), "train")) == 2
    generate_synthetic_coco(str(out), 3, 1, image_size=SIZE, progress=False, overwrite=True)
    assert len(CocoKeypoints(str(out), "train")) == 3
    assert sorted(os.listdir(tmp_path)) == ["ds"]  # no temporary or old trees left behind

    # Interrupted generation: nothing appears at out_dir and the temporary tree is removed.
    calls = {"n": 0}
    real = synthetic.render_scene

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic, "render_scene", failing)
    with pytest.raises(KeyboardInterrupt):
        generate_synthetic_coco(str(tmp_path / "new"), 4, 1, image_size=SIZE, progress=False)
    assert sorted(os.listdir(tmp_path)) == ["ds"]
    with pytest.raises(KeyboardInterrupt):  # the existing set survives a failed overwrite
        calls["n"] = 0
        generate_synthetic_coco(str(out), 4, 1, image_size=SIZE, progress=False, overwrite=True)
    assert len(CocoKeypoints(str(out), "train")) == 3 and sorted(os.listdir(tmp_path)) == ["ds"]

    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        generate_synthetic_coco(str(tmp_path / "file"), 1, 1, image_size=SIZE, progress=False)


def test_keypoint_subset_and_bad_arguments(tmp_path, synth):
    root, _ = synth
    upper = KeypointSet(
        name="synthetic_test_upper",
        keypoints=("right_wrist", "left_wrist", "nose", "left_shoulder", "right_shoulder"),
        flip_pairs=((0, 1), (3, 4)),
        limbs=((2, 3), (2, 4), (3, 1), (4, 0)),
        sigmas=(0.062, 0.062, 0.026, 0.079, 0.079),
    )
    out = tmp_path / "upper"
    generate_synthetic_coco(str(out), 3, 1, image_size=SIZE, seed=SEED, progress=False, keypoint_set=upper, **RATES)
    sub = CocoKeypoints(str(out), "train", keypoint_set=upper)
    full = CocoKeypoints(str(root), "train")  # same seed: the same scenes, other columns
    cols = [COCO17.index(n) for n in upper.keypoints]
    for image_id in sub.image_ids:
        np.testing.assert_array_equal(sub.record(image_id).keypoints, full.record(image_id).keypoints[:, cols])
    assert sub.coco.loadCats([1])[0]["skeleton"] == [[3, 4], [3, 5], [4, 2], [5, 1]]

    bad = [
        (dict(keypoint_set="openpose18"), "neck"),
        (dict(num_train=-1), "num_train"),
        (dict(num_train=0, num_val=0), "at least one image"),
        (dict(image_size=(16, 64)), "image_size"),
        (dict(people=(3, 2)), "people"),
        (dict(crowd_rate=1.5), "crowd_rate"),
        (dict(segmentation="mask"), "segmentation"),
        (dict(style="cartoon"), "style"),
        (dict(person_height=(0.9, 0.5)), "person_height"),
        (dict(seed=-1), "seed"),
    ]
    for kwargs, match in bad:
        args = dict(num_train=1, num_val=1, progress=False) | kwargs
        with pytest.raises(ValueError, match=match):
            generate_synthetic_coco(str(tmp_path / "bad"), **args)
    assert not (tmp_path / "bad").exists()
