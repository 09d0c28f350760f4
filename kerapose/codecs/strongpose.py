"""StrongPose / PersonLab targets and the reference (numpy) greedy decoder.

Targets, all on the output grid of ``stride`` (cell ``(i, j)`` centred at pixel
``(s*j + (s-1)/2, s*i + (s-1)/2)``, :mod:`kerapose.codecs.grid`), offsets in pixels:

* ``heatmaps [h, w, K]``: the strong keypoint heat map (SKHM): 1 where a cell centre lies in the
  disk of radius ``radius`` (16 px) around a labelled keypoint of any person, else 0.
* ``short_offsets [h, w, 2K]``: channels ``2k`` (x), ``2k + 1`` (y): from each cell centre in a
  keypoint-``k`` disk to keypoint ``k`` of the nearest person; 0 elsewhere. Its loss mask is the
  heat map itself.
* ``mid_offsets [h, w, 4E]`` and ``mid_mask [h, w, 2E]``: one 2-channel field per directed edge
  of :func:`mid_range_edges` (the limbs and the keypoint pairs two limbs apart, both directions):
  from each cell centre in the disk of the edge's source keypoint to the target keypoint of the
  same person (the person whose source keypoint is nearest, among those with both ends labelled).
* ``body [h, w, 1]``: the body heat map (BHM), person segmentation
  (:func:`kerapose.codecs.segmentation.person_mask`).
* ``weights [h, w, 1]``: the loss weight W, 0 over crowds and people without keypoints
  (:func:`kerapose.codecs.segmentation.ignore_mask`).

Decoding (:meth:`StrongPoseCodec.decode`) is PersonLab's greedy algorithm as StrongPose uses it:

1. Hough voting: every cell votes its heat-map probability at ``cell + short offset``, spread
   bilinearly over the 4 nearest cells; the sum is divided by ``pi (R/s)^2``, the number of cells
   in a disk, so a perfectly predicted keypoint scores about 1. Offsets are clipped to ``R`` per
   axis (the targets never exceed it), which bounds every vote to ``ceil(R/s)`` cells.
2. Seeds: local maxima (3x3) of all K Hough maps above ``peak_threshold``, strongest first
   (ties: lower flat index ``(i*w + j)*K + k`` first), at most ``max_seeds``.
3. A seed of type k is skipped when it lies within ``nms_radius`` (10 px) of keypoint k of an
   already decoded person; else a person grows from it along the directed edges, best first:
   every edge from a found keypoint to a missing one proposes
   ``centre(cell(source)) + mid_offset(cell(source))``, and the proposal with the highest
   heat-map probability is fixed (ties: lowest edge index), until all K are found. Every
   keypoint estimate (the seed's too) is refined ``refine_steps`` (2) times with the short-range
   offsets, ``y <- centre(cell(y)) + short_offset_k(cell(y))`` (nearest cell, clamped to the
   map), which is exact on ground-truth targets wherever ``y`` lies in a disk.
4. Keypoint scores: ``"expected_oks"`` (PersonLab's Expected-OKS, the fairness fix StrongPose
   adopts): ``p_k(y) * sum over cells x within R of y of hn_k(x) exp(-|x - y|^2 / (2 lam^2
   kappa_k^2))``, with ``hn_k`` the Hough map normalised to sum 1 over those cells,
   ``lam^2`` the area of the box around the person's keypoints and ``kappa_k = 2 sigma_k``
   (COCO's per-keypoint OKS constants); or ``"hough"`` (G-RMI: ``h_k(y)``).
5. Instance score: the mean of the K keypoint scores; with ``instance_score="soft_nms"`` (eq. 1
   of the paper) people are ranked by it and each keeps only the scores of keypoints not within
   ``nms_radius`` of the same keypoint of a higher-ranked person. People are returned best first;
   those scoring ``<= score_threshold`` are dropped.

The work of step 1 is fixed per image; steps 2-5 cost a few vector operations per seed and per
person, so decoding time grows little with the number of people.
"""

