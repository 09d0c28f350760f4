"""Pose Residual Network (MultiPoseNet) codec: RoI crops of heatmaps, training pairs, decoding.

The PRN sees, for one detected person, the keypoint heatmaps inside the person's box
*enlarged* by ``margin`` of its size on each side, resized to ``input_hw`` (56x36), and
outputs per channel a distribution over the 56x36 cells whose argmax is that person's joint.

Crop grid: cell ``(i, j)`` of the ``ch x cw`` grid samples the image point
``(X1 + j * (X2 - X1) / (cw - 1), Y1 + i * (Y2 - Y1) / (ch - 1))`` of the enlarged box
``(X1, Y1, X2, Y2)``: the first and last cells sit on the box edges, which is exactly the
sampling of ``tf.image.crop_and_resize`` and of :func:`kerapose.ops.crop_and_resize_bilinear`,
so encoding, in-graph cropping and decoding share one mapping.

* :meth:`PRNCodec.crop` / :meth:`PRNCodec.crop_tf`: heatmaps -> ``[N, 56, 36, K]``.
* :meth:`PRNCodec.training_pair`: input (everyone's labelled keypoints inside the enlarged
  box as Gaussians) and target (the owner's keypoints, one-hot or a normalised narrow
  Gaussian) rendered directly on the crop grid, as in the released PRN training code.
* :meth:`PRNCodec.decode` / :meth:`PRNCodec.decode_tf`: per-channel argmax -> image pixels.
* :meth:`PRNCodec.max_baseline`: the paper's untrained "Max" assignment (argmax of each
  cropped heatmap channel).
"""

from __future__ import annotations

import numpy as np

from kerapose.codecs.grid import pixel_to_cell
from kerapose.codecs.heatmap import LOG_EPS, parabola_offset_tf, parabola_vertex
from kerapose.skeleton import KeypointSet, get_keypoint_set

__all__ = ["PRNCodec", "oracle_keypoints", "ideal_keypoints", "pose_scores"]


