"""StrongPose codec: targets on hand-made people, the oracle on coco-mini val, numpy vs graph decoder.

The numpy decoder (``StrongPoseCodec.decode``, scatter-based Hough voting, seed-by-seed greedy
loop) is the reference of the in-graph one (``strongpose_decode_tf``, gather-based voting, one
loop step per person): both must give the same people on every val image.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from kerapose.codecs.grid import cell_to_pixel
from kerapose.codecs.strongpose import StrongPoseCodec, mid_range_edges
from kerapose.evaluation import evaluate_keypoints, keypoint_results
from kerapose.models.strongpose.decoder import StrongPoseDecoder, hough_tf, strongpose_decode_tf
from kerapose.oracle import run_oracle
from kerapose.skeleton import COCO17

MAPS = ("heatmaps", "short_offsets", "mid_offsets")

# A standing person facing the camera, COCO-17 order, in units of body height (x, y).
TEMPLATE = np.array([
    [0.00, 0.06], [0.03, 0.04], [-0.03, 0.04], [0.06, 0.06], [-0.06, 0.06],
    [0.12, 0.20], [-0.12, 0.20], [0.16, 0.36], [-0.16, 0.36], [0.18, 0.50], [-0.18, 0.50],
    [0.09, 0.52], [-0.09, 0.52], [0.10, 0.74], [-0.10, 0.74], [0.10, 0.96], [-0.10, 0.96],
])


def person(cx: float, top: float, height: float) -> np.ndarray:
    kp = np.zeros((17, 3))
    kp[:, :2] = TEMPLATE * height + (cx, top)
    kp[:, 2] = 2
    return kp


@pytest.fixture(scope="module")
def codec() -> StrongPoseCodec:
    return StrongPoseCodec()


@pytest.fixture(scope="module")
def graph_decode(codec):
    ch = codec.channels
    spec = [tf.TensorSpec([None, None, None, ch[n]]) for n in MAPS]
    return tf.function(lambda h, s, m: strongpose_decode_tf(h, s, m, codec, max_people=20), input_signature=spec)


def unpad(out: dict, i: int = 0) -> dict:
    n = int(out["num_poses"][i])
    got = {k: np.asarray(out[k])[i] for k in ("keypoints", "scores", "boxes")}
    for v in got.values():
        assert not np.any(v[n:])  # padding is zero
    return {k: v[:n] for k, v in got.items()}


def assert_same_people(got: dict, want: dict) -> None:
    """The same people with the same scores, both best first. People whose scores tie up to
    rounding may come in either order (float32 graph, float64 numpy), so they are paired by
    their keypoints."""
    assert len(got["scores"]) == len(want["scores"])
    if not len(want["scores"]):
        return
    for out in (got, want):
        assert np.all(np.diff(out["scores"]) <= 1e-6)
    dist = np.abs(got["keypoints"][:, None, :, :2] - want["keypoints"][None, :, :, :2]).max(axis=(2, 3))
    pair = dist.argmin(1)
    assert sorted(pair.tolist()) == list(range(len(pair)))
    np.testing.assert_allclose(got["keypoints"][..., :2], want["keypoints"][pair, :, :2], atol=1e-2)
    np.testing.assert_allclose(got["keypoints"][..., 2], want["keypoints"][pair, :, 2], atol=1e-4)
    np.testing.assert_allclose(got["scores"], want["scores"][pair], atol=1e-4)
    np.testing.assert_allclose(got["scores"], want["scores"], atol=1e-4)  # the order is by score
    np.testing.assert_allclose(got["boxes"], want["boxes"][pair], atol=1e-2)


# ----------------------------------------------------------------------------- targets


def test_edges_are_the_limbs_and_two_limb_pairs():
    one = mid_range_edges("coco17", hops=1)
    assert one.tolist() == [list(limb) for limb in COCO17.limbs] + [[b, a] for a, b in COCO17.limbs]
    two = mid_range_edges("coco17")
    assert len(two) == 2 * 45 and two[: len(COCO17.limbs)].tolist() == one[: len(COCO17.limbs)].tolist()
    undirected = {frozenset(e) for e in two.tolist()}
    assert len(undirected) == 45 and all(len(e) == 2 for e in undirected)
    neighbours = {i: {b for a, b in one.tolist() if a == i} for i in range(17)}
    for a, b in two[2 * len(COCO17.limbs):].tolist():  # two limbs apart: a common neighbour, not a limb
        assert neighbours[a] & neighbours[b] and b not in neighbours[a]
    assert StrongPoseCodec().channels == {"heatmaps": 17, "short_offsets": 34, "mid_offsets": 180, "body": 1}


def test_targets_on_a_hand_made_pair_of_people(codec):
    """Disks hold exactly the cells whose centre lies within R; every offset lands on its keypoint,
    of the nearest person; mid-range offsets only where both ends are labelled."""
    kp = np.stack([person(40.0, 10.0, 90.0), person(70.0, 14.0, 90.0)])
    kp[1, 9, 2] = 0  # person 2's left wrist is unlabelled
    t = codec.encode_keypoints(kp, (120, 110))
    h, w = 15, 14
    assert t["heatmaps"].shape == (h, w, 17) and t["mid_offsets"].shape == (h, w, 180)
    cx = cell_to_pixel(np.arange(w), 8)[None, :]
    cy = cell_to_pixel(np.arange(h), 8)[:, None]
    for k in range(17):
        labelled = kp[kp[:, k, 2] > 0, k, :2]
        d2 = np.stack([(cx - x) ** 2 + (cy - y) ** 2 for x, y in labelled])  # [n, h, w]
        disk = d2.min(0) <= 16**2
        np.testing.assert_array_equal(t["heatmaps"][..., k], disk.astype(np.float32))
        near = labelled[d2.argmin(0)]  # [h, w, 2]
        lands = np.stack([cx + t["short_offsets"][..., 2 * k], cy + t["short_offsets"][..., 2 * k + 1]], -1)
        np.testing.assert_allclose(lands[disk], near[disk], atol=1e-4)
        assert not np.any(t["short_offsets"][..., 2 * k:2 * k + 2][~disk])
    edges = codec.edges.tolist()
    e = edges.index([7, 9])  # left elbow -> left wrist: only person 1 has both
    disk1 = (cx - kp[0, 7, 0]) ** 2 + (cy - kp[0, 7, 1]) ** 2 <= 16**2
    np.testing.assert_array_equal(t["mid_mask"][..., e], disk1.astype(np.float32))
    lands = np.stack([cx + t["mid_offsets"][..., 2 * e], cy + t["mid_offsets"][..., 2 * e + 1]], -1)
    np.testing.assert_allclose(lands[disk1], np.broadcast_to(kp[0, 9, :2], lands[disk1].shape), atol=1e-4)
    e = edges.index([9, 7])  # wrist -> elbow from person 1's wrist disk only
    assert t["mid_mask"][..., e].sum() == ((cx - kp[0, 9, 0]) ** 2 + (cy - kp[0, 9, 1]) ** 2 <= 16**2).sum()


def test_encode_record_adds_body_and_ignore_weights(coco_val, codec):
    record = coco_val.record(coco_val.image_ids[0])
    t = codec.encode(record)
    grid = t["heatmaps"].shape[:2]
    assert grid == (-(-record.height // 8), -(-record.width // 8))
    assert t["body"].shape == t["weights"].shape == grid + (1,)
    assert 0 < t["body"].mean() < 1 and t["weights"].min() >= 0 and t["weights"].max() == 1


def test_hough_matches_brute_force_splatting(codec):
    rng = np.random.default_rng(0)
    heat = rng.uniform(0, 1, (6, 7, 17))
    short = rng.uniform(-20, 20, (6, 7, 34))
    want = np.zeros((6, 7, 17))
    for i in range(6):
        for j in range(7):
            for k in range(17):
                vx = j + np.clip(short[i, j, 2 * k] / 8, -2, 2)
                vy = i + np.clip(short[i, j, 2 * k + 1] / 8, -2, 2)
                for ti in range(6):
                    for tj in range(7):
                        wgt = max(0, 1 - abs(vx - tj)) * max(0, 1 - abs(vy - ti))
                        want[ti, tj, k] += heat[i, j, k] * wgt
    want /= np.pi * 2**2
    np.testing.assert_allclose(codec.hough(heat, short), want, atol=1e-12)
    got = hough_tf(tf.constant(heat[None], tf.float32), tf.constant(short[None], tf.float32), codec)
    np.testing.assert_allclose(got[0], want, atol=1e-5)


# ----------------------------------------------------------------------------- decoding


def test_people_on_cell_centres_decode_exactly_with_score_one(codec, graph_decode):
    """Keypoints at cell centres: every vote of a disk lands on one cell, so the Expected-OKS of
    every keypoint is p * exp(0) = 1, and so is each person's score."""
    kp = np.stack([person(60.0, 20.0, 150.0), person(190.0, 30.0, 120.0)])
    kp[..., :2] = cell_to_pixel(np.round((kp[..., :2] - 3.5) / 8), 8)
    t = codec.encode_keypoints(kp, (200, 260))
    out = codec.decode(*(t[n] for n in MAPS))
    assert len(out["scores"]) == 2
    order = np.argsort(out["keypoints"][:, 0, 0])
    np.testing.assert_allclose(out["keypoints"][order, :, :2], kp[..., :2], atol=1e-9)
    np.testing.assert_allclose(out["keypoints"][..., 2], 1.0, atol=1e-9)
    np.testing.assert_allclose(out["scores"], 1.0, atol=1e-9)
    np.testing.assert_allclose(out["boxes"][order], np.concatenate([kp[..., :2].min(1), kp[..., :2].max(1)], -1))
    assert_same_people(unpad(graph_decode(*(t[n][None] for n in MAPS))), out)


