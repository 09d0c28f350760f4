"""OpenPose's greedy PAF grouping inside the TF graph, with fixed-size tensors.

:func:`paf_group_tf` turns heatmaps and part affinity fields into people with TensorFlow ops
that convert to TFLite builtins (and to ONNX with tf2onnx), so an exported PAF model returns
poses. It computes what :func:`kerapose.codecs.grouping.group_people` computes on the peaks of
:meth:`HeatmapCodec.decode_peaks` (same thresholds, same limb order), with every quantity held
in a tensor of fixed size: ``k = max_peaks`` peak slots per part, ``M = max_people`` people.

1. Peaks: :meth:`HeatmapCodec.decode_peaks_tf` top-``k`` per part; a slot is a candidate when
   its score exceeds ``peak_threshold``.
2. Limb candidates: all pairs of every limb are scored at once (``[B, L, k, k]``):
   ``num_samples`` bilinear PAF reads per pair (row gathers), OpenPose's acceptance rule.
   Candidates fill the first slots, so only the first ``u`` slots (``u`` = the most
   candidates any part has in the batch, a runtime value) are scored and the ``u x u``
   scores are padded back to ``k x k``.
3. Greedy one-to-one matching, best score first, for all limbs and images at once: each step
   of a ``tf.while_loop`` (at most ``k`` steps, it stops when nothing is left) takes the
   maximum of every remaining score matrix and removes its row and column. This equals the
   sorted-list greedy of ``group_people``.
4. People as connected components of the peak graph (node = (part, slot)). Tree limbs are
   visited in the breadth-first order of :func:`limb_order`; each one reaches one new part, so
   a child node inherits its matched parent's label (else it keeps its own) in one pass down
   the tree. This is exactly ``group_people`` on tree limbs: a child part's candidates belong
   to nobody before its tree limb, so a match either extends the parent's person or starts
   one. Redundant limbs then merge two components when their part sets are disjoint and not
   both single peaks (``group_people``'s "add a part" and "merge" cases). Within one limb the
   merges touch disjoint pairs of people, so they are applied together.
5. A person's score is (sum of peak scores + scores of the limbs that built it) / parts, as in
   OpenPose; people with fewer than ``min_parts`` parts or a score below ``min_person_score``
   are dropped, the best ``M`` kept (``top_k``) and the rest padded with zeros.

TFLite ops of the converted graph (TFLITE_BUILTINS only, no Flex): MAX_POOL_2D, TOPK_V2,
GATHER, ONE_HOT, ARG_MAX (inside the WHILE body), BATCH_MATMUL, PAD, PACK/UNPACK, RESHAPE,
STRIDED_SLICE, TRANSPOSE and element-wise maths. tf2onnx (opset 17) converts it too.
Two TFLite pitfalls are avoided on purpose: ``None``/``...`` indexing on tensors with a
runtime-sized axis (strided slices TFLite cannot legalise; ``tf.expand_dims`` instead), and an
ADD on a RESHAPE output whose input is still needed (with batch > 1 the input came out
shifted by the added offset, as if the ADD ran in place on the shared buffer; right with
``experimental_preserve_all_tensors``).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from kerapose.codecs.grouping import limb_order
from kerapose.codecs.heatmap import HeatmapCodec
from kerapose.skeleton import KeypointSet, get_keypoint_set

__all__ = ["paf_group_tf", "PafGrouping"]


def _image_height(image_hw, batch, grid_h, stride: int):
    """Image height(s) ``[B]`` float32 for the distance prior, from None, (H, W), [2] or [B, 2]."""
    if image_hw is None:
        return tf.fill([batch], tf.cast(grid_h * stride, tf.float32))
    if not tf.is_tensor(image_hw) and not isinstance(image_hw, keras.KerasTensor):
        try:
            arr = np.asarray(image_hw, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"image_hw: expected (height, width) or [B, 2], got {image_hw!r}") from None
        if arr.ndim not in (1, 2) or arr.shape[-1] != 2 or not np.all(arr > 0):
            raise ValueError(f"image_hw: expected positive (height, width) or [B, 2], got {image_hw!r}")
        if arr.ndim == 1:
            return tf.fill([batch], tf.constant(float(arr[0]), tf.float32))
        image_hw = arr.astype(np.float32)
    hw = tf.cast(image_hw, tf.float32)
    if hw.shape.rank == 1 and hw.shape[0] in (2, None):
        return tf.fill([batch], hw[0])
    if hw.shape.rank == 2 and hw.shape[1] in (2, None):
        return hw[:, 0]
    raise ValueError(f"image_hw: expected shape [2] or [B, 2], got {hw.shape}")


def _check_settings(ks: KeypointSet, max_peaks, max_people, peak_threshold, num_samples,
                    min_sample_fraction) -> None:
    if int(max_peaks) != max_peaks or max_peaks < 1:
        raise ValueError(f"max_peaks: expected a positive integer, got {max_peaks!r}")
    if int(max_people) != max_people or max_people < 1:
        raise ValueError(f"max_people: expected a positive integer, got {max_people!r}")
    if max_people > ks.num_keypoints * max_peaks:
        raise ValueError(
            f"max_people: expected at most num_keypoints * max_peaks = "
            f"{ks.num_keypoints * max_peaks}, got {max_people}"
        )
    if not peak_threshold >= 0:
        # decode_peaks_tf gives non-peak cells score 0: a negative threshold would keep them.
        raise ValueError(f"peak_threshold: expected >= 0, got {peak_threshold!r}")
    if int(num_samples) != num_samples or num_samples < 2:
        raise ValueError(f"num_samples: expected an integer >= 2, got {num_samples!r}")
    if not 0 <= min_sample_fraction <= 1:
        raise ValueError(f"min_sample_fraction: expected a value in [0, 1], got {min_sample_fraction!r}")
    if ks.num_limbs == 0:
        raise ValueError(f"keypoint set {ks.name!r} has no limbs: nothing to group with")


def _limb_scores(xy, valid, pafs, limbs: np.ndarray, stride: int, height, num_samples: int,
                 paf_threshold: float, min_sample_fraction: float, distance_ratio: float):
    """Scores ``[B, L, k, k]`` of all candidate pairs of all limbs; 0 where not accepted."""
    shape = tf.shape(pafs)
    b, h, w = shape[0], shape[1], shape[2]
    n_limbs = len(limbs)
    # Explicit expand_dims / unstack instead of None/... indexing: with the dynamic slot count
    # those become strided slices that TFLite cannot legalise.
    px, py = tf.unstack(xy, axis=-1)  # [B, K, k] pixels

    def ends(v):  # [B, K, k] -> from-end [B, L, k, 1], to-end [B, L, 1, k]
        return (tf.expand_dims(tf.gather(v, limbs[:, 0], axis=1), 3),
                tf.expand_dims(tf.gather(v, limbs[:, 1], axis=1), 2))

    (ax, bx), (ay, by) = ends(px), ends(py)
    dx, dy = bx - ax, by - ay  # [B, L, k, k]
    length = tf.sqrt(dx * dx + dy * dy)
    inv = 1.0 / tf.maximum(length, 1e-3)  # 1e-3: a float16 export keeps it (1e-9 becomes 0)
    unit = tf.expand_dims(tf.stack([dx * inv, dy * inv], axis=-1), 4)  # [B, L, k, k, 1, 2]
    s = float(stride)
    t = tf.constant(np.linspace(0.0, 1.0, num_samples), tf.float32)  # ends included
    # pixel -> cell (kerapose.codecs.grid), then the samples: [B, L, k, k, S] cells.
    cx = tf.expand_dims((ax - (s - 1.0) / 2.0) / s, 4) + tf.expand_dims(dx / s, 4) * t
    cy = tf.expand_dims((ay - (s - 1.0) / 2.0) / s, 4) + tf.expand_dims(dy / s, 4) * t

    # Bilinear read clamped at the border, as grouping._sample_bilinear: the 2x2 patch
    # starts at most at w-2 / h-2 (x1 = x0 on a one-cell-wide grid).
    wf, hf = tf.cast(w, tf.float32), tf.cast(h, tf.float32)
    cx = tf.clip_by_value(cx, 0.0, wf - 1.0)
    cy = tf.clip_by_value(cy, 0.0, hf - 1.0)
    x0 = tf.minimum(tf.cast(cx, tf.int32), tf.maximum(w - 2, 0))
    y0 = tf.minimum(tf.cast(cy, tf.int32), tf.maximum(h - 2, 0))
    fx = tf.expand_dims(cx - tf.cast(x0, tf.float32), -1)
    fy = tf.expand_dims(cy - tf.cast(y0, tf.float32), -1)
    x1 = tf.minimum(x0 + 1, w - 1)
    y1 = tf.minimum(y0 + 1, h - 1)
    # Rows of [B*h*w*L, 2]: one gather reads both components of a limb's vector.
    field = tf.reshape(pafs, [-1, 2])
    bi = tf.reshape(tf.range(b), [-1, 1, 1, 1, 1])
    li = tf.reshape(tf.range(n_limbs), [1, -1, 1, 1, 1])

    def read(yy, xx):
        return tf.gather(field, ((bi * h + yy) * w + xx) * n_limbs + li)  # [B, L, k, k, S, 2]

    v00, v01, v10, v11 = read(y0, x0), read(y0, x1), read(y1, x0), read(y1, x1)
    top = v00 + fx * (v01 - v00)
    vec = top + fy * (v10 + fx * (v11 - v10) - top)
    dot = tf.reduce_sum(vec * unit, axis=-1)  # [B, L, k, k, S]
    # A NaN/inf network output supports nothing (NaN fails every comparison).
    dot = tf.where(tf.abs(dot) <= np.float32(np.finfo(np.float32).max), dot, tf.zeros_like(dot))

    need = int(np.ceil(min_sample_fraction * num_samples - 1e-9))
    hits = tf.reduce_sum(tf.cast(dot > paf_threshold, tf.float32), axis=-1)
    prior = tf.minimum(distance_ratio * tf.reshape(height, [-1, 1, 1, 1]) * inv - 1.0, 0.0)
    score = tf.reduce_mean(dot, axis=-1) + prior
    va, vb = ends(tf.cast(valid, tf.float32))
    accept = (va * vb > 0.0) & (length > 0.0) & (hits >= float(need)) & (score > 0.0)
    return tf.where(accept, score, tf.zeros_like(score))


def _greedy_match(scores, k: int):
    """One-to-one greedy matching, best first, of every ``[k, k]`` matrix of ``scores``.

    Accepted scores are > 0 and rejected ones 0. Returns 0/1 float ``[B, L, k, k]``.
    """
    shape = tf.shape(scores)

    def cond(i, remaining, matched):
        return tf.reduce_any(remaining > 0.0)

    def body(i, remaining, matched):
        flat = tf.reshape(remaining, [shape[0], shape[1], k * k])
        best = tf.argmax(flat, axis=-1, output_type=tf.int32)  # [B, L]
        found = tf.cast(tf.reduce_max(flat, axis=-1) > 0.0, tf.float32)
        pick = tf.reshape(tf.one_hot(best, k * k, dtype=tf.float32), shape) * found[:, :, None, None]
        pick = tf.ensure_shape(pick, scores.shape)  # keep the static shape across iterations
        row = 1.0 - tf.reduce_max(pick, axis=-1)  # [B, L, k]: rows still free
        col = 1.0 - tf.reduce_max(pick, axis=-2)
        remaining = remaining * row[..., :, None] * col[..., None, :]
        return i + 1, remaining, matched + pick

    _, _, matched = tf.while_loop(
        cond, body, (tf.constant(0), scores, tf.zeros_like(scores)), maximum_iterations=k
    )
    return matched


def _presence(labels, valid_f, n: int):
    """``[B, N, K]``: 1 where label ``n`` holds a candidate of part ``K``."""
    oh = tf.one_hot(labels, n, dtype=tf.float32) * valid_f[..., None]  # [B, K, k, N]
    return tf.transpose(tf.reduce_max(oh, axis=2), [0, 2, 1])


def paf_group_tf(
    heatmaps,
    pafs,
    keypoint_set: str | KeypointSet = "coco17",
    stride: int = 8,
    image_hw=None,
    *,
    max_peaks: int = 20,
    max_people: int = 20,
    peak_threshold: float = 0.1,
    refine: bool = True,
    num_samples: int = 10,
    paf_threshold: float = 0.05,
    min_sample_fraction: float = 0.8,
    distance_ratio: float = 0.5,
    min_parts: int = 4,
    min_person_score: float = 0.4,
    root: int | str | None = None,
    order: tuple[list[int], list[int]] | None = None,
):
    """Heatmaps + PAFs -> people, in the graph (see the module docstring).

    Args:
        heatmaps: ``[B, h, w, K]`` or ``[B, h, w, K + 1]`` (a background channel, ignored).
        pafs: ``[B, h, w, 2L]`` on the same grid; limb ``i`` in channels ``2i`` (x), ``2i + 1`` (y).
        keypoint_set: the keypoint set (K, limbs and the tree order).
        stride: output stride in pixels of the network input.
        image_hw: image size for the distance prior (only H is used): ``None`` (``h * stride``),
            a static ``(H, W)``, or a tensor ``[2]`` or ``[B, 2]``.
        max_peaks: ``k``, peak slots per part (``HeatmapCodec.max_peaks`` of the numpy path).
        max_people: ``M``, the padded number of people returned.
        peak_threshold, refine: peak decoding (:class:`HeatmapCodec`); threshold >= 0.
        num_samples, paf_threshold, min_sample_fraction, distance_ratio, min_parts,
        min_person_score, root, order: as :func:`kerapose.codecs.grouping.group_people`.

    Returns:
        ``keypoints [B, M, K, 3]`` (x, y, peak score) in pixels of the network input (missing
        parts 0, 0, 0), ``scores [B, M]`` best first, ``num_poses [B]`` int32; rows past
        ``num_poses`` are zeros.
    """
    ks = get_keypoint_set(keypoint_set)
    _check_settings(ks, max_peaks, max_people, peak_threshold, num_samples, min_sample_fraction)
    if int(stride) != stride or stride < 1:
        raise ValueError(f"stride: expected a positive integer, got {stride!r}")
    n_k, n_l, k, m = ks.num_keypoints, ks.num_limbs, int(max_peaks), int(max_people)
    tree, redundant = (list(map(int, o)) for o in (order if order is not None else limb_order(ks, root)))
    if sorted(tree + redundant) != list(range(n_l)):
        raise ValueError(f"order: tree + redundant must list each of the {n_l} limbs once")

    hm = tf.cast(heatmaps, tf.float32)  # cast, not convert: float16 outputs are welcome
    pf = tf.cast(pafs, tf.float32)
    allowed = sorted({n_k, ks.num_heatmap_channels})
    if hm.shape.rank != 4 or hm.shape[-1] not in allowed:
        raise ValueError(
            f"heatmaps: expected shape [B, h, w, K] with K in {allowed} for keypoint set {ks.name!r}, "
            f"got {hm.shape}"
        )
    if pf.shape.rank != 4 or pf.shape[-1] != 2 * n_l:
        raise ValueError(f"pafs: expected shape [B, h, w, {2 * n_l}] for keypoint set {ks.name!r}, got {pf.shape}")
    for axis, name in ((1, "h"), (2, "w")):
        a, c = hm.shape[axis], pf.shape[axis]
        if a is not None and c is not None and a != c:
            raise ValueError(f"heatmaps and pafs must share one grid: {name} is {a} vs {c}")
    hm = hm[..., :n_k]
    batch, grid_h = tf.shape(pf)[0], tf.shape(pf)[1]
    height = _image_height(image_hw, batch, grid_h, int(stride))

    # 1. Peaks: k slots per part, candidates above the threshold.
    codec = HeatmapCodec(ks, stride=int(stride), peak_threshold=peak_threshold, max_peaks=k, refine=refine)
    xy, peak_score = codec.decode_peaks_tf(hm, k)  # [B, K, k, 2], [B, K, k]
    valid = peak_score > peak_threshold
    valid_f = tf.cast(valid, tf.float32)
    peak_score = peak_score * valid_f
    xy = xy * valid_f[..., None]

    # 2-3. Candidate limbs, greedy one-to-one matching.
    # Candidates fill the first slots (top_k is sorted), so pairs are scored only over the
    # slots that some part of some image uses, then padded back to k x k: most parts have a
    # few peaks, and scoring all k x k pairs would cost ~(k / used)^2 more.
    used = tf.maximum(tf.reduce_max(tf.reduce_sum(tf.cast(valid, tf.int32), axis=-1)), 1)
    limbs = np.asarray(ks.limbs, dtype=np.int32).reshape(-1, 2)
    scores = _limb_scores(xy[:, :, :used], valid[:, :, :used], pf, limbs, int(stride), height,
                          int(num_samples), float(paf_threshold), float(min_sample_fraction),
                          float(distance_ratio))
    scores = tf.pad(scores, [[0, 0], [0, 0], [0, k - used], [0, k - used]])
    scores = tf.reshape(scores, [-1, n_l, k, k])  # static k again (no EnsureShape in TFLite)
    matched = _greedy_match(scores, k)  # [B, L, k, k]
    matched_score = matched * scores

    # 4. Connected components down the tree: labels are node ids part * k + slot.
    n = n_k * k
    labels = [tf.fill([batch, k], 0) + tf.range(q * k, (q + 1) * k) for q in range(n_k)]
    node_score = [peak_score[:, q] for q in range(n_k)]  # peak + the limb that joined it
    reached: set[int] = set()
    for li in tree:
        a, b = ks.limbs[li]
        parent_is_a = a in reached or b not in reached
        parent, child = (a, b) if parent_is_a else (b, a)
        reached.update((a, b))
        mt = matched[:, li] if parent_is_a else tf.transpose(matched[:, li], [0, 2, 1])  # [B, parent, child]
        st = matched_score[:, li] if parent_is_a else tf.transpose(matched_score[:, li], [0, 2, 1])
        inherited = tf.reduce_sum(mt * tf.cast(labels[parent], tf.float32)[:, :, None], axis=1)
        has_parent = tf.reduce_sum(mt, axis=1) > 0.0
        labels[child] = tf.where(has_parent, tf.cast(tf.round(inherited), tf.int32), labels[child])
        node_score[child] = node_score[child] + tf.reduce_sum(st, axis=1)

    lab = tf.stack(labels, axis=1)  # [B, K, k]
    extra = [tf.zeros_like(node_score[0]) for _ in range(n_k)]
    for li in redundant:
        a, b = ks.limbs[li]
        has = _presence(lab, valid_f, n)  # [B, N, K]
        oh_a = tf.one_hot(lab[:, a], n, dtype=tf.float32)  # [B, k, N]
        oh_b = tf.one_hot(lab[:, b], n, dtype=tf.float32)
        parts_a = tf.matmul(oh_a, has)  # [B, k, K]: part sets of the a-candidates' people
        parts_b = tf.matmul(oh_b, has)
        shared = tf.matmul(parts_a, parts_b, transpose_b=True)  # [B, k, k] common part types
        single_a = tf.reduce_sum(parts_a, axis=-1) <= 1.0
        single_b = tf.reduce_sum(parts_b, axis=-1) <= 1.0
        merge = ((matched[:, li] > 0.0) & (shared < 0.5)
                 & tf.not_equal(lab[:, a][:, :, None], lab[:, b][:, None, :])
                 & ~(single_a[:, :, None] & single_b[:, None, :]))  # redundant limbs never start people
        mf = tf.cast(merge, tf.float32)
        # Relabel b's person to a's: delta[label] = target - label for the merged labels.
        la = tf.cast(lab[:, a], tf.float32)
        lb = tf.cast(lab[:, b], tf.float32)
        target = tf.reduce_sum(mf * la[:, :, None], axis=1)  # [B, k] per b slot
        moved = tf.reduce_sum(mf, axis=1)
        delta = tf.reduce_sum(oh_b * (moved * (target - lb))[:, :, None], axis=1)  # [B, N]
        # Offset before the reshape: TFLite's runtime lets an in-place ADD on a RESHAPE
        # output overwrite the reshape's input (``lab``, still needed); seen with batch > 1.
        flat = lab + tf.range(batch)[:, None, None] * n
        shift = tf.gather(tf.reshape(delta, [-1]), flat)  # [B, K, k]
        lab = lab + tf.cast(tf.round(shift), tf.int32)
        extra[a] = extra[a] + tf.reduce_sum(mf * matched_score[:, li], axis=2)

    # 5. Person scores, filtering, the best M.
    node = tf.stack(node_score, axis=1) + tf.stack(extra, axis=1)  # [B, K, k]
    oh = tf.one_hot(lab, n, dtype=tf.float32) * valid_f[..., None]  # [B, K, k, N]
    n_parts = tf.reduce_sum(tf.reduce_max(oh, axis=2), axis=1)  # [B, N]
    total = tf.reduce_sum(oh * node[..., None], axis=[1, 2])
    person = total / tf.maximum(n_parts, 1.0)
    # A component of one peak is no person (group_people never creates one).
    ok = (n_parts >= float(max(int(min_parts), 2))) & (person >= min_person_score)
    key = tf.where(ok, person, tf.fill(tf.shape(person), np.float32(np.finfo(np.float32).min)))
    best, idx = tf.math.top_k(key, k=m)  # [B, M]
    keep = tf.gather(tf.reshape(tf.cast(ok, tf.float32), [-1]), idx + tf.range(batch)[:, None] * n)
    # Gather each kept person's candidates: [B, K, M, k] membership @ [B, K, k, 3].
    member = tf.cast(tf.equal(lab[:, :, None, :], idx[:, None, :, None]), tf.float32)
    member = member * valid_f[:, :, None, :] * keep[:, None, :, None]
    cand = tf.concat([xy, peak_score[..., None]], axis=-1)
    keypoints = tf.transpose(tf.matmul(member, cand), [0, 2, 1, 3])  # [B, M, K, 3]
    scores_out = tf.where(keep > 0.0, best, tf.zeros_like(best))
    num_poses = tf.cast(tf.reduce_sum(keep, axis=1), tf.int32)
    return keypoints, scores_out, num_poses


@keras.saving.register_keras_serializable(package="kerapose")
class PafGrouping(keras.layers.Layer):
    """Keras layer around :func:`paf_group_tf`: (heatmaps, pafs[, image_hw]) -> people.

    ``call`` returns ``{"keypoints": [B, M, K, 3], "scores": [B, M], "num_poses": [B]}`` in
    pixels of the network input; map them back to the original image outside (for example by
    the letterbox scale). ``image_hw`` (``[2]`` or ``[B, 2]``) sets the distance prior's image
    height; by default ``h * stride``. Arguments as :func:`paf_group_tf`.
    """

    keeps_float = True  # int8 export keeps it float32: coordinates and scores are never int8

    def __init__(self, keypoint_set: str = "coco17", stride: int = 8, max_peaks: int = 20,
                 max_people: int = 20, peak_threshold: float = 0.1, refine: bool = True,
                 num_samples: int = 10, paf_threshold: float = 0.05, min_sample_fraction: float = 0.8,
                 distance_ratio: float = 0.5, min_parts: int = 4, min_person_score: float = 0.4,
                 root: int | str | None = None, **kwargs):
        super().__init__(**kwargs)
        ks = get_keypoint_set(keypoint_set)
        _check_settings(ks, max_peaks, max_people, peak_threshold, num_samples, min_sample_fraction)
        limb_order(ks, root)  # validates root
        self.keypoint_set = ks.name
        self.num_keypoints = ks.num_keypoints
        self.settings = {
            "stride": int(stride), "max_peaks": int(max_peaks), "max_people": int(max_people),
            "peak_threshold": float(peak_threshold), "refine": bool(refine),
            "num_samples": int(num_samples), "paf_threshold": float(paf_threshold),
            "min_sample_fraction": float(min_sample_fraction), "distance_ratio": float(distance_ratio),
            "min_parts": int(min_parts), "min_person_score": float(min_person_score), "root": root,
        }

    def call(self, heatmaps, pafs, image_hw=None):
        s = dict(self.settings)
        stride = s.pop("stride")
        kp, scores, num = paf_group_tf(heatmaps, pafs, self.keypoint_set, stride, image_hw, **s)
        return {"keypoints": kp, "scores": scores, "num_poses": num}

    def compute_output_spec(self, heatmaps, pafs, image_hw=None):
        b, m = heatmaps.shape[0], self.settings["max_people"]
        return {
            "keypoints": keras.KerasTensor((b, m, self.num_keypoints, 3), "float32"),
            "scores": keras.KerasTensor((b, m), "float32"),
            "num_poses": keras.KerasTensor((b,), "int32"),
        }

    def get_config(self) -> dict:
        return {**super().get_config(), "keypoint_set": self.keypoint_set, **self.settings}