class PRNCodec:
    """Encoding and decoding for the Pose Residual Network.

    Args:
        keypoint_set: keypoint set; one channel per keypoint.
        input_hw: crop grid ``(height, width)``; the paper's 56x36.
        margin: each box side is pushed out by this fraction of the box's width (left/right)
            or height (top/bottom) before cropping.
        input_sigma: standard deviation, in crop cells, of the Gaussians of the training
            input.
        target_sigma: 0 (default) makes one-hot targets at the cell nearest each keypoint;
            > 0 makes Gaussians of this standard deviation (crop cells) normalised to sum 1.
        min_box_size: boxes are widened (about their centre) to at least this many pixels
            so that degenerate detections still map to a grid.
        refine: decode to sub-cell precision with the parabola-on-log step of
            :class:`~kerapose.codecs.heatmap.HeatmapCodec` around each argmax (on a softmax
            output the log is the logit up to a constant); one-hot outputs are unchanged.
    """

    def __init__(
        self,
        keypoint_set: str | KeypointSet = "coco17",
        input_hw: tuple[int, int] = (56, 36),
        margin: float = 0.1,
        input_sigma: float = 1.0,
        target_sigma: float = 0.0,
        min_box_size: float = 1.0,
        refine: bool = True,
    ) -> None:
        self.keypoint_set = get_keypoint_set(keypoint_set)
        try:
            ch, cw = (int(v) for v in input_hw)
        except (TypeError, ValueError):
            raise ValueError(f"input_hw: expected (height, width), got {input_hw!r}") from None
        if ch < 2 or cw < 2:
            raise ValueError(f"input_hw: expected both sides >= 2, got {input_hw!r}")
        if not (np.isfinite(margin) and margin >= 0):
            raise ValueError(f"margin: expected a finite value >= 0, got {margin!r}")
        if not input_sigma > 0:
            raise ValueError(f"input_sigma: expected > 0, got {input_sigma!r}")
        if not target_sigma >= 0:
            raise ValueError(f"target_sigma: expected >= 0 (0 = one-hot), got {target_sigma!r}")
        if not min_box_size > 0:
            raise ValueError(f"min_box_size: expected > 0, got {min_box_size!r}")
        self.input_hw = (ch, cw)
        self.margin = float(margin)
        self.input_sigma = float(input_sigma)
        self.target_sigma = float(target_sigma)
        self.min_box_size = float(min_box_size)
        self.refine = bool(refine)

    @property
    def num_channels(self) -> int:
        return self.keypoint_set.num_keypoints

    def get_config(self) -> dict:
        return {
            "keypoint_set": self.keypoint_set.name,
            "input_hw": self.input_hw,
            "margin": self.margin,
            "input_sigma": self.input_sigma,
            "target_sigma": self.target_sigma,
            "min_box_size": self.min_box_size,
            "refine": self.refine,
        }

    # ------------------------------------------------------------------ geometry
    def enlarge(self, boxes: np.ndarray) -> np.ndarray:
        """``[N, 4]`` x1, y1, x2, y2 pixels -> the enlarged boxes the crops cover (float64)."""
        b = _check_boxes(boxes)
        x1, y1, x2, y2 = b.T
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        bw = np.maximum(x2 - x1, self.min_box_size)
        bh = np.maximum(y2 - y1, self.min_box_size)
        bw, bh = bw * (1 + 2 * self.margin), bh * (1 + 2 * self.margin)
        return np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=-1)

    def to_grid(self, points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """Image pixels ``[N, ..., 2]`` (x, y) -> continuous crop-grid (u = column, v = row) of box n."""
        eb = self.enlarge(boxes)
        p = np.asarray(points, dtype=np.float64)
        shape = (eb.shape[0],) + (1,) * (p.ndim - 2)
        ch, cw = self.input_hw
        x1, y1, x2, y2 = (eb[:, i].reshape(shape) for i in range(4))
        u = (p[..., 0] - x1) / (x2 - x1) * (cw - 1)
        v = (p[..., 1] - y1) / (y2 - y1) * (ch - 1)
        return np.stack([u, v], axis=-1)

    def from_grid(self, grid: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`to_grid`: ``[N, ..., 2]`` (u, v) -> image pixels (x, y)."""
        eb = self.enlarge(boxes)
        g = np.asarray(grid, dtype=np.float64)
        shape = (eb.shape[0],) + (1,) * (g.ndim - 2)
        ch, cw = self.input_hw
        x1, y1, x2, y2 = (eb[:, i].reshape(shape) for i in range(4))
        x = x1 + g[..., 0] / (cw - 1) * (x2 - x1)
        y = y1 + g[..., 1] / (ch - 1) * (y2 - y1)
        return np.stack([x, y], axis=-1)

    # ------------------------------------------------------------------ cropping
    def crop_boxes(self, boxes, heatmap_hw, stride: int):
        """Pixel boxes -> normalised (y1, x1, y2, x2) boxes of a ``heatmap_hw`` map at ``stride``.

        Works on numpy arrays and on tensors (tf ops when given a tensor), for in-graph use.
        """
        if _is_tensor(boxes) or _is_tensor(heatmap_hw):
            return self._crop_boxes_tf(boxes, heatmap_hw, stride)
        eb = self.enlarge(boxes)
        h, w = (int(v) for v in heatmap_hw)
        cx1, cx2 = pixel_to_cell(eb[:, 0], stride), pixel_to_cell(eb[:, 2], stride)
        cy1, cy2 = pixel_to_cell(eb[:, 1], stride), pixel_to_cell(eb[:, 3], stride)
        # A 1-cell axis samples row/column 0 whatever the box (crop_and_resize multiplies by H - 1).
        hm1, wm1 = max(h - 1, 1), max(w - 1, 1)
        return np.stack([cy1 / hm1, cx1 / wm1, cy2 / hm1, cx2 / wm1], axis=-1).astype(np.float32)

    def _crop_boxes_tf(self, boxes, heatmap_hw, stride: int):
        import tensorflow as tf

        b = tf.cast(boxes, tf.float32)
        x1, y1, x2, y2 = tf.unstack(b, 4, axis=-1)
        cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
        grow = 1.0 + 2.0 * self.margin
        bw = tf.maximum(x2 - x1, self.min_box_size) * grow
        bh = tf.maximum(y2 - y1, self.min_box_size) * grow
        s = float(stride)
        half = (s - 1.0) / 2.0

        def cell(p):
            return (p - half) / s

        hw = tf.cast(heatmap_hw, tf.float32)
        hm1 = tf.maximum(hw[0] - 1.0, 1.0)
        wm1 = tf.maximum(hw[1] - 1.0, 1.0)
        return tf.stack(
            [cell(cy - bh / 2) / hm1, cell(cx - bw / 2) / wm1, cell(cy + bh / 2) / hm1, cell(cx + bw / 2) / wm1],
            axis=-1,
        )

    def crop_tf(self, heatmaps, boxes, stride: int, box_indices=None):
        """In-graph crop: heatmaps ``[B, h, w, K]``, boxes ``[N, 4]`` pixels -> ``[N, ch, cw, K]``.

        Built on :func:`kerapose.ops.crop_and_resize_bilinear` (TFLite builtins only).
        """
        import tensorflow as tf

        from kerapose.ops.crop import crop_and_resize_bilinear

        hm = tf.convert_to_tensor(heatmaps, tf.float32)
        boxes = tf.convert_to_tensor(boxes, tf.float32)
        if box_indices is None:
            box_indices = tf.zeros(tf.shape(boxes)[:1], tf.int32)
        norm = self._crop_boxes_tf(boxes, tf.shape(hm)[1:3], stride)
        return crop_and_resize_bilinear(hm, norm, box_indices, self.input_hw, extrapolation_value=0.0)

    def crop(self, heatmaps: np.ndarray, boxes: np.ndarray, stride: int, image_index=None) -> np.ndarray:
        """Heatmaps ``[h, w, K]`` or ``[B, h, w, K]`` -> crops ``[N, ch, cw, K]`` float32 (zeros outside)."""
        hm = np.asarray(heatmaps, dtype=np.float32)
        if hm.ndim == 3:
            hm = hm[None]
        if hm.ndim != 4 or hm.shape[-1] != self.num_channels:
            raise ValueError(
                f"heatmaps: expected [h, w, {self.num_channels}] or [B, h, w, {self.num_channels}], got {hm.shape}"
            )
        b = _check_boxes(boxes)
        n = b.shape[0]
        if image_index is None:
            if hm.shape[0] != 1 and n:
                raise ValueError(f"image_index is required with a batch of {hm.shape[0]} heatmaps")
            idx = np.zeros(n, np.int32)
        else:
            idx = np.asarray(image_index, dtype=np.int64).reshape(-1)
            if idx.shape != (n,):
                raise ValueError(f"image_index: expected shape ({n},), got {idx.shape}")
            if n and (idx.min() < 0 or idx.max() >= hm.shape[0]):
                raise ValueError(f"image_index: values must lie in 0..{hm.shape[0] - 1}")
        ch, cw = self.input_hw
        if n == 0:
            return np.zeros((0, ch, cw, self.num_channels), np.float32)
        norm = self.crop_boxes(b, hm.shape[1:3], stride)
        out = _graph_crop()(hm, norm, idx.astype(np.int32), self.input_hw)
        return out.numpy()

    # ------------------------------------------------------------------ training pairs
    def _render(self, grid_points: np.ndarray, valid: np.ndarray, sigma: float) -> np.ndarray:
        """Gaussians at ``grid_points [M, K, 2]`` (max over M) -> ``[ch, cw, K]``."""
        ch, cw = self.input_hw
        k = self.num_channels
        out = np.zeros((k, ch, cw))
        us, vs = np.arange(cw, dtype=np.float64), np.arange(ch, dtype=np.float64)
        inv = -0.5 / sigma**2
        for m in np.flatnonzero(valid.any(-1)):
            c = np.flatnonzero(valid[m])
            gx = np.exp(inv * (us[None, :] - grid_points[m, c, 0, None]) ** 2)
            gy = np.exp(inv * (vs[None, :] - grid_points[m, c, 1, None]) ** 2)
            out[c] = np.maximum(out[c], gy[:, :, None] * gx[:, None, :])
        return out.transpose(1, 2, 0).astype(np.float32)

    def training_pair(self, record, person_index: int,
                      render_input: bool = True) -> tuple[np.ndarray | None, np.ndarray]:
        """One person's ``(input [ch, cw, K], target [ch, cw, K])`` float32.

        Input: every non-crowd person's labelled (v > 0) keypoints that fall inside the
        owner's enlarged box, as Gaussians (``input_sigma``), max over persons. Target: the
        owner's labelled keypoints (clipped into the grid), one-hot or normalised Gaussians;
        channels the owner has not labelled are all zero. ``render_input=False`` skips the
        input (returned as None) for callers that bring their own (:meth:`training_targets`).
        """
        n = len(record.keypoints)
        if not -n <= int(person_index) < n:
            raise ValueError(f"person_index {person_index} out of range for {n} annotations")
        i = int(person_index) % n
        kp = np.asarray(record.keypoints, dtype=np.float64)
        k = self.num_channels
        if kp.shape[1:] != (k, 3):
            raise ValueError(f"record.keypoints: expected [N, {k}, 3], got {kp.shape}")
        box = np.asarray(record.boxes, dtype=np.float64)[i : i + 1]
        ch, cw = self.input_hw
        crowd = np.asarray(record.iscrowd, bool).reshape(-1)

        # Input: everyone's labelled keypoints, in the owner's grid.
        grid = self.to_grid(kp[None, :, :, :2].reshape(1, n * k, 2), box).reshape(n, k, 2)
        with np.errstate(invalid="ignore"):
            inside = (grid[..., 0] >= 0) & (grid[..., 0] <= cw - 1) & (grid[..., 1] >= 0) & (grid[..., 1] <= ch - 1)
            valid = (kp[..., 2] > 0) & np.isfinite(grid).all(-1) & inside & ~crowd[:, None]
        net_input = self._render(grid, valid, self.input_sigma) if render_input else None

        # Target: the owner's keypoints only.
        own = grid[i]
        with np.errstate(invalid="ignore"):
            labelled = (kp[i, :, 2] > 0) & np.isfinite(own).all(-1)
        own = np.where(labelled[:, None], own, 0.0)
        own = np.stack([np.clip(own[:, 0], 0, cw - 1), np.clip(own[:, 1], 0, ch - 1)], axis=-1)
        if self.target_sigma > 0:
            target = self._render(own[None], labelled[None], self.target_sigma)
            sums = target.sum(axis=(0, 1), keepdims=True)
            target = np.where(sums > 0, target / np.where(sums > 0, sums, 1), 0).astype(np.float32)
        else:
            target = np.zeros((ch, cw, k), np.float32)
            c = np.flatnonzero(labelled)
            target[np.rint(own[c, 1]).astype(int), np.rint(own[c, 0]).astype(int), c] = 1.0
        return net_input, target

    def training_pairs(self, record) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pairs for every non-crowd person with a labelled keypoint.

        Returns ``(inputs [M, ch, cw, K], targets [M, ch, cw, K], person_indices [M])``.
        """
        persons = _persons_with_keypoints(record)
        ch, cw = self.input_hw
        k = self.num_channels
        if persons.size == 0:
            empty = np.zeros((0, ch, cw, k), np.float32)
            return empty, empty.copy(), persons
        pairs = [self.training_pair(record, int(i)) for i in persons]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs]), persons

    def pair_persons(self, record) -> np.ndarray:
        """Indices of the persons that give a training pair: non-crowd, with a labelled keypoint."""
        return _persons_with_keypoints(record)

    def training_targets(self, record) -> tuple[np.ndarray, np.ndarray]:
        """The targets of :meth:`training_pairs` without rendering the inputs:
        ``(targets [M, ch, cw, K], person_indices [M])``."""
        persons = _persons_with_keypoints(record)
        if persons.size == 0:
            return np.zeros((0, *self.input_hw, self.num_channels), np.float32), persons
        return np.stack([self.training_pair(record, int(i), render_input=False)[1] for i in persons]), persons

    # ------------------------------------------------------------------ decoding
    def decode(self, prn_output: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """PRN output ``[N, ch, cw, K]`` and pixel boxes ``[N, 4]`` -> keypoints ``[N, K, 3]`` (x, y, score).

        Per channel the argmax cell (first in row-major order on ties), refined to sub-cell
        precision if ``refine``, mapped back through the enlarged box; the score is the
        output value at the argmax.
        """
        out = np.asarray(prn_output, dtype=np.float32)
        ch, cw = self.input_hw
        k = self.num_channels
        if out.ndim != 4 or out.shape[1:] != (ch, cw, k):
            raise ValueError(f"prn_output: expected [N, {ch}, {cw}, {k}], got {out.shape}")
        b = _check_boxes(boxes)
        if b.shape[0] != out.shape[0]:
            raise ValueError(f"boxes: {b.shape[0]} boxes for {out.shape[0]} PRN outputs")
        flat = out.reshape(out.shape[0], ch * cw, k)
        idx = flat.argmax(axis=1)  # [N, K]
        score = np.take_along_axis(flat, idx[:, None, :], axis=1)[:, 0, :]
        v, u = np.divmod(idx, cw)
        fu, fv = u.astype(np.float32), v.astype(np.float32)
        if self.refine and out.size:
            logs = np.log(np.maximum(out, np.float32(LOG_EPS)))
            n_i = np.arange(out.shape[0])[:, None]
            k_i = np.arange(k)[None, :]

            def at(dv, du, ok):
                return logs[n_i, np.where(ok, v + dv, v), np.where(ok, u + du, u), k_i]

            centre = logs[n_i, v, u, k_i]
            ok_l, ok_r, ok_u, ok_d = u > 0, u < cw - 1, v > 0, v < ch - 1
            fu = fu + parabola_vertex(at(0, -1, ok_l), centre, at(0, 1, ok_r), ok_l & ok_r)
            fv = fv + parabola_vertex(at(-1, 0, ok_u), centre, at(1, 0, ok_d), ok_u & ok_d)
        xy = self.from_grid(np.stack([fu, fv], axis=-1).astype(np.float64), b)
        return np.concatenate([xy, score[..., None].astype(np.float64)], axis=-1)

    def decode_tf(self, prn_output, boxes):
        """In-graph :meth:`decode`: ``[N, ch, cw, K]``, ``[N, 4]`` -> ``[N, K, 3]`` float32."""
        import tensorflow as tf

        out = tf.convert_to_tensor(prn_output, tf.float32)
        b = tf.cast(boxes, tf.float32)
        ch, cw = self.input_hw
        k = self.num_channels
        flat = tf.reshape(out, [-1, ch * cw, k])
        idx = tf.argmax(flat, axis=1, output_type=tf.int32)  # [N, K]
        score = tf.reduce_max(flat, axis=1)
        vi = tf.math.floordiv(idx, cw)
        ui = tf.math.floormod(idx, cw)
        v = tf.cast(vi, tf.float32)
        u = tf.cast(ui, tf.float32)
        if self.refine:
            flat_logs = tf.reshape(tf.math.log(tf.maximum(flat, LOG_EPS)), [-1])
            n = tf.shape(flat)[0]
            # Flat position of (n, cell, k) in the [N, ch*cw, K] tensor.
            pos = tf.range(n)[:, None] * (ch * cw * k) + idx * k + tf.range(k)[None, :]

            def at(offset, ok):
                return tf.gather(flat_logs, tf.where(ok, pos + offset * k, pos))

            centre = tf.gather(flat_logs, pos)
            ok_l, ok_r, ok_u, ok_d = ui > 0, ui < cw - 1, vi > 0, vi < ch - 1
            u += parabola_offset_tf(at(-1, ok_l), centre, at(1, ok_r), ok_l & ok_r)
            v += parabola_offset_tf(at(-cw, ok_u), centre, at(cw, ok_d), ok_u & ok_d)
        x1, y1, x2, y2 = tf.unstack(b, 4, axis=-1)
        cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
        grow = 1.0 + 2.0 * self.margin
        bw = tf.maximum(x2 - x1, self.min_box_size) * grow
        bh = tf.maximum(y2 - y1, self.min_box_size) * grow
        x = (cx - bw / 2)[:, None] + u / float(cw - 1) * bw[:, None]
        y = (cy - bh / 2)[:, None] + v / float(ch - 1) * bh[:, None]
        return tf.stack([x, y, score], axis=-1)

    def max_baseline(self, heatmaps: np.ndarray, boxes: np.ndarray, stride: int, image_index=None) -> np.ndarray:
        """The paper's untrained "Max" assignment: per box, the argmax of each cropped channel.

        Returns keypoints ``[N, K, 3]`` (x, y, heatmap value) in image pixels.
        """
        crops = self.crop(heatmaps, boxes, stride, image_index)
        return self.decode(crops, boxes)


# ---------------------------------------------------------------------- helpers


_GRAPH_CROP = None


def _graph_crop():
    """The crop op as one cached tf.function (eager dispatch of its ~40 ops costs ~10 ms)."""
    global _GRAPH_CROP
    if _GRAPH_CROP is None:
        import tensorflow as tf

        from kerapose.ops.crop import crop_and_resize_bilinear

        _GRAPH_CROP = tf.function(crop_and_resize_bilinear, reduce_retracing=True)
    return _GRAPH_CROP


def _is_tensor(x) -> bool:
    return type(x).__module__.startswith("tensorflow")


def _check_boxes(boxes) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64)
    if b.size == 0 and b.ndim <= 2:
        return b.reshape(0, 4)
    if b.ndim != 2 or b.shape[-1] != 4:
        raise ValueError(f"boxes: expected [N, 4] (x1, y1, x2, y2) pixels, got shape {b.shape}")
    if not np.isfinite(b).all():
        raise ValueError("boxes: NaN or infinite coordinates")
    return b