from __future__ import annotations

import math
import numpy as np

from kerapose.codecs.grid import cell_to_pixel, check_image_hw, output_size
from kerapose.skeleton import KeypointSet, get_keypoint_set

__all__ = [
    "StrongPoseCodec",
    "mid_range_edges",
    "KEYPOINT_SCORES",
    "INSTANCE_SCORES",
    "oracle_keypoints",
    "oracle_counts",
]

KEYPOINT_SCORES = ("expected_oks", "hough")
INSTANCE_SCORES = ("soft_nms", "mean")


def mid_range_edges(keypoint_set: str | KeypointSet, hops: int = 2) -> np.ndarray:
    """``[2E, 2]`` directed (source, target) keypoint pairs of the mid-range offsets.

    The keypoint set's limbs (``hops=1``), and with ``hops=2`` also every pair of keypoints two
    limbs apart (COCO-17: 19 limbs + 26 such pairs, E = 45), first in their (from, to) order,
    then reversed: ``[limbs, limbs reversed, pairs, pairs reversed]``. Edge ``e`` owns channels
    ``2e`` (x) and ``2e + 1`` (y). The two-limb pairs join keypoints across an unlabelled one (an
    occluded ear between an eye and a shoulder), where the limbs alone leave the labelled
    keypoints of one person in separate pieces (docs/strongpose.md).
    """
    ks = get_keypoint_set(keypoint_set)
    if isinstance(hops, bool) or hops not in (1, 2):
        raise ValueError(f"edge_hops: expected 1 or 2, got {hops!r}")
    limbs = [(int(a), int(b)) for a, b in ks.limbs]
    seen = {frozenset(pair) for pair in limbs}
    groups = [limbs]
    if hops == 2:
        adjacent: dict[int, list[int]] = {i: [] for i in range(ks.num_keypoints)}
        for a, b in limbs:
            adjacent[a].append(b)
            adjacent[b].append(a)
        pairs = []
        for middle in range(ks.num_keypoints):
            for a in sorted(adjacent[middle]):
                for b in sorted(adjacent[middle]):
                    if a < b and frozenset((a, b)) not in seen:
                        seen.add(frozenset((a, b)))
                        pairs.append((a, b))
        groups.append(pairs)
    out = []
    for group in groups:
        fwd = np.asarray(group, np.int64).reshape(-1, 2)
        out += [fwd, fwd[:, ::-1]]
    return np.concatenate(out, axis=0)


