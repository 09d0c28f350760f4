"""RetinaNet person-box codec: anchors, IoU target assignment, box deltas, decoding with NMS.

Defaults follow fizyr/keras-retinanet: pyramid levels P3..P7 (strides 8..128), anchor sizes
32..512, aspect ratios (h / w) 0.5, 1, 2 and scales 2^0, 2^(1/3), 2^(2/3): 9 anchors per
location. Anchors with IoU >= 0.5 to a person are positives, < 0.4 negatives, the rest
ignored. Box targets are fizyr's corner offsets: ``(gt_x1 - anchor_x1) / anchor_w / 0.2``,
likewise for y1, x2, y2.

Anchor order matches the head: level by level (P3 first), row-major over the level's
``ceil(H / stride) x ceil(W / stride)`` grid, then the 9 anchors of a location, ratio-major
and scale-minor. A head that reshapes ``[B, h, w, 9 * C] -> [B, h * w * 9, C]`` per level and
concatenates the levels lines up with :meth:`BoxCodec.anchors`.

Coordinates: boxes are in the same pixel frame as keypoints (:mod:`kerapose.codecs.grid`).
The anchors of output cell ``(i, j)`` at stride ``s`` are centred on
``grid.cell_to_pixel(j, s), grid.cell_to_pixel(i, s)`` = ``s*j + (s-1)/2``, the centre of the
pixels the cell covers; this is fizyr's ``(j + 0.5) * s`` moved to kerapose's pixel frame
(the half-pixel shift is immaterial at anchor sizes >= 32). Boxes are clipped to
``[0, W] x [0, H]`` (COCO's box range).
"""

from __future__ import annotations


import numpy as np

from kerapose import float_math
from kerapose.codecs.grid import cell_to_pixel, check_image_hw, output_size

__all__ = ["BoxCodec", "box_iou", "nms", "oracle_boxes"]