def recompute_soft_nms(out: dict, k: int = 17, r: float = 10.0) -> np.ndarray:
    """Eq. (1) from the returned keypoints: rank by the mean keypoint score, drop claimed keypoints."""
    kp = out["keypoints"]
    order = np.argsort(-kp[..., 2].mean(-1), kind="stable")
    final = np.zeros(len(kp))
    for rank, j in enumerate(order):
        claimed = np.zeros(k, bool)
        for jj in order[:rank]:
            claimed |= np.hypot(*(kp[j, :, :2] - kp[jj, :, :2]).T) <= r
        final[j] = kp[j, ~claimed, 2].sum() / k
    return final


def test_soft_nms_follows_equation_1(codec, graph_decode):
    """Two people whose left wrists nearly touch: the lower-ranked one loses that keypoint's score."""
    a, b = person(60.0, 20.0, 150.0), person(110.0, 24.0, 140.0)
    b[9, :2] = a[9, :2] + (4.0, 3.0)
    t = codec.encode_keypoints(np.stack([a, b]), (200, 200))
    soft = codec.decode(*(t[n] for n in MAPS))
    mean = StrongPoseCodec(instance_score="mean").decode(*(t[n] for n in MAPS))
    assert len(soft["scores"]) == len(mean["scores"]) == 2
    np.testing.assert_allclose(soft["scores"], recompute_soft_nms(soft), atol=1e-12)
    np.testing.assert_allclose(np.sort(mean["scores"]), np.sort(mean["keypoints"][..., 2].mean(-1)), atol=1e-12)
    assert soft["scores"][1] < np.sort(mean["scores"])[0] - 1e-3  # the claimed wrist no longer counts
    assert_same_people(unpad(graph_decode(*(t[n][None] for n in MAPS))), soft)


