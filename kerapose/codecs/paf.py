"""Part affinity fields (Cao et al. 2017, OpenPose): targets and decoding to people.

A PAF is a 2-D vector field per limb. For limb ``i = (a, b)`` of the keypoint set (order and
direction from :mod:`kerapose.skeleton`), channels ``2i`` (x, along columns) and ``2i + 1``
(y, along rows, pointing down) hold, at every output cell that lies on the limb of some
person, the unit vector from keypoint ``a`` to keypoint ``b``. A cell is on the limb when its
centre lies at most ``limb_width`` output cells from the line through ``a`` and ``b``
(OpenPose's ``sigma_l``; its training code uses 1 cell at stride 8) and projects onto the
segment extended by ``limb_width`` at both ends. The extension plays the part of OpenPose's
rounded bounding box: limbs shorter than a cell still get a field, and the bilinear reads
of the grouping near a limb's ends see full vectors. Where the limbs of several people cover
one cell the vectors are averaged (the sum divided by the number of limbs covering it), as
in OpenPose; elsewhere the field is zero.

Decoding finds keypoint candidates with :meth:`HeatmapCodec.decode_peaks` at the same stride
and assembles people with OpenPose's greedy grouping (:mod:`kerapose.codecs.grouping`).
Pixel <-> cell conversion goes through :mod:`kerapose.codecs.grid`.
"""

from __future__ import annotations

import numpy as np

from kerapose.codecs.grid import output_size, pixel_to_cell, check_image_hw
from kerapose.codecs.grouping import group_people, limb_order
from kerapose.codecs.heatmap import HeatmapCodec
from kerapose.skeleton import KeypointSet, coco17_to_openpose18, get_keypoint_set

__all__ = ["PafCodec"]


