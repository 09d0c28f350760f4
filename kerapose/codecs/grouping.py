"""OpenPose's greedy part-affinity-field grouping, with the candidate scoring in numpy.

Given keypoint candidates (heatmap peaks) and part affinity fields (PAFs), people are
assembled as in Cao et al. 2017 and the original OpenPose code:

1. Every pair of candidates (one of each end part) of every limb is a candidate limb. The
   PAF of that limb is sampled at ``num_samples`` (10) points evenly spaced from one end to
   the other, both ends included, and each sample is projected on the candidate's unit
   direction. A candidate is accepted when at least ``min_sample_fraction`` (80 %) of the
   projections exceed ``paf_threshold`` (0.05) and the mean projection plus the distance
   prior ``min(distance_ratio * H / length - 1, 0)`` (``distance_ratio`` 0.5, H the image
   height and ``length`` the candidate's length, both in pixels) is positive. That sum is
   the limb score.
2. Per limb, accepted candidates are matched one-to-one greedily, best limb score first.
3. Limbs are processed in a tree order (a breadth-first spanning tree of the limb graph,
   :meth:`KeypointSet.spanning_tree`, from a torso root: the neck for OpenPose-18, the left
   shoulder for COCO-17, see :data:`ROOT_PREFERENCE`). A tree limb whose two ends belong to no
   person starts a new person; one end known adds the other end to that person; ends in two
   different people with no part type in common merge them. Redundant limbs (those that
   close a cycle) only add parts to, or merge, existing people; they never start one.
4. A person's score is the sum of its parts' peak scores and its limbs' scores divided by its
   number of parts; people with fewer than ``min_parts`` (4) parts or a score below
   ``min_person_score`` (0.4) are dropped.

Vectorisation: the candidate pairs of *all* limbs are built and scored in one batch of
numpy operations (no Python loop over pixels, pairs or samples). The PAF is sampled
bilinearly on the stride-``s`` grid (pixel -> cell with :mod:`kerapose.codecs.grid`, clamped
at the border), which on an un-upsampled network output is the same as upsampling the map
bilinearly and reading the nearest pixel (``sampling="nearest"`` reads the nearest cell).
Candidates are first probed at a few interior samples and those that cannot reach the 80 %
rule are dropped before full sampling (exact: the same candidates survive). Only the greedy
matching and the person bookkeeping, which are sequential by nature, loop in Python, over
accepted limbs only.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from kerapose.codecs.grid import pixel_to_cell
from kerapose.skeleton import KeypointSet, get_keypoint_set

__all__ = ["group_people", "limb_order", "score_limb_candidates", "ROOT_PREFERENCE"]

# Default root of the processing tree: the first of these keypoints the set has. A torso
# part, whose limbs are the most reliable, so people start from the torso and grow outwards
# (OpenPose starts from the neck; COCO-17 has none and uses the left shoulder).
ROOT_PREFERENCE: tuple[str, ...] = ("neck", "left_shoulder", "right_shoulder")


def limb_order(keypoint_set: str | KeypointSet, root: int | str | None = None) -> tuple[list[int], list[int]]:
    """``(tree, redundant)`` limb indices in the order the grouping processes them.

    ``root`` is a keypoint index or name; by default the first of :data:`ROOT_PREFERENCE`
    in the set, else the spanning tree's own default (the first keypoint with a limb).
    """
    tree, redundant = _limb_order(get_keypoint_set(keypoint_set), root)
    return list(tree), list(redundant)


@lru_cache(maxsize=64)
def _limb_order(ks: KeypointSet, root: int | str | None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    if root is None:
        root = next((name for name in ROOT_PREFERENCE if name in ks.keypoints), None)
    if isinstance(root, str):
        root = ks.index(root)
    if root is not None and not 0 <= root < ks.num_keypoints:
        raise ValueError(f"root: expected a keypoint index in 0..{ks.num_keypoints - 1}, got {root}")
    tree, redundant = ks.spanning_tree(root)
    return tuple(tree), tuple(redundant)


def _check_peaks(peaks, num_keypoints: int) -> list[np.ndarray]:
    if len(peaks) != num_keypoints:
        raise ValueError(f"peaks: expected one array per keypoint ({num_keypoints}), got {len(peaks)}")
    out = []
    for k, p in enumerate(peaks):
        p = np.asarray(p, dtype=np.float64)
        if p.size == 0:
            p = p.reshape(0, 3)
        if p.ndim != 2 or p.shape[1] != 3:
            raise ValueError(f"peaks[{k}]: expected shape [n, 3] (x, y, score), got {p.shape}")
        out.append(p)
    if not np.isfinite(np.concatenate(out)).all():
        bad = next(k for k, p in enumerate(out) if not np.isfinite(p).all())
        raise ValueError(f"peaks[{bad}]: contains NaN or infinite values")
    return out


def _sample_bilinear(field: np.ndarray, shape: tuple[int, int, int], cx, cy, ch) -> np.ndarray:
    """Bilinear read of channel ``ch`` of an [h, w, c] map (given flattened) at cell coords."""
    h, w, c = shape
    cx = np.clip(cx, 0.0, w - 1.0)
    cy = np.clip(cy, 0.0, h - 1.0)
    x0 = np.minimum(cx.astype(np.intp), max(w - 2, 0))
    y0 = np.minimum(cy.astype(np.intp), max(h - 2, 0))
    fx = (cx - x0).astype(np.float32)
    fy = (cy - y0).astype(np.float32)
    dx, dy = (c if w > 1 else 0), (w * c if h > 1 else 0)  # flat steps to the right/lower cell
    i = (y0 * w + x0) * c + ch
    v00, v01, v10, v11 = field[i], field[i + dx], field[i + dy], field[i + dy + dx]
    top = v00 + fx * (v01 - v00)
    return top + fy * (v10 + fx * (v11 - v10) - top)


def _sample_nearest(field: np.ndarray, shape: tuple[int, int, int], cx, cy, ch) -> np.ndarray:
    h, w, c = shape
    xi = np.clip(np.rint(cx), 0, w - 1).astype(np.intp)
    yi = np.clip(np.rint(cy), 0, h - 1).astype(np.intp)
    return field[(yi * w + xi) * c + ch]


@lru_cache(maxsize=32)
def _sample_positions(num_samples: int, need: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Sample positions along a limb (0..1, ends included) and the probe subset.

    Exact pruning: a candidate may miss at most ``num_samples - need`` samples, so one that
    misses all of (that many + 1) samples cannot be accepted. Most pairs (parts of different
    people) already fail at a few interior samples, so those are probed first and only the
    survivors are sampled fully. ``None`` when probing cannot reject anything.
    """
    t = np.linspace(0.0, 1.0, num_samples)
    spare = num_samples - need
    if not 0 <= spare < num_samples - 1:
        return t, None
    idx = np.unique(np.linspace(0, num_samples - 1, spare + 3)[1:-1].round().astype(int))
    if len(idx) < spare + 1:
        return t, None
    return t, t[idx[: spare + 1]]


