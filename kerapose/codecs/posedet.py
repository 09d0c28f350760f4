"""PoseDet targets: dense pose candidates on FPN levels, coarse-stage assignment, FPN heatmaps.

Every cell of every pyramid level (strides 8, 16, 32, 64 by default) is a *candidate*. Its
location is the cell centre of :mod:`kerapose.codecs.grid` (pixel ``s*j + (s - 1) / 2``), and a
candidate's pose is ``location + stride * offsets``. Candidates are numbered level by level
(the finest first), row-major within a level: the order of the network's concatenated outputs.

Coarse-stage assignment (paper section 3.2, "Training and Inference"): each person goes to one
level by its size, and to the one candidate of that level nearest its centre. The centre is the
mean of the labelled joints (``assign="centroid"``, the paper's) or the centre of the person box
(``assign="box_center"``, the paper's ablation). The size is ``sqrt(w * h)`` of the person box;
level ``l`` takes sizes in ``[4 * s_l, 8 * s_l)`` (the authors' rule ``int(log2(sqrt(wh) / 4))``,
clamped to the levels). Two people that land on one candidate cannot both be encoded: the one
whose centre is nearer the candidate keeps it, the other is *lost* (counted by the oracle).

Only people with at least ``min_keypoints`` labelled keypoints (v > 0) are encoded; the default
1 keeps every person COCO's keypoint AP scores (it ignores people with none). The authors use
3 visible joints. Crowd regions and people without labelled keypoints mark the candidates
inside their boxes as ignored for classification (COCOeval ignores detections there too).

The later stages (refinement, classification) assign candidates by the OKS of their predicted
coarse pose with every person, so the targets also carry the padded list of people
(:func:`pack_targets` and :mod:`kerapose.models.posedet.losses` define the tensor layout).
"""

from __future__ import annotations

import math

import numpy as np

from kerapose.codecs.grid import cell_to_pixel, check_image_hw, output_size, pixel_to_cell
from kerapose.codecs.heatmap import HeatmapCodec
from kerapose.skeleton import KeypointSet, get_keypoint_set

__all__ = [
    "ASSIGN_MODES",
    "DEFAULT_OKS_NMS_THRESHOLD",
    "DEFAULT_STRIDES",
    "MIN_NMS_AREA",
    "PoseDetCodec",
    "default_size_ranges",
    "level_names",
    "oracle_keypoints",
    "pose_areas",
]

ASSIGN_MODES = ("centroid", "box_center")
DEFAULT_STRIDES = (8, 16, 32, 64)  # P3..P6, the authors' four FPN levels
# Pose areas used by OKS-NMS are the joints' extent box, at least 32 x 32 px (the authors'
# clamp), so that a pose squeezed onto a few pixels still has a finite tolerance.
MIN_NMS_AREA = 32.0 * 32.0
# OKS-NMS threshold of the oracle and of the graph decoder, in COCO OKS (the authors' 0.2 is in a
# stricter OKS whose per-joint term is about the square of COCO's: about 0.45 here; docs/posedet.md).
DEFAULT_OKS_NMS_THRESHOLD = 0.5


def default_size_ranges(strides) -> tuple[tuple[float, float], ...]:
    """Person sizes (``sqrt(w * h)`` px) per level: ``[4 s, 8 s)``, open-ended at both ends."""
    strides = tuple(int(s) for s in strides)
    ranges = []
    for i, s in enumerate(strides):
        lo = 0.0 if i == 0 else 4.0 * s
        hi = math.inf if i == len(strides) - 1 else 8.0 * s
        ranges.append((lo, hi))
    return tuple(ranges)


def level_names(strides) -> tuple[str, ...]:
    """Output names of the per-level heatmaps: ``heatmaps_p3`` for stride 8, etc."""
    return tuple(f"heatmaps_p{int(round(math.log2(int(s))))}" for s in strides)


