"""PoseDet codec: candidate grid, coarse assignment, packing, and the oracle scored by pycocotools."""

import json

import numpy as np
import pytest

from kerapose.codecs.grid import cell_to_pixel
from kerapose.codecs.posedet import PoseDetCodec, default_size_ranges, pose_areas
from kerapose.evaluation import oks


def _person(cx: float, cy: float, size: float, k: int = 17, seed: int = 0):
    """A person of box side ``size`` around (cx, cy): joints spread over the box, all labelled."""
    rng = np.random.default_rng(seed)
    kp = np.zeros((k, 3))
    kp[:, 0] = cx + rng.uniform(-0.4, 0.4, k) * size
    kp[:, 1] = cy + rng.uniform(-0.4, 0.4, k) * size
    kp[:, 2] = 2
    return kp, np.array([cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2])


def test_candidates_follow_the_grid_convention():
    codec = PoseDetCodec()
    locs, strides = codec.candidates((96, 160))
    sizes = codec.grid_sizes((96, 160))
    assert sizes == [(12, 20), (6, 10), (3, 5), (2, 3)]
    assert len(locs) == codec.num_candidates((96, 160)) == sum(h * w for h, w in sizes)
    # level 0 first, row-major: candidate i*w + j sits at the centre of cell (i, j)
    np.testing.assert_allclose(locs[21], [cell_to_pixel(1, 8), cell_to_pixel(1, 8)])
    np.testing.assert_allclose(locs[240], [cell_to_pixel(0, 16), cell_to_pixel(0, 16)])
    assert strides[239] == 8 and strides[240] == 16 and strides[-1] == 64
    assert default_size_ranges((8, 16, 32, 64)) == ((0.0, 64.0), (64.0, 128.0), (128.0, 256.0), (256.0, np.inf))
    np.testing.assert_array_equal(codec.level_of([10, 63.9, 64, 127, 128, 255, 256, 5000]), [0, 0, 1, 1, 2, 2, 3, 3])


def test_encode_reads_back_exactly_and_assigns_the_nearest_candidate():
    codec = PoseDetCodec()
    people = [_person(100.3, 90.7, 50, seed=1), _person(300, 200, 200, seed=2), _person(170, 60, 100, seed=3)]
    kp = np.stack([p[0] for p in people])
    kp[0, 3] = 0  # an unlabelled joint: no target, no weight
    boxes = np.stack([p[1] for p in people])
    t = codec.encode(kp, boxes, (320, 448))
    assert t["num_people"] == 3 and t["lost"] == 0 and t["dropped"] == 0
    locs, strides = codec.candidates((320, 448))
    assigned = np.flatnonzero(t["gt_index"] >= 0)
    assert len(assigned) == 3
    for cand in assigned:
        slot = t["gt_index"][cand]
        lab = kp[slot, :, 2] > 0
        decoded = locs[cand] + strides[cand] * t["coarse_offsets"][cand]
        np.testing.assert_allclose(decoded[lab], kp[slot, lab, :2], atol=1e-4)
        np.testing.assert_array_equal(t["coarse_weights"][cand], lab)
        # the level of the person's size, the candidate nearest its joints' centroid
        assert strides[cand] == (8, 32, 16)[slot]
        centroid = kp[slot, lab, :2].mean(0)
        same_level = strides == strides[cand]
        nearest = np.flatnonzero(same_level)[np.argmin(np.linalg.norm(locs[same_level] - centroid, axis=1))]
        assert cand == nearest
    assert not t["coarse_weights"][t["gt_index"] < 0].any()
    # box centres pick another candidate for the lopsided person
    lopsided = kp[1:2].copy()
    lopsided[0, :, 0] = np.linspace(210, 250, 17)  # joints in the box's left part
    tb = PoseDetCodec(assign="box_center").encode(lopsided, boxes[1:2], (320, 448))
    tc = codec.encode(lopsided, boxes[1:2], (320, 448))
    cb, cc = np.flatnonzero(tb["gt_index"] >= 0)[0], np.flatnonzero(tc["gt_index"] >= 0)[0]
    np.testing.assert_allclose(locs[cb], [cell_to_pixel(round((300 - 15.5) / 32), 32), locs[cb][1]])
    assert locs[cc][0] < locs[cb][0]
    # heatmaps: one per level, peaks of 1 at the joints' cells
    assert [h.shape for h in t["heatmaps"]] == [(40, 56, 17), (20, 28, 17), (10, 14, 17), (5, 7, 17)]
    assert t["heatmaps"][0].max() == pytest.approx(1.0, abs=0.05)