def _check_positive(name: str, value) -> float:
    if not (isinstance(value, (int, float, np.floating, np.integer)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name}: expected a positive number, got {value!r}")
    return float(value)


def _check_count(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


class StrongPoseCodec:
    """Encode StrongPose targets and decode network outputs (numpy reference).

    Args:
        keypoint_set: keypoint set (K, limbs, OKS sigmas); it needs at least one limb.
        stride: output stride of the maps (pixels per cell).
        radius: disk radius R in pixels (paper: 16).
        nms_radius: r in pixels, for seed suppression and soft-NMS (paper: 10).
        peak_threshold: minimum Hough score of a seed (>= 0).
        max_seeds: at most this many seeds, strongest first (the in-graph decoder's top-k).
        refine_steps: short-range refinements of every keypoint estimate (PersonLab: 2).
        keypoint_score: ``"expected_oks"`` or ``"hough"`` (see the module docstring).
        instance_score: ``"soft_nms"`` (eq. 1) or ``"mean"`` (plain mean of keypoint scores).
        score_threshold: people scoring at or below it are dropped (>= 0).
        edge_hops: mid-range edges: 1, the limbs; 2 (default), the limbs and keypoint pairs two
            limbs apart (:func:`mid_range_edges`).
    """

    def __init__(
        self,
        keypoint_set: str | KeypointSet = "coco17",
        stride: int = 8,
        radius: float = 16.0,
        nms_radius: float = 10.0,
        peak_threshold: float = 0.01,
        max_seeds: int = 512,
        refine_steps: int = 2,
        keypoint_score: str = "expected_oks",
        instance_score: str = "soft_nms",
        score_threshold: float = 0.0,
        edge_hops: int = 2,
    ) -> None:
        self.keypoint_set = get_keypoint_set(keypoint_set)
        if self.keypoint_set.num_limbs == 0:
            raise ValueError(f"keypoint_set: {self.keypoint_set.name!r} has no limbs: nothing to grow people along")
        self.stride = _check_count("stride", stride)
        self.radius = _check_positive("radius", radius)
        self.nms_radius = _check_positive("nms_radius", nms_radius)
        if not (isinstance(peak_threshold, (int, float)) and 0 <= peak_threshold < math.inf):
            raise ValueError(f"peak_threshold: expected a finite value >= 0, got {peak_threshold!r}")
        self.peak_threshold = float(peak_threshold)
        self.max_seeds = _check_count("max_seeds", max_seeds)
        self.refine_steps = _check_count("refine_steps", refine_steps, minimum=0)
        if keypoint_score not in KEYPOINT_SCORES:
            raise ValueError(f"keypoint_score: expected one of {', '.join(KEYPOINT_SCORES)}, got {keypoint_score!r}")
        if instance_score not in INSTANCE_SCORES:
            raise ValueError(f"instance_score: expected one of {', '.join(INSTANCE_SCORES)}, got {instance_score!r}")
        self.keypoint_score = keypoint_score
        self.instance_score = instance_score
        if not (isinstance(score_threshold, (int, float)) and 0 <= score_threshold < math.inf):
            raise ValueError(f"score_threshold: expected a finite value >= 0, got {score_threshold!r}")
        self.score_threshold = float(score_threshold)
        self.edges = mid_range_edges(self.keypoint_set, edge_hops)  # validates edge_hops
        self.edge_hops = int(edge_hops)
        self._out_edges = [np.flatnonzero(self.edges[:, 0] == i) for i in range(self.num_keypoints)]

    # ------------------------------------------------------------------ sizes

    @property
    def num_keypoints(self) -> int:
        return self.keypoint_set.num_keypoints

    @property
    def num_edges(self) -> int:
        """Directed edges (2E); the mid-range field has twice as many channels."""
        return len(self.edges)

    @property
    def channels(self) -> dict[str, int]:
        """Channels of each network output."""
        k, e2 = self.num_keypoints, self.num_edges
        return {"heatmaps": k, "short_offsets": 2 * k, "mid_offsets": 2 * e2, "body": 1}

    @property
    def vote_reach(self) -> int:
        """D: a vote lands at most this many cells from its source (offsets clipped to R)."""
        return math.ceil(self.radius / self.stride)

    @property
    def window_reach(self) -> int:
        """Cells within R of a point lie within this many cells of the point's nearest cell."""
        return math.floor(self.radius / self.stride + 0.5)

    @property
    def disk_cells(self) -> float:
        """pi (R/s)^2: the Hough normaliser."""
        return math.pi * (self.radius / self.stride) ** 2

    def get_config(self) -> dict:
        return {
            "keypoint_set": self.keypoint_set.name,
            "stride": self.stride,
            "radius": self.radius,
            "nms_radius": self.nms_radius,
            "peak_threshold": self.peak_threshold,
            "max_seeds": self.max_seeds,
            "refine_steps": self.refine_steps,
            "keypoint_score": self.keypoint_score,
            "instance_score": self.instance_score,
            "score_threshold": self.score_threshold,
            "edge_hops": self.edge_hops,
        }

    # ------------------------------------------------------------------ encode

    def _centres(self, grid_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        h, w = grid_hw
        return cell_to_pixel(np.arange(w), self.stride), cell_to_pixel(np.arange(h), self.stride)

    def _disk_field(self, sources: np.ndarray, targets: np.ndarray, grid_hw) -> tuple[np.ndarray, np.ndarray]:
        """Disk mask ``[h, w]`` around ``sources [n, 2]`` and offsets ``[h, w, 2]`` to the nearest source's target."""
        h, w = grid_hw
        mask = np.zeros((h, w), np.float32)
        field = np.zeros((h, w, 2), np.float32)
        if len(sources) == 0:
            return mask, field
        cx, cy = self._centres(grid_hw)
        dx = sources[:, 0][None, None, :] - cx[None, :, None]  # [1, w, n]
        dy = sources[:, 1][None, None, :] - cy[:, None, None]  # [h, 1, n]
        d2 = dx * dx + dy * dy  # [h, w, n]
        nearest = d2.argmin(-1)
        inside = d2.min(-1) <= self.radius**2
        mask[inside] = 1.0
        tx = targets[nearest, 0] - cx[None, :]
        ty = targets[nearest, 1] - cy[:, None]
        field[..., 0] = np.where(inside, tx, 0.0)
        field[..., 1] = np.where(inside, ty, 0.0)
        return mask, field

    def encode_keypoints(self, keypoints: np.ndarray, image_hw: tuple[int, int]) -> dict[str, np.ndarray]:
        """Keypoint targets of people ``[N, K, 3]`` (x, y, v) in an image of ``image_hw``.

        Returns ``heatmaps``, ``short_offsets``, ``mid_offsets``, ``mid_mask`` (float32). Only
        keypoints with v > 0 count; pass only the people that should be targets (no crowds).
        """
        kp = np.asarray(keypoints, np.float64)
        k = self.num_keypoints
        if kp.ndim != 3 or kp.shape[1:] != (k, 3):
            raise ValueError(f"keypoints: expected [N, {k}, 3] (x, y, v), got shape {kp.shape}")
        grid = output_size(check_image_hw(image_hw), self.stride)
        h, w = grid
        heat = np.zeros((h, w, k), np.float32)
        short = np.zeros((h, w, 2 * k), np.float32)
        mid = np.zeros((h, w, 2 * self.num_edges), np.float32)
        mid_mask = np.zeros((h, w, self.num_edges), np.float32)
        vis = kp[..., 2] > 0
        for i in range(k):
            pts = kp[vis[:, i], i, :2]
            heat[..., i], short[..., 2 * i:2 * i + 2] = self._disk_field(pts, pts, grid)
        for e, (a, b) in enumerate(self.edges):
            both = vis[:, a] & vis[:, b]
            mid_mask[..., e], mid[..., 2 * e:2 * e + 2] = self._disk_field(kp[both, a, :2], kp[both, b, :2], grid)
        return {"heatmaps": heat, "short_offsets": short, "mid_offsets": mid, "mid_mask": mid_mask}

    def encode(self, record) -> dict[str, np.ndarray]:
        """All targets of one :class:`kerapose.data.coco.ImageRecord` (see the module docstring)."""
        from kerapose.codecs.segmentation import ignore_mask, person_mask

        people = ~np.asarray(record.iscrowd, bool) & (record.num_keypoints_labelled > 0)
        out = self.encode_keypoints(record.keypoints[people], (record.height, record.width))
        out["body"] = person_mask(record, self.stride)[..., None]
        out["weights"] = ignore_mask(record, self.stride)[..., None]
        return out

    # ------------------------------------------------------------------ decode

    def _check_maps(self, **maps) -> list[np.ndarray]:
        """Named ``[h, w, C]`` maps as float64, with their channels and shared grid checked."""
        ch = self.channels
        out = []
        for name, value in maps.items():
            arr = np.asarray(value, np.float64)
            if arr.ndim != 3 or arr.shape[-1] != ch[name]:
                raise ValueError(f"{name}: expected [h, w, {ch[name]}], got shape {arr.shape}")
            if out and arr.shape[:2] != out[0].shape[:2]:
                raise ValueError(f"{name}: grid {arr.shape[:2]} differs from the heatmaps' {out[0].shape[:2]}")
            out.append(arr)
        return out

    def hough(self, heatmaps: np.ndarray, short_offsets: np.ndarray) -> np.ndarray:
        """Hough score maps ``[h, w, K]``: bilinear splatting of the probability votes."""
        heat, short = self._check_maps(heatmaps=heatmaps, short_offsets=short_offsets)
        return self._hough(heat, short)

    def _hough(self, heat: np.ndarray, short: np.ndarray) -> np.ndarray:
        h, w, k = heat.shape
        lim = self.radius / self.stride
        vx = np.clip(short[..., 0::2] / self.stride, -lim, lim) + np.arange(w)[None, :, None]
        vy = np.clip(short[..., 1::2] / self.stride, -lim, lim) + np.arange(h)[:, None, None]
        x0, y0 = np.floor(vx), np.floor(vy)
        fx, fy = vx - x0, vy - y0
        chan = np.broadcast_to(np.arange(k), heat.shape)
        out = np.zeros(h * w * k, np.float64)
        for ox, wx in ((0, 1 - fx), (1, fx)):
            for oy, wy in ((0, 1 - fy), (1, fy)):
                xi, yi = (x0 + ox).astype(np.int64), (y0 + oy).astype(np.int64)
                ok = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
                flat = (yi[ok] * w + xi[ok]) * k + chan[ok]
                out += np.bincount(flat, weights=(heat * wx * wy)[ok], minlength=h * w * k)
        return (out / self.disk_cells).reshape(h, w, k)

    def seeds(self, hough: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Local maxima above ``peak_threshold``: ``(flat indices (i*w + j)*K + k, scores)``, best first."""
        from scipy.ndimage import maximum_filter

        pooled = maximum_filter(hough, size=(3, 3, 1), mode="constant", cval=-np.inf)
        peak = (hough >= pooled) & (hough > self.peak_threshold)
        flat = np.flatnonzero(peak.reshape(-1))
        vals = hough.reshape(-1)[flat]
        order = np.argsort(-vals, kind="stable")[: self.max_seeds]
        return flat[order], vals[order]

    def _cell(self, x, y, grid_hw) -> tuple[np.ndarray, np.ndarray]:
        """Nearest cell (row, column) of pixel positions (arrays), clamped to the map."""
        h, w = grid_hw
        c = (self.stride - 1) / 2.0
        # ufuncs rather than np.clip: this runs a few times per growth step
        j = np.minimum(np.maximum(np.floor((x - c) / self.stride + 0.5), 0), w - 1).astype(np.int64)
        i = np.minimum(np.maximum(np.floor((y - c) / self.stride + 0.5), 0), h - 1).astype(np.int64)
        return i, j

    def _centre(self, i, j) -> tuple[np.ndarray, np.ndarray]:
        c = (self.stride - 1) / 2.0
        return j * float(self.stride) + c, i * float(self.stride) + c

    def _refine(self, x, y, kind, short: np.ndarray):
        """``refine_steps`` short-range refinements of positions (arrays) of keypoint types ``kind``."""
        for _ in range(self.refine_steps):
            i, j = self._cell(x, y, short.shape[:2])
            cx, cy = self._centre(i, j)
            x, y = cx + short[i, j, 2 * kind], cy + short[i, j, 2 * kind + 1]
        return x, y

    def _grow(self, root: int, x: float, y: float, heat: np.ndarray, short: np.ndarray, mid: np.ndarray):
        """One person from a seed: ``(positions [K, 2], reached [K] bool)``.

        Best-first growth over the directed edges: each step proposes, for every edge from a
        reached keypoint to an unreached one, ``centre(cell(source)) + mid_offset``, refines it
        with the short-range offsets and fixes the proposal whose heat-map probability is highest
        (ties: the lowest edge index). On a tree this is the breadth-first growth of PersonLab;
        on the limb graph it routes around keypoints with no evidence.
        """
        k = self.num_keypoints
        src, dst = self.edges[:, 0], self.edges[:, 1]
        pos = np.zeros((k, 2))
        reached = np.zeros(k, bool)
        pos[root], reached[root] = (x, y), True
        proposal = np.zeros((len(self.edges), 3))  # x, y, heat-map probability
        node = root
        for _ in range(k - 1):
            # proposals depend only on their source: made once, when it is fixed
            out = self._out_edges[node]
            i, j = self._cell(pos[node, 0], pos[node, 1], short.shape[:2])
            cx, cy = self._centre(i, j)
            px, py = self._refine(cx + mid[i, j, 2 * out], cy + mid[i, j, 2 * out + 1], dst[out], short)
            ci, cj = self._cell(px, py, short.shape[:2])
            proposal[out] = np.stack([px, py, heat[ci, cj, dst[out]]], axis=-1)
            frontier = reached[src] & ~reached[dst]
            if not frontier.any():
                break
            best = int(np.argmax(np.where(frontier, proposal[:, 2], -1.0)))  # first of the maxima
            node = int(dst[best])
            pos[node], reached[node] = proposal[best, :2], True
        return pos, reached

    def _keypoint_scores(self, pos, reached, heat, hough) -> np.ndarray:
        """``[N, K]`` scores of decoded people ``pos [N, K, 2]``, ``reached [N, K]``."""
        n, k = reached.shape
        h, w = heat.shape[:2]
        scores = np.zeros((n, k))
        if n == 0:
            return scores
        ci, cj = self._cell(pos[..., 0], pos[..., 1], (h, w))
        if self.keypoint_score == "hough":
            scores = hough[ci, cj, np.arange(k)[None, :]]
            return np.where(reached, scores, 0.0)
        big = np.where(reached[..., None], pos, np.nan)
        with np.errstate(invalid="ignore"):
            ext = np.nanmax(big, axis=1) - np.nanmin(big, axis=1)  # [N, 2]
        area = np.maximum(np.nan_to_num(ext[:, 0] * ext[:, 1], nan=0.0), 1.0)  # lam^2, at least 1 px^2
        kappa2 = (2.0 * self.keypoint_set.sigmas_array) ** 2
        r = self.window_reach
        total = np.zeros((n, k))
        weighted = np.zeros((n, k))
        for di in range(-r, r + 1):
            for dj in range(-r, r + 1):
                ii, jj = ci + di, cj + dj
                inside = (ii >= 0) & (ii < h) & (jj >= 0) & (jj < w)
                ii_c, jj_c = np.clip(ii, 0, h - 1), np.clip(jj, 0, w - 1)
                cx, cy = self._centre(ii_c, jj_c)
                d2 = (cx - pos[..., 0]) ** 2 + (cy - pos[..., 1]) ** 2
                use = inside & (d2 <= self.radius**2)
                hv = np.where(use, hough[ii_c, jj_c, np.arange(k)[None, :]], 0.0)
                total += hv
                weighted += hv * np.exp(-d2 / (2.0 * area[:, None] * kappa2[None, :]))
        prob = heat[ci, cj, np.arange(k)[None, :]]
        with np.errstate(invalid="ignore", divide="ignore"):
            expected = np.where(total > 0, weighted / total, 0.0)
        return np.where(reached, prob * expected, 0.0)

    def _instance_scores(self, pos, reached, kp_scores) -> tuple[np.ndarray, np.ndarray]:
        """(final scores ``[N]``, ranking by the plain mean) for people in decoding order."""
        k = self.num_keypoints
        mean = kp_scores.sum(-1) / k
        order = np.argsort(-mean, kind="stable")
        if self.instance_score == "mean":
            return mean, order
        p, rch, sc = pos[order], reached[order], kp_scores[order]
        d2 = ((p[:, None] - p[None, :]) ** 2).sum(-1)  # [N, N, K]
        earlier = np.tri(len(order), k=-1, dtype=bool)  # [j, j']: j' ranked before j
        claimed = (earlier[..., None] & rch[None, :, :] & rch[:, None, :] & (d2 <= self.nms_radius**2)).any(1)
        final = np.empty_like(mean)
        final[order] = (sc * ~claimed).sum(-1) / k
        return final, order

    def decode(self, heatmaps: np.ndarray, short_offsets: np.ndarray, mid_offsets: np.ndarray,
               max_people: int | None = None) -> dict[str, np.ndarray]:
        """Maps of one image -> people, best first, in the pixels of the network input.

        Args:
            heatmaps: ``[h, w, K]`` probabilities (after the sigmoid).
            short_offsets: ``[h, w, 2K]`` pixels.
            mid_offsets: ``[h, w, 4E]`` pixels.
            max_people: stop after this many people (in seed order); None: no limit.

        Returns ``keypoints [N, K, 3]`` (x, y, score), ``scores [N]``, ``boxes [N, 4]``.
        """
        heat, short, mid = self._check_maps(heatmaps=heatmaps, short_offsets=short_offsets,
                                            mid_offsets=mid_offsets)
        if max_people is not None:
            max_people = _check_count("max_people", max_people)
        k = self.num_keypoints
        hough = self._hough(heat, short)
        flat, _ = self.seeds(hough)
        kind, cell = flat % k, flat // k
        sx, sy = self._refine(*self._centre(cell // heat.shape[1], cell % heat.shape[1]), kind, short)
        limit = len(flat) if max_people is None else min(max_people, len(flat))
        pos = np.zeros((limit, k, 2))
        reached = np.zeros((limit, k), bool)
        n = 0
        r2 = self.nms_radius**2
        for kk, x, y in zip(kind, sx, sy):
            if n == limit:
                break
            d2 = (pos[:n, kk, 0] - x) ** 2 + (pos[:n, kk, 1] - y) ** 2
            if (reached[:n, kk] & (d2 <= r2)).any():
                continue  # within r of the same keypoint of a person already found
            pos[n], reached[n] = self._grow(int(kk), x, y, heat, short, mid)
            n += 1
        pos, reached = pos[:n], reached[:n]
        kp_scores = self._keypoint_scores(pos, reached, heat, hough)
        final, _ = self._instance_scores(pos, reached, kp_scores)
        order = np.argsort(-final, kind="stable")
        order = order[final[order] > self.score_threshold]
        keypoints = np.concatenate([np.where(reached[..., None], pos, 0.0), kp_scores[..., None]], -1)[order]
        rch = reached[order]
        lo = np.where(rch[..., None], keypoints[..., :2], np.inf).min(1)
        hi = np.where(rch[..., None], keypoints[..., :2], -np.inf).max(1)
        boxes = np.concatenate([lo, hi], -1).reshape(-1, 4)
        return {"keypoints": keypoints.reshape(-1, k, 3), "scores": final[order], "boxes": boxes}


# ---------------------------------------------------------------------------- oracle


def oracle_keypoints(codec: StrongPoseCodec, record) -> tuple[np.ndarray, np.ndarray]:
    """One record's ground truth encoded and decoded back: ``(keypoints [N, K, 3], scores [N])``."""
    t = codec.encode(record)
    out = codec.decode(t["heatmaps"], t["short_offsets"], t["mid_offsets"])
    return out["keypoints"], out["scores"]


def oracle_counts(codec: StrongPoseCodec, record, keypoints: np.ndarray, found_oks: float = 0.5) -> dict[str, int]:
    """``people``: the record's non-crowd people with keypoints; ``people_found``: those whose best
    decoded person ``keypoints [N, K, 3]`` reaches OKS >= ``found_oks``; ``detections``: N."""
    from kerapose.evaluation import oks

    gt = ~np.asarray(record.iscrowd, bool) & (record.num_keypoints_labelled > 0)
    found = 0
    if gt.any() and len(keypoints):
        sim = oks(record.keypoints[gt], record.areas[gt], keypoints, sigmas=codec.keypoint_set)  # [N, G]
        found = int((sim.max(0) >= found_oks).sum())
    return {"people": int(gt.sum()), "people_found": found, "detections": int(len(keypoints))}
