"""Keypoint confidence heatmaps: Gaussian targets and sub-pixel peak decoding.

Encoding follows the FTN paper (eq. 1) and OpenPose: each labelled keypoint (v > 0) of each
person is a Gaussian of standard deviation ``sigma`` output cells centred on the keypoint,
and a channel is the per-pixel *maximum* over persons (not the sum, so that two nearby people
keep two distinct peaks). Pixel <-> cell conversion goes through :mod:`kerapose.codecs.grid`.

Decoding finds peaks with a 3x3 max-pool non-maximum suppression, keeps those above a
threshold, and refines each one to sub-cell precision by fitting a parabola to the *log* of
the peak and its two neighbours on each axis. The log of a Gaussian is exactly a parabola, so
an isolated encoded Gaussian decodes to its keypoint up to float rounding; on a network
output the same step behaves like the usual second-order Taylor refinement.

The numpy decoder (:meth:`HeatmapCodec.decode_peaks`) and the in-graph decoder
(:meth:`HeatmapCodec.decode_peaks_tf`, max_pool2d + top_k + gathers, TFLite builtins only)
compute the same thing in the same float32 arithmetic.
"""

from __future__ import annotations

import numpy as np

from kerapose.codecs.grid import cell_to_pixel, output_size, pixel_to_cell, check_image_hw
from kerapose.skeleton import KeypointSet, get_keypoint_set

__all__ = ["HeatmapCodec", "oracle_keypoints", "LOG_EPS"]

# Floor under heatmap values before the log of the refinement step (network outputs can be
# <= 0). Shared by the numpy and TF decoders so that they agree.
LOG_EPS = 1e-10
# Gaussian values below this are not written (window truncation of the encoder).
_TRUNCATE = 1e-7