def pose_areas(xy: np.ndarray, weights: np.ndarray | None = None, min_area: float = MIN_NMS_AREA) -> np.ndarray:
    """``[N]`` extent-box areas of poses ``xy [N, K, 2]`` (joints with ``weights > 0`` only when
    given), at least ``min_area``: the areas OKS-NMS uses, here and in the graph decoder."""
    xy = np.asarray(xy, dtype=np.float64)
    if xy.ndim != 3 or xy.shape[-1] != 2:
        raise ValueError(f"xy: expected [N, K, 2], got shape {xy.shape}")
    if weights is None:
        use = np.ones(xy.shape[:2], bool)
    else:
        use = np.asarray(weights) > 0
    big = np.where(use[..., None], xy, np.inf).min(axis=1)
    small = np.where(use[..., None], xy, -np.inf).max(axis=1)
    ext = np.where(np.isfinite(small - big), small - big, 0.0)
    return np.maximum(ext[:, 0] * ext[:, 1], min_area)


class PoseDetCodec:
    """Encoder of PoseDet's training targets and the codec oracle.

    Args:
        keypoint_set: keypoint set (name or :class:`KeypointSet`).
        strides: the pyramid levels' strides, finest first.
        assign: ``"centroid"`` (mean of the labelled joints) or ``"box_center"``.
        size_ranges: per level ``(lo, hi)`` of the person size ``sqrt(w * h)`` in pixels; default
            :func:`default_size_ranges`. Sizes outside every range go to the nearest end level.
        max_people: length of the padded list of people in the targets (extra people are not
            encoded and counted as ``dropped``).
        min_keypoints: people with fewer labelled keypoints are not encoded.
        heatmap_sigma: Gaussian sigma of the intermediate-supervision heatmaps, in cells of
            each level (the paper: 2).
    """

    def __init__(
        self,
        keypoint_set: str | KeypointSet = "coco17",
        strides=DEFAULT_STRIDES,
        assign: str = "centroid",
        size_ranges=None,
        max_people: int = 32,
        min_keypoints: int = 1,
        heatmap_sigma: float = 2.0,
    ) -> None:
        self.keypoint_set = get_keypoint_set(keypoint_set)
        try:
            strides = tuple(int(s) for s in strides)
        except (TypeError, ValueError):
            raise ValueError(f"strides: expected a sequence of positive integers, got {strides!r}") from None
        if not strides or any(s < 1 for s in strides) or list(strides) != sorted(set(strides)):
            raise ValueError(f"strides: expected increasing positive integers, got {strides!r}")
        if assign not in ASSIGN_MODES:
            raise ValueError(f"assign: expected one of {', '.join(ASSIGN_MODES)}, got {assign!r}")
        ranges = default_size_ranges(strides) if size_ranges is None else tuple(
            (float(lo), float(hi)) for lo, hi in size_ranges)
        if len(ranges) != len(strides) or any(not lo < hi for lo, hi in ranges):
            raise ValueError(f"size_ranges: expected one increasing (lo, hi) pair per stride ({len(strides)}), "
                             f"got {size_ranges!r}")
        if int(max_people) != max_people or max_people < 1:
            raise ValueError(f"max_people: expected a positive integer, got {max_people!r}")
        if int(min_keypoints) != min_keypoints or min_keypoints < 1:
            raise ValueError(f"min_keypoints: expected a positive integer, got {min_keypoints!r}")
        self.strides = strides
        self.assign = assign
        self.size_ranges = ranges
        self.max_people = int(max_people)
        self.min_keypoints = int(min_keypoints)
        self.heatmap_codecs = tuple(HeatmapCodec(self.keypoint_set, stride=s, sigma=heatmap_sigma) for s in strides)
        self.heatmap_sigma = float(heatmap_sigma)

    @property
    def num_keypoints(self) -> int:
        return self.keypoint_set.num_keypoints

    @property
    def heatmap_names(self) -> tuple[str, ...]:
        return level_names(self.strides)

    def get_config(self) -> dict:
        return {"keypoint_set": self.keypoint_set.name, "strides": list(self.strides), "assign": self.assign,
                "size_ranges": [list(r) for r in self.size_ranges], "max_people": self.max_people,
                "min_keypoints": self.min_keypoints, "heatmap_sigma": self.heatmap_sigma}

    # ------------------------------------------------------------------ candidates
    def grid_sizes(self, image_hw) -> list[tuple[int, int]]:
        hw = check_image_hw(image_hw)
        return [output_size(hw, s) for s in self.strides]

    def num_candidates(self, image_hw) -> int:
        return sum(h * w for h, w in self.grid_sizes(image_hw))

    def candidates(self, image_hw) -> tuple[np.ndarray, np.ndarray]:
        """Candidate locations ``[A, 2]`` (x, y pixels) and strides ``[A]``, in output order."""
        locs, strides = [], []
        for s, (h, w) in zip(self.strides, self.grid_sizes(image_hw)):
            ii, jj = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
            locs.append(np.stack([cell_to_pixel(jj.ravel(), s), cell_to_pixel(ii.ravel(), s)], -1))
            strides.append(np.full(h * w, s, np.float64))
        return np.concatenate(locs).astype(np.float64), np.concatenate(strides)

    def level_of(self, size: np.ndarray) -> np.ndarray:
        """Level index of each person size (``sqrt(w * h)`` px)."""
        size = np.asarray(size, dtype=np.float64)
        level = np.zeros(size.shape, np.int64)
        for i, (lo, _) in enumerate(self.size_ranges):
            level = np.where(size >= lo, i, level)
        return level

    # ------------------------------------------------------------------ encode
    def encode(self, keypoints, boxes, image_hw, areas=None, iscrowd=None) -> dict:
        """One image's people -> PoseDet targets (numpy).

        Args:
            keypoints: ``[N, K, 3]`` (x, y, v) pixels.
            boxes: ``[N, 4]`` (x1, y1, x2, y2) person boxes.
            image_hw: (H, W) of the network input the targets are for.
            areas: ``[N]`` person areas for OKS (COCO's segmentation areas, what COCOeval
                uses); default the box areas.
            iscrowd: ``[N]`` crowd flags (crowd regions are never encoded, only ignored).

        Returns a dict:
            ``gt_index`` [A] int32: the person a candidate is assigned to (-1: none);
            ``coarse_offsets`` [A, K, 2] float32: that person's joints minus the candidate
            location, in strides (0 where unassigned or unlabelled);
            ``coarse_weights`` [A, K] float32: 1 for the labelled joints of assigned candidates;
            ``cls_weights`` [A] float32: 0 for candidates ignored by the classification loss;
            ``gt_keypoints`` [G, K, 3] and ``gt_areas`` [G]: the encoded people, padded with
            zeros to G = ``max_people``; ``num_people``, ``lost`` (people that lost their
            candidate to another), ``dropped`` (beyond ``max_people``);
            ``heatmaps``: one [h, w, K] Gaussian map per level (every labelled keypoint);
            ``image_hw``.
        """
        k = self.num_keypoints
        hw = check_image_hw(image_hw)
        kp = np.asarray(keypoints, dtype=np.float64)
        if kp.size == 0:
            kp = kp.reshape(0, k, 3)
        if kp.ndim != 3 or kp.shape[1:] != (k, 3):
            raise ValueError(f"keypoints: expected shape [N, {k}, 3], got {kp.shape}")
        n = kp.shape[0]
        bx = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) if n else np.zeros((0, 4))
        if bx.shape != (n, 4):
            raise ValueError(f"boxes: expected shape [{n}, 4] (x1, y1, x2, y2), got {np.shape(boxes)}")
        crowd = np.zeros(n, bool) if iscrowd is None else np.asarray(iscrowd, bool).reshape(-1)
        if crowd.shape != (n,):
            raise ValueError(f"iscrowd: expected shape [{n}], got {crowd.shape}")
        box_area = np.clip(bx[:, 2] - bx[:, 0], 0, None) * np.clip(bx[:, 3] - bx[:, 1], 0, None)
        ar = box_area if areas is None else np.asarray(areas, dtype=np.float64).reshape(-1)
        if ar.shape != (n,):
            raise ValueError(f"areas: expected shape [{n}], got {ar.shape}")

        with np.errstate(invalid="ignore"):
            labelled = (kp[..., 2] > 0) & np.isfinite(kp[..., 0]) & np.isfinite(kp[..., 1])
        encodable = (labelled.sum(-1) >= self.min_keypoints) & ~crowd
        people = np.flatnonzero(encodable)
        dropped = max(0, people.size - self.max_people)
        people = people[: self.max_people]

        locs, cand_strides = self.candidates(hw)
        a = locs.shape[0]
        gt_index = np.full(a, -1, np.int32)
        offsets = np.zeros((a, k, 2), np.float32)
        weights = np.zeros((a, k), np.float32)
        g = self.max_people
        gt_kp = np.zeros((g, k, 3), np.float32)
        gt_areas = np.zeros(g, np.float32)

        grids = self.grid_sizes(hw)
        starts = np.cumsum([0] + [h * w for h, w in grids])
        claims = []  # (distance in cells, slot, candidate)
        for slot, p in enumerate(people):
            lab = labelled[p]
            gt_kp[slot] = np.where(lab[:, None], kp[p], 0.0)
            gt_areas[slot] = ar[p]
            lv = int(self.level_of(self._size(bx[p], kp[p, lab, :2])))
            s = self.strides[lv]
            h, w = grids[lv]
            if self.assign == "centroid":
                centre = kp[p, lab, :2].mean(0)
            else:
                centre = np.array([(bx[p, 0] + bx[p, 2]) / 2, (bx[p, 1] + bx[p, 3]) / 2])
            cell = pixel_to_cell(centre, s)  # (x, y) in cells
            j = int(np.clip(np.rint(cell[0]), 0, w - 1))
            i = int(np.clip(np.rint(cell[1]), 0, h - 1))
            claims.append((float(np.hypot(cell[0] - j, cell[1] - i)), slot, int(starts[lv] + i * w + j)))
        lost = 0
        for _, slot, cand in sorted(claims):  # nearer centres first; ties: the earlier person
            if gt_index[cand] >= 0:
                lost += 1
                continue
            gt_index[cand] = slot
            lab = gt_kp[slot, :, 2] > 0
            offsets[cand] = np.where(lab[:, None], (gt_kp[slot, :, :2] - locs[cand]) / cand_strides[cand], 0.0)
            weights[cand] = lab

        cls_weights = np.ones(a, np.float32)
        ignore = np.flatnonzero(~encodable | crowd)
        for p in ignore:
            x1, y1, x2, y2 = bx[p]
            inside = (locs[:, 0] >= x1) & (locs[:, 0] <= x2) & (locs[:, 1] >= y1) & (locs[:, 1] <= y2)
            cls_weights[inside & (gt_index < 0)] = 0.0

        visible = kp[labelled.any(-1)] if n else kp
        return {
            "gt_index": gt_index,
            "coarse_offsets": offsets,
            "coarse_weights": weights,
            "cls_weights": cls_weights,
            "gt_keypoints": gt_kp,
            "gt_areas": gt_areas,
            "num_people": int(people.size),
            "lost": int(lost),
            "dropped": int(dropped),
            "heatmaps": [hc.encode(visible, hw) for hc in self.heatmap_codecs],
            "image_hw": hw,
        }

    @staticmethod
    def _size(box: np.ndarray, joints: np.ndarray) -> float:
        w, h = box[2] - box[0], box[3] - box[1]
        if not (w > 0 and h > 0) and len(joints):  # no usable box: the joints' extent
            w, h = np.ptp(joints[:, 0]), np.ptp(joints[:, 1])
        return float(np.sqrt(max(w, 0.0) * max(h, 0.0)))

    def pack(self, targets: dict) -> dict:
        """Encoded targets -> the ``y_true`` dict of the training model (numpy float32).

        ``candidates`` ``[A + G, 3K + 1]``: rows 0..A-1 are the candidates
        ``(gt_index, stride, cls_weight, 0, ...)``, rows A.. the people
        ``(x0, y0, v0, ..., x_{K-1}, y_{K-1}, v_{K-1}, area)`` (padding rows are zero);
        ``heatmaps_p{l}`` ``[h, w, K]`` per level. See :mod:`kerapose.models.posedet.losses`.
        """
        k = self.num_keypoints
        _, strides = self.candidates(targets["image_hw"])
        a, g = strides.shape[0], targets["gt_keypoints"].shape[0]
        rows = np.zeros((a + g, 3 * k + 1), np.float32)
        rows[:a, 0] = targets["gt_index"]
        rows[:a, 1] = strides
        rows[:a, 2] = targets["cls_weights"]
        rows[a:, : 3 * k] = targets["gt_keypoints"].reshape(g, 3 * k)
        rows[a:, 3 * k] = targets["gt_areas"]
        return {"candidates": rows, **dict(zip(self.heatmap_names, targets["heatmaps"]))}

    # ------------------------------------------------------------------ oracle
    def oracle_decode(self, targets: dict, nms_threshold: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Read each encoded person back from its assigned candidate (as if the network had
        predicted the coarse targets exactly), score 1, then OKS-NMS.

        Unlabelled joints sit at the candidate with score 0, and OKS-NMS compares only the
        joints both poses have (pose areas: :func:`pose_areas` of those joints). Returns
        ``keypoints [N, K, 3]`` (x, y, score) and ``scores [N]``.
        """
        from kerapose.evaluation import oks_nms

        locs, strides = self.candidates(targets["image_hw"])
        cand = np.flatnonzero(targets["gt_index"] >= 0)
        w = targets["coarse_weights"][cand]
        xy = locs[cand, None, :] + strides[cand, None, None] * targets["coarse_offsets"][cand]
        kp = np.concatenate([xy, w[..., None]], -1)
        scores = np.ones(len(cand))
        if not len(cand):
            return kp.reshape(0, self.num_keypoints, 3), scores
        threshold = DEFAULT_OKS_NMS_THRESHOLD if nms_threshold is None else nms_threshold
        keep = oks_nms(kp, scores, pose_areas(xy, w), self.keypoint_set.sigmas_array, threshold, score_threshold=0.5)
        return kp[keep], scores[keep]


def oracle_keypoints(codec: PoseDetCodec, record, nms_threshold: float | None = None
                     ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Round trip of one image's ground truth through the PoseDet codec, at the image's own size.

    Encodes the record's people (:meth:`PoseDetCodec.encode`, COCO's areas for OKS, crowd flags)
    and reads them back from their candidates (:meth:`PoseDetCodec.oracle_decode`, then
    OKS-NMS). Used by ``kerapose oracle --codec posedet`` / ``posedet-box-center``.

    Returns ``(keypoints [N, K, 3], scores [N], counters)``; ``counters`` holds ``people`` (encoded
    or lost), ``lost`` (people that shared their candidate with a nearer one) and ``dropped``
    (beyond the codec's ``max_people``).
    """
    t = codec.encode(record.keypoints, record.boxes, (record.height, record.width), areas=record.areas,
                     iscrowd=record.iscrowd)
    kp, scores = codec.oracle_decode(t, nms_threshold)
    return kp, scores, {"people": t["num_people"], "lost": t["lost"], "dropped": t["dropped"]}