def _persons_with_keypoints(record) -> np.ndarray:
    labelled = (np.asarray(record.keypoints)[..., 2] > 0).any(-1)
    return np.flatnonzero(labelled & ~np.asarray(record.iscrowd, bool).reshape(-1))


def pose_scores(keypoints: np.ndarray) -> np.ndarray:
    """Pose score = mean keypoint score, ``[N, K, 3] -> [N]``."""
    kp = np.asarray(keypoints, dtype=np.float64)
    return kp[..., 2].mean(-1) if kp.shape[0] else np.zeros((0,))


def oracle_keypoints(codec: PRNCodec, heatmap_codec, record) -> tuple[np.ndarray, np.ndarray]:
    """The Max baseline on ground truth: GT heatmaps (``heatmap_codec``) cropped with GT boxes.

    One pose per non-crowd person with a labelled keypoint, in record order. It measures
    what assignment by per-box maxima loses when people overlap (the box of one person
    holds another's joints at the same heatmap height). Used by ``kerapose oracle --codec prn``.

    Returns ``(keypoints [M, K, 3], scores [M])``.
    """
    persons = _persons_with_keypoints(record)
    heat = heatmap_codec.encode(record.keypoints, (record.height, record.width))
    kp = codec.max_baseline(heat, np.asarray(record.boxes)[persons], heatmap_codec.stride)
    return kp, pose_scores(kp)


def ideal_keypoints(codec: PRNCodec, record) -> tuple[np.ndarray, np.ndarray]:
    """Decode of the encoded training targets: what a PRN that outputs its ideal target scores.

    Bounds the codec's own loss (crop-grid quantisation, clipping to the enlarged box).
    Returns ``(keypoints [M, K, 3], scores [M])`` for the persons of :meth:`PRNCodec.training_pairs`.
    """
    targets, persons = codec.training_targets(record)
    kp = codec.decode(targets, np.asarray(record.boxes)[persons])
    return kp, pose_scores(kp)