def test_shared_candidate_loses_the_farther_person_and_pack_layout():
    codec = PoseDetCodec(max_people=4)
    a, box = _person(100, 100, 40, seed=4)
    a[:, :2] += cell_to_pixel(12, 8) - a[:, :2].mean(0)  # centroid on the centre of cell (12, 12)
    b = a.copy()
    b[:, :2] += 1.5  # same level, same nearest cell, centre a little farther from it
    crowd_box = np.array([200, 10, 260, 90])
    kp = np.stack([b, a, np.zeros_like(a), np.zeros_like(a)])
    boxes = np.stack([box + 1.5, box, crowd_box, np.array([10, 200, 60, 250])])
    t = codec.encode(kp, boxes, (256, 320), iscrowd=[False, False, True, False], areas=[900, 1000, 0, 50])
    assert t["lost"] == 1 and t["num_people"] == 2
    cand = np.flatnonzero(t["gt_index"] >= 0)
    assert len(cand) == 1
    locs, _ = codec.candidates((256, 320))
    dist = [np.linalg.norm(p[:, :2].mean(0) - locs[cand[0]]) for p in (b, a)]
    assert t["gt_index"][cand[0]] == int(np.argmin(dist))
    # the crowd region and the person without keypoints: ignored as negatives
    inside = (locs[:, 0] >= 200) & (locs[:, 0] <= 260) & (locs[:, 1] >= 10) & (locs[:, 1] <= 90)
    assert inside.any() and not t["cls_weights"][inside].any()
    assert t["cls_weights"][~inside].sum() < (~inside).sum()  # the keypoint-less person's box too
    packed = codec.pack(t)
    rows = packed["candidates"]
    n_cand = codec.num_candidates((256, 320))
    assert rows.shape == (n_cand + 4, 3 * 17 + 1)
    np.testing.assert_array_equal(rows[:n_cand, 0], t["gt_index"])
    np.testing.assert_array_equal(rows[:n_cand, 2], t["cls_weights"])
    np.testing.assert_allclose(rows[n_cand:n_cand + 2, :51].reshape(2, 17, 3), kp[:2], atol=1e-4)
    np.testing.assert_allclose(rows[n_cand:, 51], [900, 1000, 0, 0])
    assert sorted(packed) == ["candidates", "heatmaps_p3", "heatmaps_p4", "heatmaps_p5", "heatmaps_p6"]


def test_oracle_decode_and_oks_nms():
    codec = PoseDetCodec()
    a, box_a = _person(80, 80, 60, seed=5)
    b, box_b = _person(250, 120, 60, seed=6)
    t = codec.encode(np.stack([a, b]), np.stack([box_a, box_b]), (256, 320))
    kp, scores = codec.oracle_decode(t)
    assert len(kp) == 2 and np.all(scores == 1)
    np.testing.assert_allclose(np.diag(oks(np.stack([a, b]), [3600, 3600], kp)), 1.0, atol=1e-6)
    # the same pose twice, on two levels (boxes of two sizes): both encoded, OKS-NMS keeps one
    big = np.array([box_a[0] - 30, box_a[1] - 30, box_a[2] + 30, box_a[3] + 30])
    dup = codec.encode(np.stack([a, a + [[3, 0, 0]]]), np.stack([box_a, big]), (256, 320))
    assert dup["lost"] == 0 and (dup["gt_index"] >= 0).sum() == 2
    assert len(codec.oracle_decode(dup, nms_threshold=0.5)[0]) == 1
    assert len(codec.oracle_decode(dup, nms_threshold=1.0)[0]) == 2
    areas = pose_areas(np.array([[[0, 0], [10, 5]], [[0, 0], [100, 50]]]))
    np.testing.assert_allclose(areas, [1024.0, 5000.0])