def score_limb_candidates(
    peaks: list[np.ndarray],
    pafs: np.ndarray,
    limbs: np.ndarray,
    stride: int,
    image_height: float,
    *,
    num_samples: int = 10,
    paf_threshold: float = 0.05,
    min_sample_fraction: float = 0.8,
    distance_ratio: float = 0.5,
    sampling: str = "bilinear",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Score every candidate pair of every limb in one batch.

    Returns the accepted candidates as ``(limb, index_a, index_b, score)`` arrays, where
    ``index_a``/``index_b`` index ``peaks[limbs[limb][0]]`` / ``peaks[limbs[limb][1]]``.
    """
    counts = np.array([len(p) for p in peaks], dtype=np.intp)
    na, nb = counts[limbs[:, 0]], counts[limbs[:, 1]]
    npairs = na * nb
    total = int(npairs.sum())
    if total == 0:
        empty = np.zeros(0, np.intp)
        return empty, empty, empty, np.zeros(0)
    xy = np.concatenate([p[:, :2] for p in peaks], axis=0)
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    limb = np.repeat(np.arange(len(limbs)), npairs)
    local = np.arange(total) - np.repeat(np.cumsum(npairs) - npairs, npairs)
    nb_p = nb[limb]
    ia, ib = local // nb_p, local % nb_p
    pa = xy[start[limbs[limb, 0]] + ia]
    pb = xy[start[limbs[limb, 1]] + ib]
    d = pb - pa
    length = np.hypot(d[:, 0], d[:, 1])
    safe = np.maximum(length, 1e-9)
    # Unit directions as complex numbers u = ux + i*uy, and the PAF viewed as complex64
    # (x, y channel pairs are adjacent): one gather reads both components of a sample and
    # Re(v * conj(u)) is the dot product.
    u_conj = ((d[:, 0] - 1j * d[:, 1]) / safe).astype(np.complex64)
    h, w = pafs.shape[:2]
    field = np.ascontiguousarray(pafs, dtype=np.float32).reshape(-1).view(np.complex64)
    shape = (h, w, len(limbs))
    # grid's pixel -> cell map is affine: convert the ends once, the samples follow.
    ca = pixel_to_cell(pa, stride)
    dc = d / stride

    sample = _sample_bilinear if sampling == "bilinear" else _sample_nearest
    need = int(np.ceil(min_sample_fraction * num_samples - 1e-9))  # samples that must count
    t, probe = _sample_positions(num_samples, need)

    def dots(rows: np.ndarray, ts: np.ndarray) -> np.ndarray:
        cx = ca[rows, 0:1] + ts * dc[rows, 0:1]  # [n, len(ts)] cells
        cy = ca[rows, 1:2] + ts * dc[rows, 1:2]
        v = sample(field, shape, cx, cy, limb[rows, None])
        out = (v * u_conj[rows, None]).real
        return np.where(np.isfinite(out), out, 0.0)  # a NaN network output supports nothing

    rows = np.flatnonzero(length > 0)
    if probe is not None:
        rows = rows[(dots(rows, probe) > paf_threshold).any(axis=1)]
    dot = dots(rows, t)
    hits = (dot > paf_threshold).sum(axis=1)
    score = dot.mean(axis=1) + np.minimum(distance_ratio * image_height / length[rows] - 1.0, 0.0)
    keep = (hits >= need) & (score > 0)
    rows, score = rows[keep], score[keep]
    return limb[rows], ia[rows], ib[rows], score


def group_people(
    peaks: list[np.ndarray],
    pafs: np.ndarray,
    keypoint_set: str | KeypointSet = "coco17",
    stride: int = 8,
    image_hw: tuple[int, int] | None = None,
    *,
    num_samples: int = 10,
    paf_threshold: float = 0.05,
    min_sample_fraction: float = 0.8,
    distance_ratio: float = 0.5,
    min_parts: int = 4,
    min_person_score: float = 0.4,
    root: int | str | None = None,
    order: tuple[list[int], list[int]] | None = None,
    sampling: str = "bilinear",
) -> tuple[np.ndarray, np.ndarray]:
    """Assemble people from keypoint candidates and PAFs (OpenPose greedy grouping).

    Args:
        peaks: one array ``[n_k, 3]`` of (x, y, score) per keypoint, x/y in image pixels
            (``HeatmapCodec.decode_peaks``).
        pafs: ``[h, w, 2L]`` PAFs at ``stride``; limb ``i`` in channels ``2i`` (x) and ``2i+1`` (y)
            pointing from ``limbs[i][0]`` to ``limbs[i][1]`` of ``keypoint_set``.
        keypoint_set: the keypoint set (name or object) that defines K and the limbs.
        stride: output stride of ``pafs`` in pixels.
        image_hw: image (H, W) in pixels; H drives the distance prior. Default ``h*stride``.
        num_samples, paf_threshold, min_sample_fraction, distance_ratio: limb acceptance
            (OpenPose: 10, 0.05, 0.8, 0.5; see the module docstring).
        min_parts, min_person_score: people with fewer parts or a lower score are dropped
            (OpenPose: 4, 0.4).
        root: root keypoint (index or name) of the processing tree; see :func:`limb_order`.
        order: explicit ``(tree, redundant)`` limb indices, overriding ``root``; tree limbs
            may start people, redundant ones only extend or merge them.
        sampling: ``"bilinear"`` (default) or ``"nearest"`` PAF sampling.

    Returns:
        ``keypoints [P, K, 3]`` (x, y, peak score; missing parts are 0, 0, 0) and
        ``scores [P]``, both float32, sorted by score, best first.
    """
    ks = get_keypoint_set(keypoint_set)
    k_num, n_limbs = ks.num_keypoints, ks.num_limbs
    pafs = np.asarray(pafs)
    if pafs.ndim != 3 or pafs.shape[2] != 2 * n_limbs:
        raise ValueError(
            f"pafs: expected shape [h, w, {2 * n_limbs}] for keypoint set {ks.name!r}, got {pafs.shape}"
        )
    if pafs.shape[0] == 0 or pafs.shape[1] == 0:
        raise ValueError(f"pafs: empty spatial size {pafs.shape[:2]}")
    if stride < 1:
        raise ValueError(f"stride: expected a positive integer, got {stride}")
    if sampling not in ("bilinear", "nearest"):
        raise ValueError(f"sampling: expected 'bilinear' or 'nearest', got {sampling!r}")
    if num_samples < 2:
        raise ValueError(f"num_samples: expected >= 2, got {num_samples}")
    peaks = _check_peaks(peaks, k_num)
    height = float(image_hw[0]) if image_hw is not None else float(pafs.shape[0] * stride)
    if order is None:
        order = limb_order(ks, root)
    tree, redundant = (list(map(int, o)) for o in order)
    if sorted(tree + redundant) != list(range(n_limbs)):
        raise ValueError(f"order: tree + redundant must list each of the {n_limbs} limbs once")

    empty = (np.zeros((0, k_num, 3), np.float32), np.zeros(0, np.float32))
    limbs = np.asarray(ks.limbs, dtype=np.intp).reshape(-1, 2)
    if n_limbs == 0:
        return empty
    limb, ia, ib, lscore = score_limb_candidates(
        peaks, pafs.astype(np.float32, copy=False), limbs, stride, height,
        num_samples=num_samples, paf_threshold=paf_threshold,
        min_sample_fraction=min_sample_fraction, distance_ratio=distance_ratio, sampling=sampling,
    )
    if limb.size == 0:
        return empty

    # Process limbs in tree order, each limb's candidates best first.
    rank = np.empty(n_limbs, np.intp)
    rank[tree + redundant] = np.arange(n_limbs)
    sort = np.lexsort((-lscore, rank[limb]))
    is_tree = np.zeros(n_limbs, bool)
    is_tree[tree] = True

    peak_scores = [p[:, 2].tolist() for p in peaks]
    # People: part -> candidate index (-1 absent), plus running score sum and part count.
    parts: list[list[int]] = []
    score_sum: list[float] = []
    n_parts: list[int] = []
    alive: list[bool] = []
    owner = [[-1] * len(p) for p in peaks]  # owner[k][i]: person holding candidate i of part k

    current, used_a, used_b = -1, set(), set()
    for li, i, j, s in zip(limb[sort].tolist(), ia[sort].tolist(), ib[sort].tolist(), lscore[sort].tolist()):
        if li != current:
            current, used_a, used_b = li, set(), set()
        if i in used_a or j in used_b:
            continue
        used_a.add(i)
        used_b.add(j)
        a, b = ks.limbs[li]
        pa, pb = owner[a][i], owner[b][j]
        if pa >= 0 and pb >= 0:
            if pa != pb and not any(x >= 0 and y >= 0 for x, y in zip(parts[pa], parts[pb])):
                # Two fragments of one person: merge pb into pa.
                for k, c in enumerate(parts[pb]):
                    if c >= 0:
                        parts[pa][k] = c
                        owner[k][c] = pa
                score_sum[pa] += score_sum[pb] + s
                n_parts[pa] += n_parts[pb]
                alive[pb] = False
        elif pa >= 0:
            if parts[pa][b] < 0:
                parts[pa][b] = j
                owner[b][j] = pa
                score_sum[pa] += peak_scores[b][j] + s
                n_parts[pa] += 1
        elif pb >= 0:
            if parts[pb][a] < 0:
                parts[pb][a] = i
                owner[a][i] = pb
                score_sum[pb] += peak_scores[a][i] + s
                n_parts[pb] += 1
        elif is_tree[li]:
            person = [-1] * k_num
            person[a], person[b] = i, j
            owner[a][i] = owner[b][j] = len(parts)
            parts.append(person)
            score_sum.append(peak_scores[a][i] + peak_scores[b][j] + s)
            n_parts.append(2)
            alive.append(True)

    keep = [
        p for p in range(len(parts))
        if alive[p] and n_parts[p] >= min_parts and score_sum[p] / n_parts[p] >= min_person_score
    ]
    if not keep:
        return empty
    scores = np.array([score_sum[p] / n_parts[p] for p in keep], np.float32)
    keypoints = np.zeros((len(keep), k_num, 3), np.float32)
    for row, p in enumerate(keep):
        for k, c in enumerate(parts[p]):
            if c >= 0:
                keypoints[row, k] = peaks[k][c]
    best = np.argsort(-scores, kind="stable")
    return keypoints[best], scores[best]
