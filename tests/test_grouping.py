"""OpenPose greedy grouping (kerapose.codecs.grouping) against an independent reference.

The reference below scores candidate limbs pair by pair with scipy's bilinear
``map_coordinates`` and assembles people OpenPose-demo style (a ``subset`` table scanned for
each connection), so the vectorised batch scoring, the exact pruning and the bookkeeping of
``group_people`` are checked against code that shares none of them.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import map_coordinates

from kerapose.codecs.grid import pixel_to_cell
from kerapose.codecs.grouping import group_people, limb_order, score_limb_candidates
from kerapose.codecs.paf import PafCodec
from kerapose.skeleton import COCO17, OPENPOSE18, coco17_to_openpose18

TFPOSE = "data/tfpose-outputs/coco-mini-val2017.npz"

# A standing person facing the camera, COCO-17 order, in units of body height.
TEMPLATE = np.array([
    [0.00, 0.06], [0.03, 0.04], [-0.03, 0.04], [0.06, 0.06], [-0.06, 0.06],
    [0.12, 0.20], [-0.12, 0.20], [0.16, 0.36], [-0.16, 0.36], [0.18, 0.50], [-0.18, 0.50],
    [0.09, 0.52], [-0.09, 0.52], [0.10, 0.74], [-0.10, 0.74], [0.10, 0.96], [-0.10, 0.96],
])


def people(n: int, hw=(480, 640), seed: int = 0, overlap: float = 1.0) -> np.ndarray:
    """``n`` jittered people side by side; ``overlap`` < 1 packs them closer."""
    rng = np.random.default_rng(seed)
    h, w = hw
    cell_w = w / n * overlap
    height = min(0.9 * h, 2.2 * w / n)
    out = np.zeros((n, 17, 3))
    for i in range(n):
        pose = TEMPLATE * height + rng.normal(0, 0.015 * height, TEMPLATE.shape)
        out[i, :, 0] = w / 2 + (i - (n - 1) / 2) * cell_w + pose[:, 0]
        out[i, :, 1] = 0.05 * h + pose[:, 1]
        out[i, :, 2] = 2
    return out


def scene(gt: np.ndarray, hw, keypoint_set="coco17", stride=8):
    codec = PafCodec(keypoint_set, stride=stride)
    heat = codec.heatmap_codec.encode(gt, hw)
    return codec.heatmap_codec.decode_peaks(heat), codec.encode(gt, hw)


# ----------------------------------------------------------------------------- reference


def ref_candidates(peaks, pafs, ks, stride, height, samples=10, thr=0.05, frac=0.8, ratio=0.5):
    """{limb: [(i, j, score)]} accepted, one pair and one sample at a time."""
    out = {}
    for li, (a, b) in enumerate(ks.limbs):
        acc = []
        for i, pa in enumerate(peaks[a]):
            for j, pb in enumerate(peaks[b]):
                d = pb[:2] - pa[:2]
                n = float(np.hypot(*d))
                if n == 0:
                    continue
                u = d / n
                pts = np.array([pa[:2] + t * d for t in np.linspace(0, 1, samples)])
                cells = pixel_to_cell(pts, stride)
                coords = [cells[:, 1], cells[:, 0]]  # rows, cols
                vx = map_coordinates(pafs[..., 2 * li], coords, order=1, mode="nearest")
                vy = map_coordinates(pafs[..., 2 * li + 1], coords, order=1, mode="nearest")
                dots = np.nan_to_num(vx * u[0] + vy * u[1], nan=0.0)
                score = dots.mean() + min(ratio * height / n - 1, 0)
                if (dots > thr).sum() >= frac * samples - 1e-9 and score > 0:
                    acc.append((i, j, score))
        out[li] = acc
    return out


def ref_group(peaks, pafs, ks, stride, height, order, min_parts=4, min_score=0.4, **kw):
    """OpenPose-demo-style assembly over a subset table (K part columns, score, count)."""
    cands = ref_candidates(peaks, pafs, ks, stride, height, **kw)
    k = ks.num_keypoints
    subset = []
    tree, redundant = order
    for li in list(tree) + list(redundant):
        a, b = ks.limbs[li]
        used_a, used_b = set(), set()
        for i, j, s in sorted(cands[li], key=lambda c: -c[2]):
            if i in used_a or j in used_b:
                continue
            used_a.add(i)
            used_b.add(j)
            found = [p for p in subset if p[a] == i or p[b] == j]
            if len(found) == 1:
                p = found[0]
                if p[a] == i and p[b] == -1:
                    p[b] = j
                    p[k] += peaks[b][j][2] + s
                    p[k + 1] += 1
                elif p[b] == j and p[a] == -1:
                    p[a] = i
                    p[k] += peaks[a][i][2] + s
                    p[k + 1] += 1
            elif len(found) == 2:
                p, q = found
                if not any(x >= 0 and y >= 0 for x, y in zip(p[:k], q[:k])):
                    for c in range(k):
                        if q[c] >= 0:
                            p[c] = q[c]
                    p[k] += q[k] + s
                    p[k + 1] += q[k + 1]
                    subset.remove(q)
            elif not found and li in tree:
                p = [-1] * k + [peaks[a][i][2] + peaks[b][j][2] + s, 2]
                p[a], p[b] = i, j
                subset.append(p)
    result = []
    for p in subset:
        if p[k + 1] >= min_parts and p[k] / p[k + 1] >= min_score:
            kp = np.zeros((k, 3))
            for c in range(k):
                if p[c] >= 0:
                    kp[c] = peaks[c][p[c]]
            result.append((kp, p[k] / p[k + 1]))
    return result


def as_sorted(kps: np.ndarray, scores: np.ndarray):
    rows = sorted(zip(kps.reshape(len(kps), kps.shape[1] * 3).round(3).tolist(), np.round(scores, 4).tolist()))
    return [r[0] for r in rows], [r[1] for r in rows]


def assert_same(got, ref):
    kps, scores = got
    ref_kp = np.array([r[0] for r in ref]).reshape(-1, kps.shape[1], 3)
    ref_sc = np.array([r[1] for r in ref])
    assert len(kps) == len(ref_kp)
    g, r = as_sorted(kps, scores), as_sorted(ref_kp, ref_sc)
    np.testing.assert_allclose(np.array(g[0]), np.array(r[0]), atol=2e-3)
    np.testing.assert_allclose(g[1], r[1], atol=2e-4)


# ----------------------------------------------------------------------------- tests


def test_candidates_match_per_pair_reference():
    rng = np.random.default_rng(1)
    hw = (480, 640)
    peaks, pafs = scene(people(4, hw, seed=3, overlap=0.8), hw)
    pafs = pafs + rng.normal(0, 0.3, pafs.shape).astype(np.float32)  # borderline cases
    peaks = [np.concatenate([p, np.c_[rng.uniform(0, 640, 3), rng.uniform(0, 480, 3), np.full(3, 0.5)]])
             for p in peaks]  # false candidates everywhere
    limbs = np.asarray(COCO17.limbs)
    for frac, samples in ((0.8, 10), (0.7, 10), (0.5, 7), (1.0, 4)):
        limb, ia, ib, sc = score_limb_candidates(
            peaks, pafs, limbs, 8, 480.0, num_samples=samples, min_sample_fraction=frac
        )
        ref = ref_candidates(peaks, pafs, COCO17, 8, 480.0, samples=samples, frac=frac)
        got = sorted(zip(limb.tolist(), ia.tolist(), ib.tolist()))
        want = sorted((li, i, j) for li, acc in ref.items() for i, j, _ in acc)
        assert got == want and len(got) > 60
        ref_scores = {(li, i, j): s for li, acc in ref.items() for i, j, s in acc}
        np.testing.assert_allclose(sc, [ref_scores[(l_, i, j)] for l_, i, j in zip(limb, ia, ib)], atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_group_people_matches_reference_on_noisy_crowd(seed):
    rng = np.random.default_rng(seed)
    hw = (400, 600)
    peaks, pafs = scene(people(6, hw, seed=seed, overlap=0.6), hw)
    pafs = pafs + rng.normal(0, 0.25, pafs.shape).astype(np.float32)
    peaks = [p[rng.random(len(p)) > 0.15] for p in peaks]  # missed detections break chains
    peaks = [np.concatenate([p, np.c_[rng.uniform(0, 600, 2), rng.uniform(0, 400, 2), rng.uniform(0.2, 1, 2)]])
             for p in peaks]
    order = limb_order(COCO17)
    for kw in ({}, {"min_parts": 2, "min_person_score": 0.1}):
        got = group_people(peaks, pafs, COCO17, 8, hw, **kw)
        ref = ref_group(peaks, pafs, COCO17, 8, hw[0], order,
                        min_parts=kw.get("min_parts", 4), min_score=kw.get("min_person_score", 0.4))
        assert_same(got, ref)


def test_group_people_matches_reference_on_real_network_output(shared_dir):
    data = np.load(shared_dir / TFPOSE)
    codec = PafCodec("openpose18", peak_threshold=0.05)
    checked = 0
    for image_id in data["ids"][:6]:
        out = data[f"out_{image_id}"].astype(np.float32)
        h, w = (int(v) for v in data[f"image_hw_{image_id}"])
        peaks = codec.heatmap_codec.decode_peaks(out[..., :18])
        got = group_people(peaks, out[..., 19:], OPENPOSE18, 8, (h, w), min_person_score=0.3)
        ref = ref_group(peaks, out[..., 19:], OPENPOSE18, 8, h, limb_order(OPENPOSE18), min_score=0.3)
        assert_same(got, ref)
        checked += len(ref)
    assert checked >= 3


@pytest.mark.parametrize("n", [1, 2, 5, 10, 20])
def test_synthetic_people_recovered_exactly(n):
    hw = (480, 640)
    gt = people(n, hw, seed=n) if n <= 10 else np.concatenate(
        [people(10, (240, 640), seed=n), people(10, (240, 640), seed=n + 1) + [0, 240, 0]])
    peaks, pafs = scene(gt, hw)
    kps, scores = group_people(peaks, pafs, "coco17", 8, hw)
    assert kps.shape == (n, 17, 3) and scores.shape == (n,)
    assert np.all(np.diff(scores) <= 0)
    # Every person found whole, with the right identity: a part taken from a neighbour
    # would be tens of pixels off (the few-pixel slack is neighbouring Gaussians' tails).
    err = np.abs(kps[:, None, :, :2] - gt[None, :, :, :2]).max(axis=(2, 3))  # [found, gt]
    assert np.all(err.min(axis=0) < 4) and len(set(err.argmin(axis=0).tolist())) == n
    # Unit peaks and near-unit limb scores: (17 parts + 16 joining limbs) / 17 parts.
    assert np.all(scores > 1.7) and np.all(scores <= 33 / 17 + 1e-4)


def test_limb_order_roots_and_redundant_limbs():
    tree, redundant = limb_order("openpose18")
    first = OPENPOSE18.limbs[tree[0]]
    assert 1 in first  # the neck starts the tree
    assert sorted(tree + redundant) == list(range(19)) and len(tree) == 17
    tree, redundant = limb_order("coco17")
    assert COCO17.limbs[tree[0]][0] == COCO17.index("left_shoulder")
    assert len(tree) == 16 and len(redundant) == 3
    assert limb_order("coco17", root="nose") == COCO17.spanning_tree(0)
    with pytest.raises(ValueError, match="root"):
        limb_order("coco17", root=40)


def _legs_only():
    """A person with only hips, knees and ankles: two 3-part leg chains joined by the hips."""
    gt = people(1, (480, 640), seed=5)
    gt[0, :11, 2] = 0
    return gt


def test_redundant_limb_merges_fragments_but_never_starts_people():
    hw = (480, 640)
    peaks, pafs = scene(_legs_only(), hw)
    hips = COCO17.limbs.index((11, 12))
    assert hips in limb_order(COCO17)[1]  # redundant with the left-shoulder root
    kps, _ = group_people(peaks, pafs, "coco17", 8, hw)
    assert len(kps) == 1 and (kps[0, :, 2] > 0).sum() == 6  # legs merged through the hips
    cut = pafs.copy()
    cut[..., 2 * hips: 2 * hips + 2] = 0
    assert len(group_people(peaks, cut, "coco17", 8, hw)[0]) == 0  # two 3-part fragments
    assert len(group_people(peaks, cut, "coco17", 8, hw, min_parts=3)[0]) == 2
    # Only the hips present: the redundant limb alone starts nobody, a tree limb would.
    only_hips = [p if k in (11, 12) else p[:0] for k, p in enumerate(peaks)]
    assert len(group_people(only_hips, pafs, "coco17", 8, hw, min_parts=2)[0]) == 0
    tree, redundant = limb_order(COCO17)
    shoulders = COCO17.limbs.index((5, 6))
    swapped = ([hips] + [t for t in tree if t != shoulders], [r for r in redundant if r != hips] + [shoulders])
    assert len(group_people(only_hips, pafs, "coco17", 8, hw, min_parts=2, order=swapped)[0]) == 1


def _line_scene(support_cells: int, magnitude: float = 1.0):
    """Two parts 9 cells apart on row 5 (samples fall on cell centres 0..9) and a field on
    the first ``support_cells`` cells of that row."""
    ks = COCO17
    li = ks.limbs.index((5, 7))
    pafs = np.zeros((11, 12, ks.num_paf_channels), np.float32)
    pafs[5, :support_cells, 2 * li] = magnitude
    x = lambda j: 8 * j + 3.5  # noqa: E731  cell centre at stride 8
    peaks = [np.zeros((0, 3)) for _ in range(17)]
    peaks[5] = np.array([[x(0), x(5), 1.0]])
    peaks[7] = np.array([[x(9), x(5), 1.0]])
    return peaks, pafs, li


@pytest.mark.parametrize("support,accepted", [(8, True), (7, False)])
def test_eighty_percent_of_samples_rule(support, accepted):
    peaks, pafs, li = _line_scene(support)
    limbs = np.asarray(COCO17.limbs)
    limb, _, _, score = score_limb_candidates(peaks, pafs, limbs, 8, 200.0)  # no distance penalty
    assert (li in limb.tolist()) == accepted
    if accepted:
        np.testing.assert_allclose(score, [0.8], atol=1e-6)  # 8 of 10 samples at 1.0
    # 0.7 of the samples suffices with min_sample_fraction=0.7
    limb, _, _, _ = score_limb_candidates(peaks, pafs, limbs, 8, 200.0, min_sample_fraction=0.7)
    assert li in limb.tolist()


def test_distance_prior_uses_image_height():
    peaks, pafs, li = _line_scene(12, magnitude=0.5)  # mean 0.5, limb 72 px long
    limbs = np.asarray(COCO17.limbs)
    # 0.5 * H / 72 - 1 = -0.6 for H = 57.6: 0.5 - 0.6 < 0, rejected; H = 144 gives no penalty.
    assert len(score_limb_candidates(peaks, pafs, limbs, 8, 57.6)[0]) == 0
    limb, _, _, score = score_limb_candidates(peaks, pafs, limbs, 8, 144.0)
    np.testing.assert_allclose(score, [0.5], atol=1e-6)
    limb, _, _, score = score_limb_candidates(peaks, pafs, limbs, 8, 100.0)
    np.testing.assert_allclose(score, [0.5 + 0.5 * 100 / 72 - 1], atol=1e-6)
    # A stricter per-sample threshold rejects the 0.5 field.
    assert len(score_limb_candidates(peaks, pafs, limbs, 8, 144.0, paf_threshold=0.6)[0]) == 0


def test_greedy_matching_is_one_to_one_best_first():
    hw = (480, 640)
    gt = people(1, hw, seed=2)
    peaks, pafs = scene(gt, hw)
    # A second elbow candidate slightly off the true one: worse score, must not be used.
    decoy = peaks[7][0] + [0, 9, 0]
    peaks[7] = np.stack([decoy, peaks[7][0]])
    kps, _ = group_people(peaks, pafs, "coco17", 8, hw)
    assert len(kps) == 1
    np.testing.assert_allclose(kps[0, 7, :2], gt[0, 7, :2], atol=0.05)


def test_thresholds_are_arguments():
    hw = (480, 640)
    gt = people(1, hw, seed=4)
    gt[0, 3:, 2] = 0  # nose and eyes only: 3 parts
    peaks, pafs = scene(gt, hw)
    assert len(group_people(peaks, pafs, "coco17", 8, hw)[0]) == 0
    kps, scores = group_people(peaks, pafs, "coco17", 8, hw, min_parts=3)
    assert len(kps) == 1 and (kps[0, :, 2] > 0).sum() == 3
    assert len(group_people(peaks, pafs, "coco17", 8, hw, min_parts=3, min_person_score=2.0)[0]) == 0
    near = group_people(peaks, pafs, "coco17", 8, hw, min_parts=3, sampling="nearest")
    np.testing.assert_allclose(near[0], kps)


def test_no_peaks_and_odd_input():
    hw = (480, 640)
    pafs = np.zeros((60, 80, 38), np.float32)
    empty = [np.zeros((0, 3)) for _ in range(17)]
    kps, scores = group_people(empty, pafs, "coco17", 8, hw)
    assert kps.shape == (0, 17, 3) and scores.shape == (0,)
    # peaks but an all-zero or all-NaN field: nobody
    peaks, real = scene(people(2, hw), hw)
    assert len(group_people(peaks, pafs, "coco17", 8, hw)[0]) == 0
    assert len(group_people(peaks, np.full_like(real, np.nan), "coco17", 8, hw)[0]) == 0
    # NaN in one limb's field only removes that limb's support
    part = real.copy()
    wrist = COCO17.limbs.index((7, 9))  # the only limb reaching the left wrist
    part[..., 2 * wrist] = np.nan
    kps, _ = group_people(peaks, part, "coco17", 8, hw)
    assert len(kps) == 2 and np.all(kps[:, 9, 2] == 0) and np.all(kps[:, 7, 2] > 0)
    # peaks outside the image are legal candidates (PAF read clamped at the border)
    far = [p + [1000, 0, 0] for p in peaks]
    assert len(group_people(far, real, "coco17", 8, hw)[0]) == 0
    with pytest.raises(ValueError, match="one array per keypoint"):
        group_people(peaks[:5], real, "coco17", 8, hw)
    bad = list(peaks)
    bad[3] = bad[3].copy()
    bad[3][0, 0] = np.nan
    with pytest.raises(ValueError, match=r"peaks\[3\].*NaN"):
        group_people(bad, real, "coco17", 8, hw)
    bad[3] = np.zeros((2, 2))
    with pytest.raises(ValueError, match=r"peaks\[3\].*\[n, 3\]"):
        group_people(bad, real, "coco17", 8, hw)
    with pytest.raises(ValueError, match=r"pafs.*\[h, w, 38\]"):
        group_people(peaks, real[..., :30], "coco17", 8, hw)
    with pytest.raises(ValueError, match="sampling"):
        group_people(peaks, real, "coco17", 8, hw, sampling="cubic")
    with pytest.raises(ValueError, match="order"):
        group_people(peaks, real, "coco17", 8, hw, order=([0, 1], [2]))


def test_tiny_grids_and_other_keypoint_sets():
    # 1-cell-wide field: bilinear sampling must not read past the row.
    ks = COCO17
    pafs = np.zeros((30, 1, ks.num_paf_channels), np.float32)
    li = ks.limbs.index((5, 7))
    pafs[:, 0, 2 * li + 1] = 1.0  # downwards
    peaks = [np.zeros((0, 3)) for _ in range(17)]
    peaks[5] = np.array([[3.5, 20.0, 1.0]])
    peaks[7] = np.array([[3.5, 100.0, 1.0]])
    kps, _ = group_people(peaks, pafs, ks, 8, (240, 8), min_parts=2)
    assert len(kps) == 1
    # OpenPose-18 people from COCO ground truth
    hw = (480, 640)
    gt = coco17_to_openpose18(people(3, hw, seed=9))
    peaks, pafs = scene(gt, hw, "openpose18")
    kps, _ = group_people(peaks, pafs, "openpose18", 8, hw)
    assert kps.shape == (3, 18, 3) and np.all(kps[..., 2] > 0)