def test_oracle_on_coco_mini_val(coco_mini_root, capsys):
    """`kerapose oracle --codec posedet` (centroid, the paper's) and `posedet-box-center` (its
    ablation): COCO AP of the ground truth read back from the assigned candidates, and the people
    lost to a shared candidate (none on coco-mini val)."""
    from kerapose.cli import main

    res = {}
    for codec in ("posedet", "posedet-box-center"):
        assert main(["oracle", "--codec", codec, "--data-root", str(coco_mini_root), "--split", "val2017",
                     "--json"]) == 0
        res[codec] = json.loads(capsys.readouterr().out)
    for codec, r in res.items():
        print(codec, {k: round(r[k], 4) for k in ("AP", "AP50", "AR")}, r["counters"])
        assert r["AP"] >= 0.95 and r["images"] == 28 and r["metric"] == "keypoints"
        assert r["counters"] == {"people": 27, "lost": 0, "dropped": 0}


def _tiny_coco(root, people: list[np.ndarray], size=(256, 320)):
    """A one-image COCO-layout split ``val2017`` under ``root`` with the given [17, 3] people."""
    import cv2

    (root / "annotations").mkdir(parents=True)
    (root / "val2017").mkdir()
    cv2.imwrite(str(root / "val2017" / "1.jpg"), np.zeros((*size, 3), np.uint8))
    anns = []
    for i, kp in enumerate(people):
        lab = kp[kp[:, 2] > 0, :2]
        x1, y1 = lab.min(0) - 4
        x2, y2 = lab.max(0) + 4
        anns.append({"id": i + 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": float((x2 - x1) * (y2 - y1)),
                     "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                     "keypoints": [float(v) for v in kp.reshape(-1)], "num_keypoints": int((kp[:, 2] > 0).sum()),
                     "segmentation": [[float(x1), float(y1), float(x2), float(y1), float(x2), float(y2),
                                       float(x1), float(y2)]]})
    data = {"images": [{"id": 1, "file_name": "1.jpg", "height": size[0], "width": size[1]}], "annotations": anns,
            "categories": [{"id": 1, "name": "person", "supercategory": "person",
                            "keypoints": [f"k{i}" for i in range(17)], "skeleton": []}]}
    (root / "annotations" / "person_keypoints_val2017.json").write_text(json.dumps(data))


def test_oracle_counts_people_lost_to_a_shared_candidate(tmp_path):
    """Two people of one size whose centres fall on one candidate: the oracle reports one lost
    (kerapose.oracle sums an oracle's counters over the split) and AP drops to what one person
    of two gives."""
    from kerapose.oracle import run_oracle

    a, _ = _person(100, 100, 40, seed=4)
    a[:, :2] += cell_to_pixel(12, 8) - a[:, :2].mean(0)
    b = a.copy()
    b[:, 0] = 2 * a[:, 0].mean() - a[:, 0]  # mirrored about the same centre: another pose, same centroid
    b[:, :2] += 1.0
    _tiny_coco(tmp_path, [a, b])
    res = run_oracle("posedet", str(tmp_path), "val2017")
    assert res["counters"] == {"people": 2, "lost": 1, "dropped": 0}
    assert 0.3 < res["AP"] < 0.7


def test_bad_arguments_are_value_errors():
    with pytest.raises(ValueError, match=r"assign: expected one of centroid, box_center, got 'middle'"):
        PoseDetCodec(assign="middle")
    with pytest.raises(ValueError, match="strides: expected increasing positive integers"):
        PoseDetCodec(strides=(16, 8))
    with pytest.raises(ValueError, match="size_ranges: expected one increasing"):
        PoseDetCodec(size_ranges=[(0, 10)])
    codec = PoseDetCodec()
    with pytest.raises(ValueError, match=r"keypoints: expected shape \[N, 17, 3\]"):
        codec.encode(np.zeros((2, 5, 3)), np.zeros((2, 4)), (64, 64))
    with pytest.raises(ValueError, match=r"boxes: expected shape \[2, 4\]"):
        codec.encode(np.zeros((2, 17, 3)), np.zeros((3, 4)), (64, 64))
    with pytest.raises(ValueError, match="image_hw"):
        codec.encode(np.zeros((0, 17, 3)), np.zeros((0, 4)), (0, 64))