class HeatmapCodec:
    """Gaussian keypoint heatmaps at one output stride.

    Args:
        keypoint_set: keypoint set (name or :class:`KeypointSet`); one channel per keypoint.
        stride: output stride of the heatmaps in input pixels.
        sigma: Gaussian standard deviation in *output cells* (2 cells = 8 px at stride 4).
        peak_threshold: default minimum peak value kept by the decoders (strictly greater).
        max_peaks: at most this many peaks per channel from :meth:`decode_peaks`.
        refine: sub-cell refinement of peak positions.
    """

    def __init__(
        self,
        keypoint_set: str | KeypointSet = "coco17",
        stride: int = 4,
        sigma: float = 2.0,
        peak_threshold: float = 0.1,
        max_peaks: int = 30,
        refine: bool = True,
    ) -> None:
        self.keypoint_set = get_keypoint_set(keypoint_set)
        if int(stride) != stride or stride < 1:
            raise ValueError(f"stride must be a positive integer, got {stride!r}")
        if not sigma > 0:
            raise ValueError(f"sigma must be positive (output cells), got {sigma!r}")
        if int(max_peaks) != max_peaks or max_peaks < 1:
            raise ValueError(f"max_peaks must be a positive integer, got {max_peaks!r}")
        self.stride = int(stride)
        self.sigma = float(sigma)
        self.peak_threshold = float(peak_threshold)
        self.max_peaks = int(max_peaks)
        self.refine = bool(refine)

    @property
    def num_channels(self) -> int:
        return self.keypoint_set.num_keypoints

    def get_config(self) -> dict:
        return {
            "keypoint_set": self.keypoint_set.name,
            "stride": self.stride,
            "sigma": self.sigma,
            "peak_threshold": self.peak_threshold,
            "max_peaks": self.max_peaks,
            "refine": self.refine,
        }

    def output_size(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        return output_size(check_image_hw(image_hw), self.stride)

    # ------------------------------------------------------------------ encode
    def encode(self, keypoints: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
        """Ground-truth keypoints ``[N, K, 3]`` (pixels) -> heatmaps ``[h, w, K]`` float32.

        Keypoints with v == 0 or a non-finite coordinate are skipped. Keypoints outside the
        image still contribute the part of their Gaussian that falls on the grid (the
        network sees that evidence at the border); far outside, that part is zero.
        """
        kp = _check_keypoints(keypoints, self.num_channels)
        h, w = self.output_size(image_hw)
        k = self.num_channels
        out = np.zeros(k * h * w, np.float32)
        with np.errstate(invalid="ignore"):
            valid = (kp[..., 2] > 0) & np.isfinite(kp[..., 0]) & np.isfinite(kp[..., 1])
        n_i, c_i = np.nonzero(valid)
        if n_i.size:
            cx = pixel_to_cell(kp[n_i, c_i, 0], self.stride)
            cy = pixel_to_cell(kp[n_i, c_i, 1], self.stride)
            # Each Gaussian is evaluated on a square window where it exceeds _TRUNCATE
            # (5.7 sigma), 20-50x less work than whole maps and equal to them within 1e-7.
            r = min(int(np.ceil(self.sigma * np.sqrt(2.0 * np.log(1.0 / _TRUNCATE)))), max(h, w))
            off = np.arange(-r, r + 1)
            # Window centres clipped near the grid: farther keypoints miss it either way.
            x0 = np.rint(np.clip(cx, -r - 1, w + r)).astype(np.int64)
            y0 = np.rint(np.clip(cy, -r - 1, h + r)).astype(np.int64)
            xs, ys = x0[:, None] + off, y0[:, None] + off  # [P, S]
            inv = -0.5 / self.sigma**2
            gx = np.exp(inv * (xs - cx[:, None]) ** 2)
            gy = np.exp(inv * (ys - cy[:, None]) ** 2)
            inside = ((ys >= 0) & (ys < h))[:, :, None] & ((xs >= 0) & (xs < w))[:, None, :]
            flat = (c_i[:, None, None] * h + ys[:, :, None]) * w + xs[:, None, :]
            # Max over persons (FTN eq. 1): an unbuffered scatter-max.
            np.maximum.at(out, flat[inside], (gy[:, :, None] * gx[:, None, :])[inside].astype(np.float32))
        return np.ascontiguousarray(out.reshape(k, h, w).transpose(1, 2, 0))

    # ------------------------------------------------------------------ decode (numpy)
    def decode_peaks(self, heatmaps: np.ndarray, threshold: float | None = None) -> list[np.ndarray]:
        """Heatmaps ``[h, w, K]`` -> K arrays ``[n_k, 3]`` of (x_pixel, y_pixel, score).

        A peak is a cell equal to the maximum of its 3x3 neighbourhood with a value
        > ``threshold``; each channel keeps its ``max_peaks`` best, sorted by score
        (ties: row-major order, as ``tf.math.top_k``).
        """
        hm = np.asarray(heatmaps, dtype=np.float32)
        if hm.ndim != 3 or hm.shape[-1] != self.num_channels:
            raise ValueError(
                f"heatmaps: expected shape [h, w, {self.num_channels}], got {hm.shape}"
            )
        thr = self.peak_threshold if threshold is None else float(threshold)
        h, w, k = hm.shape
        padded = np.pad(hm, ((1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
        pooled = hm.copy()
        for dy in range(3):
            for dx in range(3):
                np.maximum(pooled, padded[dy : dy + h, dx : dx + w], out=pooled)
        is_peak = (hm == pooled) & (hm > thr)
        logs = np.log(np.maximum(hm, np.float32(LOG_EPS))) if self.refine else None
        result = []
        for c in range(k):
            flat = np.flatnonzero(is_peak[:, :, c])  # row-major, ascending
            scores = hm[:, :, c].ravel()[flat]
            order = np.argsort(-scores, kind="stable")[: self.max_peaks]
            flat, scores = flat[order], scores[order]
            y, x = np.divmod(flat, w)
            fx, fy = x.astype(np.float32), y.astype(np.float32)
            if self.refine and flat.size:
                lg = logs[:, :, c]
                fx = fx + _parabola_offset(lg, y, x, 0, 1, x > 0, x < w - 1)
                fy = fy + _parabola_offset(lg, y, x, 1, 0, y > 0, y < h - 1)
            px = cell_to_pixel(fx, self.stride).astype(np.float32)
            py = cell_to_pixel(fy, self.stride).astype(np.float32)
            result.append(np.stack([px, py, scores], axis=-1).reshape(-1, 3))
        return result

    # ------------------------------------------------------------------ decode (graph)
    def decode_peaks_tf(self, heatmaps, top_k: int):
        """In-graph peaks: ``[B, h, w, K]`` -> ``(xy [B, K, top_k, 2] pixels, scores [B, K, top_k])``.

        Cells that are not a 3x3 maximum get score 0, so apply a threshold > 0 to the scores
        (slots below it are padding). For every peak above the threshold this equals
        :meth:`decode_peaks`. Uses max_pool2d, top_k, floor-div/mod and 1-D gathers only, so
        it converts to TFLite builtins and to ONNX.
        """
        import tensorflow as tf

        top_k = int(top_k)
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        hm = tf.convert_to_tensor(heatmaps, dtype=tf.float32)
        if hm.shape.rank != 4:
            raise ValueError(f"heatmaps: expected rank 4 [B, h, w, K], got shape {hm.shape}")
        if hm.shape[-1] is not None and hm.shape[-1] != self.num_channels:
            raise ValueError(
                f"heatmaps: expected {self.num_channels} channels, got shape {hm.shape}"
            )
        static_hw = hm.shape[1], hm.shape[2]
        if None not in static_hw and static_hw[0] * static_hw[1] < top_k:
            raise ValueError(f"top_k={top_k} exceeds the {static_hw[0]}x{static_hw[1]} cells")
        shape = tf.shape(hm)
        b, h, w = shape[0], shape[1], shape[2]
        k = self.num_channels
        hw = h * w

        pooled = tf.nn.max_pool2d(hm, ksize=3, strides=1, padding="SAME")
        peaks = tf.where(tf.equal(hm, pooled), hm, tf.zeros_like(hm))
        chw = tf.transpose(peaks, [0, 3, 1, 2])  # [B, K, h, w]
        scores, idx = tf.math.top_k(tf.reshape(chw, [b, k, hw]), k=top_k)  # [B, K, top_k]
        y = tf.math.floordiv(idx, w)
        x = tf.math.floormod(idx, w)
        fx = tf.cast(x, tf.float32)
        fy = tf.cast(y, tf.float32)
        if self.refine:
            logs = tf.math.log(tf.maximum(tf.transpose(hm, [0, 3, 1, 2]), LOG_EPS))
            flat_logs = tf.reshape(logs, [-1])
            base = tf.reshape(tf.range(b * k, dtype=idx.dtype) * hw, [b, k, 1])
            pos = base + idx

            def at(offset, ok):
                # Gather a neighbour; out-of-grid neighbours read the centre (masked below).
                return tf.gather(flat_logs, tf.where(ok, pos + offset, pos))

            centre = tf.gather(flat_logs, pos)
            ok_l, ok_r = x > 0, x < w - 1
            ok_u, ok_d = y > 0, y < h - 1
            fx += parabola_offset_tf(at(-1, ok_l), centre, at(1, ok_r), ok_l & ok_r)
            fy += parabola_offset_tf(at(-w, ok_u), centre, at(w, ok_d), ok_u & ok_d)
        s = float(self.stride)
        half = (s - 1.0) / 2.0
        xy = tf.stack([fx * s + half, fy * s + half], axis=-1)
        return xy, scores


def _parabola_offset(lg: np.ndarray, y, x, dy: int, dx: int, ok_lo, ok_hi) -> np.ndarray:
    """Vertex offset of the parabola through (lo, centre, hi) log values; 0 at borders/flat."""
    ok = ok_lo & ok_hi
    ylo, xlo = np.where(ok, y - dy, y), np.where(ok, x - dx, x)
    yhi, xhi = np.where(ok, y + dy, y), np.where(ok, x + dx, x)
    return parabola_vertex(lg[ylo, xlo], lg[y, x], lg[yhi, xhi], ok)


def parabola_vertex(lo, c, hi, ok):
    lo, c, hi = (np.asarray(a, np.float32) for a in (lo, c, hi))
    curv = lo - np.float32(2.0) * c + hi
    good = ok & (curv < 0)
    off = np.float32(0.5) * (lo - hi) / np.where(good, curv, np.float32(-1.0))
    return np.where(good, np.clip(off, -0.5, 0.5), np.float32(0.0)).astype(np.float32)


def parabola_offset_tf(lo, c, hi, ok):
    import tensorflow as tf

    curv = lo - 2.0 * c + hi
    # Logs of heatmaps clamped at LOG_EPS lie above -24, so |curv| < 50 in float32. A float16
    # export stores LOG_EPS = 1e-10 as 0: a neighbour at or below 0 then has log -inf and curv
    # -inf, and the vertex would be inf / inf = NaN; such a peak keeps its cell centre instead.
    good = tf.logical_and(ok, tf.logical_and(curv < 0.0, curv > -1000.0))
    off = 0.5 * (lo - hi) / tf.where(good, curv, -tf.ones_like(curv))
    return tf.where(good, tf.clip_by_value(off, -0.5, 0.5), tf.zeros_like(off))


def _check_keypoints(keypoints, k: int) -> np.ndarray:
    kp = np.asarray(keypoints, dtype=np.float64)
    if kp.size == 0 and kp.ndim <= 3:
        return kp.reshape(0, k, 3)
    if kp.ndim != 3 or kp.shape[1:] != (k, 3):
        raise ValueError(f"keypoints: expected shape [N, {k}, 3], got {kp.shape}")
    return kp


def oracle_keypoints(codec: HeatmapCodec, record) -> tuple[np.ndarray, np.ndarray]:
    """Round trip of one image's ground truth through the heatmap codec.

    Encodes the record's keypoints, decodes the peaks, and gives each labelled keypoint of
    each non-crowd person with at least one labelled keypoint the nearest decoded peak of
    its type. The heatmap codec has no grouping of its own, so grouping here is by ground
    truth identity: this measures encode/decode precision (peak merging, sub-pixel error),
    not a grouping method. Used by ``kerapose oracle --codec heatmap``.

    Returns ``(keypoints [M, K, 3] (x, y, score), scores [M])`` in the order of those
    persons in the record; unlabelled keypoints and keypoints with no peak are (0, 0, 0);
    a person's score is the mean score of its found keypoints.
    """
    gt = _check_keypoints(record.keypoints, codec.num_channels)
    heat = codec.encode(gt, (record.height, record.width))
    peaks = codec.decode_peaks(heat)
    labelled = gt[..., 2] > 0
    keep = labelled.any(-1) & ~np.asarray(record.iscrowd, bool).reshape(-1)
    gt, labelled = gt[keep], labelled[keep]
    out = np.zeros(gt.shape, np.float64)
    for c, pk in enumerate(peaks):
        if len(pk) == 0:
            continue
        rows = np.flatnonzero(labelled[:, c])
        if rows.size == 0:
            continue
        d2 = ((gt[rows, c, None, :2] - pk[None, :, :2]) ** 2).sum(-1)  # [r, n_k]
        nearest = pk[np.argmin(d2, axis=1)]
        out[rows, c] = nearest
    found = out[..., 2] > 0
    scores = np.where(found.any(-1), out[..., 2].sum(-1) / np.maximum(found.sum(-1), 1), 0.0)
    return out, scores