def test_oracle_on_coco_mini_val(coco_mini_root):
    """`kerapose oracle --codec strongpose`: every val person found, AP >= 0.95 by pycocotools;
    with the limbs alone as mid-range edges (`strongpose-limbs`) people come out in pieces."""
    r = run_oracle("strongpose", str(coco_mini_root), "val2017")
    assert r["counters"] == {"people": 27, "people_found": 27, "detections": 28}
    assert r["AP"] >= 0.95 and r["APM"] >= 0.95 and r["APL"] >= 0.95 and r["AP50"] == 1.0
    assert len(r["per_keypoint"]) == 17
    limbs = run_oracle("strongpose-limbs", str(coco_mini_root), "val2017")
    assert limbs["counters"]["detections"] > 28 and limbs["AP"] < r["AP"] - 0.05


def test_graph_decoder_agrees_with_numpy_on_every_val_image(coco_val, codec, graph_decode):
    """Same people (keypoints to 0.01 px, scores to 1e-4) on every image; same AP; eq. (1) holds."""
    res_np, res_tf, people = [], [], 0
    for record in coco_val:
        t = codec.encode(record)
        want = codec.decode(*(t[n] for n in MAPS), max_people=20)
        got = unpad(graph_decode(*(t[n][None] for n in MAPS)))
        assert_same_people(got, want)
        np.testing.assert_allclose(want["scores"], recompute_soft_nms(want), atol=1e-9)
        people += len(want["scores"])
        res_np += keypoint_results(record.image_id, want["keypoints"], want["scores"])
        res_tf += keypoint_results(record.image_id, got["keypoints"], got["scores"])
    assert people >= 27
    ap_np = evaluate_keypoints(coco_val.coco, res_np, image_ids=coco_val.image_ids)["AP"]
    ap_tf = evaluate_keypoints(coco_val.coco, res_tf, image_ids=coco_val.image_ids)["AP"]
    assert ap_np >= 0.95 and abs(ap_np - ap_tf) <= 0.01