_CLS_POSITIVE, _CLS_NEGATIVE, _CLS_IGNORE = 1.0, 0.0, -1.0


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU ``[N, M]`` of boxes ``[N, 4]`` and ``[M, 4]`` (x1, y1, x2, y2); 0 where a box is empty."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    area_a = np.maximum(a[:, 2] - a[:, 0], 0) * np.maximum(a[:, 3] - a[:, 1], 0)
    area_b = np.maximum(b[:, 2] - b[:, 0], 0) * np.maximum(b[:, 3] - b[:, 1], 0)
    # In-place on [N, M] temporaries: this is the hot loop of target encoding.
    iw = np.minimum(a[:, None, 2], b[None, :, 2])
    iw -= np.maximum(a[:, None, 0], b[None, :, 0])
    np.maximum(iw, 0, out=iw)
    ih = np.minimum(a[:, None, 3], b[None, :, 3])
    ih -= np.maximum(a[:, None, 1], b[None, :, 1])
    np.maximum(ih, 0, out=ih)
    inter = np.multiply(iw, ih, out=iw)
    union = np.add(area_a[:, None], area_b[None, :], out=ih)
    union -= inter
    valid = (area_a[:, None] > 0) & (area_b[None, :] > 0)
    np.divide(inter, union, out=inter, where=valid)
    inter[~valid] = 0.0
    return inter


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float = 0.5, max_output: int | None = None) -> np.ndarray:
    """Greedy NMS with ``tf.image.non_max_suppression``'s rules: indices by descending score;
    a box is dropped when its IoU with a kept box is strictly above ``iou_threshold``."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    limit = len(order) if max_output is None else max_output
    keep: list[int] = []
    alive = np.ones(len(order), bool)
    for pos, i in enumerate(order):
        if len(keep) >= limit:
            break
        if not alive[pos]:
            continue
        keep.append(int(i))
        rest = order[pos + 1 :]
        alive[pos + 1 :] &= box_iou(boxes[i : i + 1], boxes[rest])[0] <= iou_threshold
    return np.asarray(keep, dtype=np.int64)


def _valid_boxes(boxes, image_hw: tuple[int, int], name: str) -> np.ndarray:
    """Clip to the image, drop NaN / inf / empty boxes."""
    if boxes is None:
        return np.zeros((0, 4), np.float64)
    b = np.asarray(boxes, dtype=np.float64)
    if b.size == 0:
        return np.zeros((0, 4), np.float64)
    if b.ndim != 2 or b.shape[-1] != 4:
        raise ValueError(f"{name}: expected [N, 4] (x1, y1, x2, y2), got shape {b.shape}")
    b = b[np.isfinite(b).all(axis=1)]
    h, w = image_hw
    b = np.stack([np.clip(b[:, 0], 0, w), np.clip(b[:, 1], 0, h), np.clip(b[:, 2], 0, w), np.clip(b[:, 3], 0, h)], 1)
    return b[(b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])]


class BoxCodec:
    """Anchors, training targets and decoding of the RetinaNet person subnet.

    Args:
        strides: pyramid strides, one per level (P3..P7).
        sizes: base anchor side per level.
        ratios: anchor aspect ratios, height / width.
        scales: anchor scales per location.
        positive_iou: IoU at or above which an anchor is positive.
        negative_iou: IoU below which an anchor is negative (between the two: ignored).
        box_mean, box_std: normalisation of the corner-offset targets (fizyr: 0 and 0.2).
        allow_low_quality_matches: also make each person's best anchor(s) positive when their
            IoU is below ``positive_iou``, so every person gets at least one positive anchor.
        ignore_outside: ignore anchors whose centre lies outside the image (fizyr), which
            happens on the padded border of the ``ceil`` grids.
    """

    def __init__(
        self,
        strides: tuple[int, ...] = (8, 16, 32, 64, 128),
        sizes: tuple[float, ...] = (32, 64, 128, 256, 512),
        ratios: tuple[float, ...] = (0.5, 1.0, 2.0),
        scales: tuple[float, ...] = (2.0**0, 2.0 ** (1.0 / 3.0), 2.0 ** (2.0 / 3.0)),
        positive_iou: float = 0.5,
        negative_iou: float = 0.4,
        box_mean: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0),
        box_std: tuple[float, ...] = (0.2, 0.2, 0.2, 0.2),
        allow_low_quality_matches: bool = True,
        ignore_outside: bool = True,
    ) -> None:
        if len(strides) != len(sizes) or not strides:
            raise ValueError(f"strides and sizes need one entry per level, got {len(strides)} and {len(sizes)}")
        if any(int(s) != s or s <= 0 for s in strides):
            raise ValueError(f"strides: expected positive integers, got {strides}")
        if not ratios or not scales or any(r <= 0 for r in ratios) or any(s <= 0 for s in scales):
            raise ValueError(f"ratios and scales must be non-empty and positive, got {ratios}, {scales}")
        if not 0.0 <= negative_iou <= positive_iou <= 1.0:
            raise ValueError(
                f"expected 0 <= negative_iou <= positive_iou <= 1, got {negative_iou} and {positive_iou}"
            )
        if len(box_mean) != 4 or len(box_std) != 4 or any(s <= 0 for s in box_std):
            raise ValueError(f"box_mean / box_std: expected 4 values (std > 0), got {box_mean}, {box_std}")
        self.strides = tuple(int(s) for s in strides)
        self.sizes = tuple(float(s) for s in sizes)
        self.ratios = tuple(float(r) for r in ratios)
        self.scales = tuple(float(s) for s in scales)
        self.positive_iou = float(positive_iou)
        self.negative_iou = float(negative_iou)
        self.box_mean = np.asarray(box_mean, np.float64)
        self.box_std = np.asarray(box_std, np.float64)
        self.allow_low_quality_matches = bool(allow_low_quality_matches)
        self.ignore_outside = bool(ignore_outside)
        self._cache: dict[tuple[int, int], np.ndarray] = {}

    # -------------------------------------------------------------------- config

    def get_config(self) -> dict:
        return {
            "strides": list(self.strides),
            "sizes": list(self.sizes),
            "ratios": list(self.ratios),
            "scales": list(self.scales),
            "positive_iou": self.positive_iou,
            "negative_iou": self.negative_iou,
            "box_mean": self.box_mean.tolist(),
            "box_std": self.box_std.tolist(),
            "allow_low_quality_matches": self.allow_low_quality_matches,
            "ignore_outside": self.ignore_outside,
        }

    @classmethod
    def from_config(cls, config: dict) -> "BoxCodec":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})

    # -------------------------------------------------------------------- anchors

    @property
    def anchors_per_location(self) -> int:
        return len(self.ratios) * len(self.scales)

    def level_shapes(self, image_hw: tuple[int, int]) -> list[tuple[int, int]]:
        """Grid size ``ceil(H / s), ceil(W / s)`` of each level."""
        hw = check_image_hw(image_hw)
        return [output_size(hw, s) for s in self.strides]

    def num_anchors(self, image_hw: tuple[int, int]) -> int:
        return sum(h * w for h, w in self.level_shapes(image_hw)) * self.anchors_per_location

    def _base_anchors(self, size: float) -> np.ndarray:
        """[R*S, 4] anchors centred on 0, ratio-major then scale-minor; ratio = h / w."""
        ratios = np.repeat(self.ratios, len(self.scales))
        scales = np.tile(self.scales, len(self.ratios))
        area = (size * scales) ** 2
        w = np.sqrt(area / ratios)
        h = w * ratios
        return np.stack([-w / 2, -h / 2, w / 2, h / 2], axis=1)

    def anchors(self, image_hw: tuple[int, int]) -> np.ndarray:
        """All anchors ``[A, 4]`` (x1, y1, x2, y2) float32 for an input of ``image_hw``, in head order."""
        hw = check_image_hw(image_hw)
        if hw not in self._cache:
            levels = []
            for stride, size, (gh, gw) in zip(self.strides, self.sizes, self.level_shapes(hw)):
                cx = cell_to_pixel(np.arange(gw), stride)
                cy = cell_to_pixel(np.arange(gh), stride)
                cx, cy = np.meshgrid(cx, cy)  # [gh, gw], row-major over (y, x)
                centres = np.stack([cx, cy, cx, cy], axis=-1).reshape(-1, 1, 4)
                levels.append((centres + self._base_anchors(size)[None]).reshape(-1, 4))
            anchors = np.concatenate(levels, axis=0).astype(np.float32)
            anchors.setflags(write=False)
            self._cache[hw] = anchors
        return self._cache[hw]

    # -------------------------------------------------------------------- encode

    def match(
        self, boxes: np.ndarray | None, image_hw: tuple[int, int], ignore_boxes: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Assign anchors to boxes.

        Returns ``(labels [A], matched [A], valid_boxes [N', 4])``: labels 1 / 0 / -1
        (positive / negative / ignored), the index into ``valid_boxes`` of each positive
        anchor's box (-1 elsewhere), and the boxes left after clipping to the image and
        dropping NaN and empty ones.
        """
        hw = check_image_hw(image_hw)
        anchors = self.anchors(hw).astype(np.float64)
        gt = _valid_boxes(boxes, hw, "boxes")
        crowd = _valid_boxes(ignore_boxes, hw, "ignore_boxes")
        n_anchors = len(anchors)
        labels = np.full(n_anchors, _CLS_NEGATIVE, np.float32)
        matched = np.full(n_anchors, -1, np.int64)
        if len(gt):
            iou = box_iou(anchors, gt)  # [A, N]
            best_gt = iou.argmax(axis=1)
            best_iou = iou[np.arange(n_anchors), best_gt]
            positive = best_iou >= self.positive_iou
            labels[(best_iou >= self.negative_iou) & ~positive] = _CLS_IGNORE
            matched[positive] = best_gt[positive]
            if self.allow_low_quality_matches:
                # Each box's best anchors (ties included) become positive for the box they
                # serve best, so small or oddly shaped people still get a positive anchor.
                per_gt_best = iou.max(axis=0)
                is_best = (iou == per_gt_best[None, :]) & (per_gt_best[None, :] > 0)
                rows = is_best.any(axis=1) & ~positive
                if rows.any():
                    matched[rows] = np.where(is_best[rows], iou[rows], -1.0).argmax(axis=1)
                    positive = positive | rows
            labels[positive] = _CLS_POSITIVE
        not_positive = labels != _CLS_POSITIVE
        cx = (anchors[:, 0] + anchors[:, 2]) / 2
        cy = (anchors[:, 1] + anchors[:, 3]) / 2
        if len(crowd):
            inside = (
                (cx[:, None] >= crowd[None, :, 0])
                & (cx[:, None] <= crowd[None, :, 2])
                & (cy[:, None] >= crowd[None, :, 1])
                & (cy[:, None] <= crowd[None, :, 3])
            ).any(axis=1)
            labels[inside & not_positive] = _CLS_IGNORE
        if self.ignore_outside:
            h, w = hw
            labels[((cx >= w) | (cy >= h)) & not_positive] = _CLS_IGNORE
        return labels, matched, gt

    def encode_deltas(self, boxes: np.ndarray, anchors: np.ndarray) -> np.ndarray:
        """Corner-offset targets ``[N, 4]`` of ``boxes`` relative to same-length ``anchors``."""
        b = np.asarray(boxes, np.float64)
        a = np.asarray(anchors, np.float64)
        wh = np.concatenate([a[:, 2:] - a[:, :2]] * 2, axis=1)
        return ((b - a) / wh - self.box_mean) / self.box_std

    def decode_deltas(self, deltas: np.ndarray, anchors: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`encode_deltas`."""
        d = np.asarray(deltas, np.float64)
        a = np.asarray(anchors, np.float64)
        wh = np.concatenate([a[:, 2:] - a[:, :2]] * 2, axis=1)
        return a + (d * self.box_std + self.box_mean) * wh

    def encode(
        self, boxes: np.ndarray | None, image_hw: tuple[int, int], ignore_boxes: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Training targets for one image.

        Args:
            boxes: ``[N, 4]`` person boxes (x1, y1, x2, y2) in input pixels; clipped to the
                image; NaN, infinite and empty boxes are dropped.
            image_hw: network input size.
            ignore_boxes: ``[M, 4]`` crowd boxes; anchors (not positive) whose centre lies in
                one are ignored.

        Returns:
            ``cls_target [A, 1]`` float32 (1 positive, 0 negative, -1 ignore) and
            ``box_target [A, 4]`` float32 (zero except at positives).
        """
        hw = check_image_hw(image_hw)
        labels, matched, gt = self.match(boxes, hw, ignore_boxes)
        box_target = np.zeros((len(labels), 4), np.float32)
        pos = matched >= 0
        if pos.any():
            box_target[pos] = self.encode_deltas(gt[matched[pos]], self.anchors(hw)[pos])
        return labels[:, None], box_target

    # -------------------------------------------------------------------- decode

    def _check_outputs(self, cls, deltas, image_hw, batched: bool):
        n = self.num_anchors(image_hw)
        lead = "[B, A, 1]" if batched else "[A, 1]"
        cls_shape, box_shape = tuple(cls.shape), tuple(deltas.shape)
        want = 3 if batched else 2
        if len(cls_shape) not in (want - 1, want) or cls_shape[want - 2] not in (n, None):
            raise ValueError(f"cls_logits: expected {lead} with A = {n} anchors for input {image_hw}, got {cls_shape}")
        if len(cls_shape) == want and cls_shape[-1] != 1:
            raise ValueError(f"cls_logits: expected one class channel, got {cls_shape}")
        if len(box_shape) != want or box_shape[-1] != 4 or box_shape[want - 2] not in (n, None):
            raise ValueError(
                f"box_deltas: expected {lead[:-2]}4] with A = {n} anchors for input {image_hw}, got {box_shape}"
            )

    def decode(
        self,
        cls_logits: np.ndarray,
        box_deltas: np.ndarray,
        image_hw: tuple[int, int],
        score_threshold: float = 0.05,
        iou_threshold: float = 0.5,
        max_detections: int = 100,
        *,
        from_logits: bool = True,
        pre_nms_top_k: int | None = 1000,
    ) -> tuple[np.ndarray, np.ndarray]:
        """One image's network outputs -> ``(boxes [n, 4], scores [n])`` float32, best first.

        Scores are ``sigmoid(cls_logits)`` (or ``cls_logits`` itself with
        ``from_logits=False``). Anchors scoring above ``score_threshold`` (at most
        ``pre_nms_top_k`` of them) are decoded, clipped to the image and reduced by NMS.
        """
        hw = check_image_hw(image_hw)
        cls = np.asarray(cls_logits, np.float64)
        deltas = np.asarray(box_deltas, np.float64)
        self._check_outputs(cls, deltas, hw, batched=False)
        cls = cls.reshape(-1)
        with np.errstate(over="ignore"):
            scores = 1.0 / (1.0 + np.exp(-cls)) if from_logits else cls
        cand = np.flatnonzero(scores > score_threshold)
        if pre_nms_top_k is not None and len(cand) > pre_nms_top_k:
            cand = cand[np.argsort(-scores[cand], kind="stable")[:pre_nms_top_k]]
        boxes = self.decode_deltas(deltas[cand], self.anchors(hw)[cand])
        h, w = hw
        boxes = np.clip(boxes, 0, [w, h, w, h])
        finite = np.isfinite(boxes).all(axis=1)
        boxes, sc = boxes[finite], scores[cand][finite]
        keep = nms(boxes, sc, iou_threshold, max_detections)
        return boxes[keep].astype(np.float32), sc[keep].astype(np.float32)

    def decode_tf(
        self,
        cls_logits,
        box_deltas,
        image_hw: tuple[int, int],
        max_detections: int = 100,
        score_threshold: float = 0.05,
        iou_threshold: float = 0.5,
        *,
        from_logits: bool = True,
        pre_nms_top_k: int = 1000,
    ):
        """In-graph batched decoding (TFLite builtins only).

        Args:
            cls_logits: ``[B, A, 1]`` tensor; box_deltas: ``[B, A, 4]``.
            image_hw: the static network input size.

        Returns:
            ``boxes [B, M, 4]`` float32, ``scores [B, M]`` and ``num [B]`` int32 with
            ``M = max_detections``; rows past ``num`` are zero.

        The top ``pre_nms_top_k`` anchors per image go through greedy NMS
        (:func:`_batched_nms`: TFLite's builtin NonMaxSuppressionV4 per image, unlike
        ``combined_non_max_suppression``).
        """
        import tensorflow as tf

        hw = check_image_hw(image_hw)
        self._check_outputs(cls_logits, box_deltas, hw, batched=True)
        anchors = tf.constant(self.anchors(hw), tf.float32)
        cls = tf.cast(cls_logits, tf.float32)
        cls = cls[..., 0] if cls.shape.rank == 3 else cls  # [B, A, 1] or [B, A]
        scores = float_math.sigmoid(cls) if from_logits else cls  # float32 in int8 exports
        k = min(int(pre_nms_top_k), int(anchors.shape[0]))
        top_scores, top_idx = tf.math.top_k(scores, k=k, sorted=True)  # [B, k]
        deltas = tf.gather(tf.cast(box_deltas, tf.float32), top_idx, batch_dims=1)  # [B, k, 4]
        anc = tf.gather(anchors, top_idx)  # [B, k, 4]
        wh = tf.concat([anc[..., 2:] - anc[..., :2]] * 2, axis=-1)
        std = tf.constant(self.box_std, tf.float32)
        mean = tf.constant(self.box_mean, tf.float32)
        boxes = anc + (deltas * std + mean) * wh
        h, w = hw
        boxes = tf.clip_by_value(boxes, 0.0, tf.constant([w, h, w, h], tf.float32))
        # NMS sees ranks, not scores: top_k's order (ties by anchor index, as the numpy decoding)
        # whatever order a kernel gives equal scores; scores <= score_threshold get rank -1
        ranks = tf.cast(k - tf.range(k), tf.float32)[None, :]
        ranks = tf.where(top_scores > float(score_threshold), ranks, -1.0)
        idx, num = _batched_nms(boxes, ranks, int(max_detections), float(iou_threshold))
        valid = tf.range(int(max_detections))[None, :] < num[:, None]
        out_boxes = tf.where(valid[..., None], tf.gather(boxes, idx, batch_dims=1), 0.0)
        out_scores = tf.where(valid, tf.gather(top_scores, idx, batch_dims=1), 0.0)
        return out_boxes, out_scores, tf.cast(num, tf.int32)


def _batched_nms(boxes, ranks, max_output_size: int, iou_threshold: float):
    """Greedy NMS per image of a batch over distinct ``ranks`` (higher first; <= 0 are dropped):
    ``(indices [B, M] padded with 0, num [B])``.

    One NonMaxSuppressionV4 per image (a TFLite builtin kernel) in a ``map_fn`` loop, not the
    batched ``tf.image.non_max_suppression_padded``: that one is a tiled IoU loop in graph ops,
    which took 8.5 ms of a 22.5 ms end-to-end TFLite run of the quickstart MultiPoseNet (1,000
    boxes, 2 threads; this takes 0.07 ms). Same rule: suppress at IoU > threshold. Box coordinates
    may be (x1, y1, x2, y2): the IoU is the same as for (y1, x1, y2, x2)."""
    import tensorflow as tf

    def one(args):
        b, s = args
        # tf.image.non_max_suppression_padded would be the tiled loop again, whatever the rank
        idx, num = tf.raw_ops.NonMaxSuppressionV4(boxes=b, scores=s, max_output_size=max_output_size,
                                                  iou_threshold=iou_threshold, score_threshold=0.0,
                                                  pad_to_max_output_size=True)
        return idx, num

    idx, num = tf.map_fn(one, (boxes, ranks), fn_output_signature=(tf.TensorSpec([max_output_size], tf.int32),
                                                                     tf.TensorSpec([], tf.int32)))
    return idx, num


def oracle_boxes(codec: BoxCodec, record, image_hw: tuple[int, int] | None = None, **decode_kwargs):
    """Ideal network outputs for one :class:`~kerapose.data.coco.ImageRecord`, decoded.

    Encodes the non-crowd boxes (crowd boxes as ignore regions) at ``image_hw`` (default
    the record's own size), turns the targets into the outputs a perfect network would give
    (logit +10 at positives, -10 elsewhere; deltas = box targets) and decodes them. A round
    trip through both halves of the codec: what it loses (people without a positive anchor,
    neighbours merged by NMS) bounds any model's box AP.
    """
    hw = (record.height, record.width) if image_hw is None else check_image_hw(image_hw)
    crowd = np.asarray(record.iscrowd, bool)
    cls_t, box_t = codec.encode(record.boxes[~crowd], hw, ignore_boxes=record.boxes[crowd])
    logits = np.where(cls_t > 0, 10.0, -10.0)
    return codec.decode(logits, box_t, hw, **decode_kwargs)