class PafCodec:
    """Part affinity field targets and their decoding to people.

    Args:
        keypoint_set: keypoint set (name or :class:`KeypointSet`); its limbs define the fields.
        stride: output stride of heatmaps and PAFs in input pixels.
        limb_width: half-width of a limb's field in *output cells*: a cell counts when its
            centre is at most this far from the limb's line and from the segment's span.
        sigma: Gaussian sigma (output cells) of the heatmaps that :meth:`oracle_keypoints`
            encodes; decoding does not use it.
        peak_threshold, max_peaks, refine: peak decoding (:class:`HeatmapCodec`).
        num_samples, paf_threshold, min_sample_fraction, distance_ratio, min_parts,
        min_person_score, root, sampling: grouping settings, see
            :func:`kerapose.codecs.grouping.group_people` (defaults: OpenPose's).
    """

    def __init__(
        self,
        keypoint_set: str | KeypointSet = "coco17",
        stride: int = 8,
        limb_width: float = 1.0,
        sigma: float = 1.0,
        peak_threshold: float = 0.1,
        max_peaks: int = 30,
        refine: bool = True,
        *,
        num_samples: int = 10,
        paf_threshold: float = 0.05,
        min_sample_fraction: float = 0.8,
        distance_ratio: float = 0.5,
        min_parts: int = 4,
        min_person_score: float = 0.4,
        root: int | str | None = None,
        sampling: str = "bilinear",
    ) -> None:
        self.keypoint_set = get_keypoint_set(keypoint_set)
        if self.keypoint_set.num_limbs == 0:
            raise ValueError(f"keypoint set {self.keypoint_set.name!r} has no limbs: nothing to encode as PAFs")
        if not limb_width > 0:
            raise ValueError(f"limb_width must be positive (output cells), got {limb_width!r}")
        if sampling not in ("bilinear", "nearest"):
            raise ValueError(f"sampling: expected 'bilinear' or 'nearest', got {sampling!r}")
        if int(num_samples) != num_samples or num_samples < 2:
            raise ValueError(f"num_samples must be an integer >= 2, got {num_samples!r}")
        # Validates stride, sigma, max_peaks; shares the peak decoder with the heatmap codec.
        self.heatmap_codec = HeatmapCodec(
            self.keypoint_set, stride=stride, sigma=sigma, peak_threshold=peak_threshold,
            max_peaks=max_peaks, refine=refine,
        )
        self.stride = self.heatmap_codec.stride
        self.limb_width = float(limb_width)
        self.grouping = {
            "num_samples": int(num_samples),
            "paf_threshold": float(paf_threshold),
            "min_sample_fraction": float(min_sample_fraction),
            "distance_ratio": float(distance_ratio),
            "min_parts": int(min_parts),
            "min_person_score": float(min_person_score),
            "sampling": sampling,
        }
        self.root = root
        self.order = limb_order(self.keypoint_set, root)  # validates root

    @property
    def num_channels(self) -> int:
        return self.keypoint_set.num_paf_channels

    def get_config(self) -> dict:
        hc = self.heatmap_codec
        return {
            "keypoint_set": self.keypoint_set.name,
            "stride": self.stride,
            "limb_width": self.limb_width,
            "sigma": hc.sigma,
            "peak_threshold": hc.peak_threshold,
            "max_peaks": hc.max_peaks,
            "refine": hc.refine,
            "root": self.root,
            **self.grouping,
        }

    def output_size(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        return output_size(check_image_hw(image_hw), self.stride)

    # ------------------------------------------------------------------ encode
    def encode(self, keypoints: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
        """Ground-truth keypoints ``[N, K, 3]`` (pixels) -> PAFs ``[h, w, 2L]`` float32.

        A limb is drawn when both its ends are labelled (v > 0) with finite coordinates and
        apart; ends outside the image still draw the part of the limb that crosses the grid.
        """
        ks = self.keypoint_set
        kp = np.asarray(keypoints, dtype=np.float64)
        if kp.size == 0 and kp.ndim <= 3:
            kp = kp.reshape(0, ks.num_keypoints, 3)
        if kp.ndim != 3 or kp.shape[1:] != (ks.num_keypoints, 3):
            raise ValueError(f"keypoints: expected shape [N, {ks.num_keypoints}, 3], got {kp.shape}")
        h, w = self.output_size(image_hw)
        out = np.zeros((h, w, self.num_channels), np.float32)
        if kp.shape[0] == 0:
            return out
        limbs = np.asarray(ks.limbs, dtype=np.intp)
        with np.errstate(invalid="ignore"):
            ok = (kp[..., 2] > 0) & np.isfinite(kp[..., :2]).all(-1)  # [N, K]
        cells = pixel_to_cell(np.where(ok[..., None], kp[..., :2], 0.0), self.stride)  # [N, K, 2]
        a, b = cells[:, limbs[:, 0]], cells[:, limbs[:, 1]]  # [N, L, 2]
        d = b - a
        length = np.hypot(d[..., 0], d[..., 1])
        valid = ok[:, limbs[:, 0]] & ok[:, limbs[:, 1]] & (length > 1e-6)  # [N, L]
        unit = d / np.maximum(length, 1e-6)[..., None]
        xs = np.arange(w, dtype=np.float64)
        ys = np.arange(h, dtype=np.float64)
        # Loop over limbs only; each step is vectorised over the limb's people and all cells.
        for li in np.flatnonzero(valid.any(0)):
            n = np.flatnonzero(valid[:, li])
            ux, uy = unit[n, li, 0, None, None], unit[n, li, 1, None, None]  # [n, 1, 1]
            rx = xs[None, None, :] - a[n, li, 0, None, None]  # [n, 1, w]
            ry = ys[None, :, None] - a[n, li, 1, None, None]  # [n, h, 1]
            along = ux * rx + uy * ry  # [n, h, w]
            across = np.abs(ux * ry - uy * rx)
            lw = self.limb_width
            on = (along >= -lw) & (along <= length[n, li, None, None] + lw) & (across <= lw)
            count = on.sum(0)
            covered = count > 0
            denom = np.maximum(count, 1)
            out[..., 2 * li] = np.where(covered, (on * ux).sum(0) / denom, 0.0)
            out[..., 2 * li + 1] = np.where(covered, (on * uy).sum(0) / denom, 0.0)
        return out

    # ------------------------------------------------------------------ decode
    def decode(
        self,
        heatmaps: np.ndarray,
        pafs: np.ndarray,
        image_hw: tuple[int, int] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Network outputs -> ``(keypoints [P, K, 3] (x, y, score) pixels, scores [P])``.

        ``heatmaps`` is ``[h, w, K]``, or ``[h, w, K + 1]`` for a keypoint set with a
        background channel (the last channel is then ignored); ``pafs`` is ``[h, w, 2L]``
        on the same grid. ``image_hw`` (pixels) sets the image height of the grouping's
        distance prior; by default ``h * stride``.
        """
        ks = self.keypoint_set
        hm = np.asarray(heatmaps, dtype=np.float32)
        pf = np.asarray(pafs, dtype=np.float32)
        allowed = sorted({ks.num_keypoints, ks.num_heatmap_channels})
        if hm.ndim != 3 or hm.shape[2] not in allowed:
            raise ValueError(
                f"heatmaps: expected shape [h, w, K] with K in {allowed} for keypoint set "
                f"{ks.name!r}, got {hm.shape}"
            )
        if pf.ndim != 3 or pf.shape[2] != self.num_channels:
            raise ValueError(f"pafs: expected shape [h, w, {self.num_channels}], got {pf.shape}")
        if hm.shape[:2] != pf.shape[:2]:
            raise ValueError(f"heatmaps {hm.shape[:2]} and pafs {pf.shape[:2]} must share one grid")
        if image_hw is not None:
            image_hw = check_image_hw(image_hw)
        peaks = self.heatmap_codec.decode_peaks(hm[..., : ks.num_keypoints])
        return group_people(
            peaks, pf, ks, self.stride, image_hw, order=self.order, **self.grouping
        )

    def oracle_keypoints(self, record) -> tuple[np.ndarray, np.ndarray]:
        """Round trip of one image's ground truth: encode heatmaps and PAFs, decode people.

        ``record`` is an :class:`~kerapose.data.coco.ImageRecord`; crowd annotations are left
        out. COCO-17 records are converted (neck added) when the codec's set is OpenPose-18.
        Returns ``(keypoints [P, K, 3], scores [P])`` in the codec's keypoint set.
        """
        gt = np.asarray(record.keypoints, dtype=np.float64)
        k = self.keypoint_set.num_keypoints
        if gt.ndim == 3 and gt.shape[1] == 17 and k == 18 and self.keypoint_set.name == "openpose18":
            gt = coco17_to_openpose18(gt)
        if gt.ndim != 3 or gt.shape[1:] != (k, 3):
            raise ValueError(f"record.keypoints: expected shape [N, {k}, 3], got {gt.shape}")
        gt = gt[~np.asarray(record.iscrowd, bool).reshape(-1)]
        hw = (int(record.height), int(record.width))
        heat = self.heatmap_codec.encode(gt, hw)
        return self.decode(heat, self.encode(gt, hw), hw)