def test_max_people_batch_and_empty_maps(codec):
    """The graph takes the first M people in seed order, like numpy's max_people; images of a batch
    decode independently; empty maps give no people."""
    kps = np.stack([person(40.0 + 55 * i, 10.0, 80.0) for i in range(4)])
    t = codec.encode_keypoints(kps, (100, 240))
    want = codec.decode(*(t[n] for n in MAPS), max_people=3)
    assert len(want["scores"]) == 3
    empty = {n: np.zeros_like(t[n]) for n in MAPS}
    batch = [np.stack([t[n], empty[n]]) for n in MAPS]
    out = strongpose_decode_tf(*batch, codec, max_people=3)
    assert out["num_poses"].numpy().tolist() == [3, 0]
    assert_same_people(unpad(out, 0), want)
    assert not np.any(out["keypoints"].numpy()[1])
    assert len(codec.decode(*(empty[n] for n in MAPS))["scores"]) == 0


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"radius": 0}, "radius: expected a positive number, got 0"),
    ({"stride": 0}, "stride: expected an integer >= 1, got 0"),
    ({"nms_radius": -1.0}, "nms_radius"),
    ({"peak_threshold": -0.1}, "peak_threshold: expected a finite value >= 0"),
    ({"max_seeds": 0}, "max_seeds"),
    ({"refine_steps": -1}, "refine_steps"),
    ({"keypoint_score": "oks"}, "keypoint_score: expected one of expected_oks, hough, got 'oks'"),
    ({"instance_score": "hard"}, "instance_score: expected one of soft_nms, mean, got 'hard'"),
    ({"edge_hops": 3}, "edge_hops: expected 1 or 2, got 3"),
    ({"keypoint_set": "nope"}, "unknown keypoint set"),
])
def test_bad_codec_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StrongPoseCodec(**kwargs)


def test_bad_maps_and_keypoints(codec):
    good = {"heatmaps": np.zeros((4, 5, 17)), "short_offsets": np.zeros((4, 5, 34)),
            "mid_offsets": np.zeros((4, 5, 180))}
    with pytest.raises(ValueError, match=r"short_offsets: expected \[h, w, 34\], got shape \(4, 5, 17\)"):
        codec.decode(good["heatmaps"], good["heatmaps"], good["mid_offsets"])
    with pytest.raises(ValueError, match="mid_offsets: grid"):
        codec.decode(good["heatmaps"], good["short_offsets"], np.zeros((4, 6, 180)))
    with pytest.raises(ValueError, match="max_people"):
        codec.decode(*good.values(), max_people=0)
    with pytest.raises(ValueError, match=r"keypoints: expected \[N, 17, 3\]"):
        codec.encode_keypoints(np.zeros((2, 17, 2)), (10, 10))
    with pytest.raises(ValueError, match="image_hw"):
        codec.encode_keypoints(np.zeros((1, 17, 3)), (0, 10))
    batch = {k: v[None].astype(np.float32) for k, v in good.items()}
    with pytest.raises(ValueError, match=r"mid_offsets: expected \[B, h, w, 180\]"):
        strongpose_decode_tf(batch["heatmaps"], batch["short_offsets"], batch["short_offsets"], codec)
    with pytest.raises(ValueError, match="max_people: expected a positive integer, got 0"):
        strongpose_decode_tf(*batch.values(), codec, max_people=0)
    with pytest.raises(ValueError, match="max_people"):
        StrongPoseDecoder(max_people=0)


def test_people_grown_several_at_a_time_equal_one_at_a_time(codec):
    """seeds_per_step only changes how many candidates one loop step grows: 12 people, M = 10."""
    kps = np.stack([person(30.0 + 50 * (i % 6), 10.0 + 110 * (i // 6), 95.0) for i in range(12)])
    t = codec.encode_keypoints(kps, (230, 320))
    want = codec.decode(*(t[n] for n in MAPS), max_people=10)
    assert len(want["scores"]) == 10
    batch = [t[n][None] for n in MAPS]
    for per_step in (1, 3, 8):
        got = tf.function(lambda *a, p=per_step: strongpose_decode_tf(*a, codec, max_people=10,
                                                                       seeds_per_step=p))(*batch)
        assert_same_people(unpad(got), want)
