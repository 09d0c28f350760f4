"""StrongPose's greedy decoder inside the TF graph, with fixed-size tensors.

:func:`strongpose_decode_tf` computes what :meth:`kerapose.codecs.strongpose.StrongPoseCodec.decode`
computes (same settings, same seeds, same people, same scores), for a batch, with ops that
convert to TFLite builtins and to ONNX (tf2onnx, opset 17):

1. Hough voting as a gather, not a scatter: a vote travels at most ``D = ceil(R/s)`` cells (offsets
   are clipped to R), so each cell sums, over the ``(2D+1)^2`` shifts ``d``, the probability of the
   cell ``d`` away times the bilinear (tent) weight of its vote: pads, slices and products only.
2. Seeds: 3x3 ``max_pool2d`` local maxima, ``top_k`` of ``max_seeds`` over the flattened
   ``[h*w*K]`` scores (ties: lower index first, as the numpy stable sort).
3. A ``tf.while_loop`` over people: each step checks every seed at once against the people found
   so far, takes the first ``seeds_per_step`` (P) unclaimed seeds after the last one visited, grows
   P people from them at once and keeps each in seed order unless a person kept before it claims
   its seed. This is the numpy seed-by-seed greedy (a claimed seed stays claimed, so the seeds
   between two candidates were skipped there too), in about 1/P of the sequential steps when many
   people are present; growth (K-1 steps of an inner loop) proposes all directed edges at once and
   fixes the best (first maximum) proposal.
4. Keypoint scores (Expected-OKS over a ``(2r+1)^2`` window of gathers, or the Hough value),
   instance scores with soft-NMS over ``[B, M, M, K]`` pair distances, stable sorts.

Ties are broken by explicit "first index of the maximum" reductions, never by ``argmax``, whose
tie order TensorFlow does not promise.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from kerapose.codecs.strongpose import StrongPoseCodec

__all__ = ["strongpose_decode_tf", "hough_tf", "StrongPoseDecoder", "SEEDS_PER_STEP"]

SEEDS_PER_STEP = 8  # candidate people grown together in one loop step


def _first_max(scores):
    """Index of the first maximum along the last axis of ``scores [..., N]``."""
    n = tf.shape(scores)[-1]
    top = tf.reduce_max(scores, axis=-1, keepdims=True)
    return tf.reduce_min(tf.where(scores >= top, tf.range(n), n), axis=-1)


class _Grid:
    """Cell arithmetic of one batch of maps (grid convention of :mod:`kerapose.codecs.grid`)."""

    def __init__(self, codec: StrongPoseCodec, heat, short, mid, hough):
        self.codec = codec
        self.s = float(codec.stride)
        self.c = (codec.stride - 1) / 2.0
        shape = tf.shape(heat)
        self.b, self.h, self.w = shape[0], shape[1], shape[2]
        self.k = codec.num_keypoints
        self.e = codec.num_edges
        self.heat = tf.reshape(heat, [self.b, -1])  # [B, h*w*K]
        self.short = tf.reshape(short, [self.b, -1])  # [B, h*w*2K]
        self.mid = tf.reshape(mid, [self.b, -1])  # [B, h*w*4E]
        self.hough = tf.reshape(hough, [self.b, -1])

    def cell(self, x, y):
        """Nearest cell (row, column) of pixel positions, clamped to the map."""
        j = tf.cast(tf.floor((x - self.c) / self.s + 0.5), tf.int32)
        i = tf.cast(tf.floor((y - self.c) / self.s + 0.5), tf.int32)
        return tf.clip_by_value(i, 0, self.h - 1), tf.clip_by_value(j, 0, self.w - 1)

    def centre(self, i, j):
        return tf.cast(j, tf.float32) * self.s + self.c, tf.cast(i, tf.float32) * self.s + self.c

    def read(self, flat, i, j, channels: int, channel):
        """``flat[b, (i*w + j)*channels + channel]`` for index tensors of shape [B, ...]."""
        index = (i * self.w + j) * channels + channel
        out = tf.gather(flat, tf.reshape(index, [self.b, -1]), batch_dims=1)
        return tf.reshape(out, tf.shape(index))

    def refine(self, x, y, kind):
        """``refine_steps`` short-range refinements of positions [B, ...] of keypoint types ``kind``."""
        for _ in range(self.codec.refine_steps):
            i, j = self.cell(x, y)
            cx, cy = self.centre(i, j)
            x = cx + self.read(self.short, i, j, 2 * self.k, 2 * kind)
            y = cy + self.read(self.short, i, j, 2 * self.k, 2 * kind + 1)
        return x, y


def hough_tf(heat, short, codec: StrongPoseCodec):
    """Hough maps ``[B, h, w, K]`` of probabilities ``heat`` and pixel offsets ``short [B, h, w, 2K]``.

    The votes are gathered over the ``(2D+1)^2`` neighbour shifts (see the module docstring);
    equal to :meth:`StrongPoseCodec.hough`.
    """
    k, d = codec.num_keypoints, codec.vote_reach
    lim = codec.radius / codec.stride
    sx = tf.clip_by_value(tf.gather(short, np.arange(0, 2 * k, 2), axis=3) / codec.stride, -lim, lim)
    sy = tf.clip_by_value(tf.gather(short, np.arange(1, 2 * k, 2), axis=3) / codec.stride, -lim, lim)
    pad = [[0, 0], [d, d], [d, d], [0, 0]]
    hp, sxp, syp = tf.pad(heat, pad), tf.pad(sx, pad), tf.pad(sy, pad)
    shape = tf.shape(heat)
    size = tf.stack([shape[0], shape[1], shape[2], k])
    wx = {dx: tf.nn.relu(1.0 - tf.abs(sxp - float(dx))) for dx in range(-d, d + 1)}
    total = None
    for dy in range(-d, d + 1):
        wy = hp * tf.nn.relu(1.0 - tf.abs(syp - float(dy)))
        for dx in range(-d, d + 1):
            # the source of the vote landing d = (dy, dx) away sits at padded (t - d + D)
            part = tf.slice(wy * wx[dx], tf.stack([0, d - dy, d - dx, 0]), size)
            total = part if total is None else total + part
    return total / codec.disk_cells


def _seeds(hough, codec: StrongPoseCodec, g: _Grid):
    """Top ``max_seeds`` local maxima: keypoint type, refined x, y and validity, each [B, S]."""
    s_max = codec.max_seeds
    pooled = tf.nn.max_pool2d(hough, 3, 1, "SAME")
    peak = tf.logical_and(hough >= pooled, hough > codec.peak_threshold)
    flat = tf.reshape(tf.where(peak, hough, tf.zeros_like(hough)), [g.b, -1])
    flat = tf.concat([flat, tf.zeros([g.b, s_max], flat.dtype)], axis=1)  # top_k needs >= S values
    values, index = tf.math.top_k(flat, k=s_max, sorted=True)
    valid = values > codec.peak_threshold
    index = tf.where(valid, index, tf.zeros_like(index))
    kind = tf.math.floormod(index, g.k)
    cell = tf.math.floordiv(index, g.k)
    i, j = tf.math.floordiv(cell, g.w), tf.math.floormod(cell, g.w)
    x, y = g.centre(i, j)
    x, y = g.refine(x, y, kind)
    return kind, x, y, valid


def _pick(values, index):
    """``values[..., index]`` along the last axis through a one-hot sum (exact, any rank)."""
    return tf.reduce_sum(values * tf.one_hot(index, tf.shape(values)[-1], dtype=values.dtype), axis=-1)


def _grow(g: _Grid, root, rx, ry):
    """People grown from seeds ``root`` [B, P] at (rx, ry): positions [B, P, K] x2, reached [B, P, K]."""
    codec = g.codec
    src = tf.constant(codec.edges[:, 0], tf.int32)
    dst = tf.constant(codec.edges[:, 1], tf.int32)
    edge = tf.range(g.e)
    first = tf.one_hot(root, g.k)
    px, py, reached = first * tf.expand_dims(rx, 2), first * tf.expand_dims(ry, 2), first

    def step(px, py, reached):
        i, j = g.cell(tf.gather(px, src, axis=2), tf.gather(py, src, axis=2))  # [B, P, 2E]
        cx, cy = g.centre(i, j)
        tx = cx + g.read(g.mid, i, j, 2 * g.e, 2 * edge)
        ty = cy + g.read(g.mid, i, j, 2 * g.e, 2 * edge + 1)
        tx, ty = g.refine(tx, ty, dst)
        ci, cj = g.cell(tx, ty)
        prob = g.read(g.heat, ci, cj, g.k, dst)
        frontier = tf.logical_and(tf.gather(reached, src, axis=2) > 0, tf.gather(reached, dst, axis=2) <= 0)
        score = tf.where(frontier, prob, -tf.ones_like(prob))
        best = _first_max(score)  # [B, P]
        grow = tf.cast(tf.reduce_max(score, axis=2) > -0.5, tf.float32)  # some edge was on the frontier
        upd = tf.one_hot(tf.gather(dst, best), g.k) * tf.expand_dims(grow, 2)
        bx, by = tf.expand_dims(_pick(tx, best), 2), tf.expand_dims(_pick(ty, best), 2)
        return px * (1.0 - upd) + bx * upd, py * (1.0 - upd) + by * upd, tf.maximum(reached, upd)

    # a loop, not K-1 unrolled copies: a graph this size traces and converts several times faster
    return tf.while_loop(lambda *_: True, step, (px, py, reached), maximum_iterations=g.k - 1)


def _people(g: _Grid, seeds, max_people: int, seeds_per_step: int):
    """The seed loop: positions [B, M, K] x2, reached [B, M, K], people found [B].

    Each step takes the first P = ``seeds_per_step`` seeds (after the last one visited) that no
    person found so far claims, grows P people from them at once, then visits them in order,
    keeping one only if no person kept before it (in this step too) claims its seed. Seeds skipped
    between them were claimed already, so this is the one-seed-at-a-time greedy, in about 1/P of
    the sequential steps when many people are present.
    """
    codec = g.codec
    kind, sx, sy, valid = seeds
    m, k, s_max = max_people, g.k, codec.max_seeds
    p = min(seeds_per_step, s_max)
    r2 = codec.nms_radius**2
    slots = tf.range(s_max)

    def claims(pos_x, pos_y, reached, count, kinds, x, y):
        """Whether a person among the first ``count`` has keypoint ``kinds`` within r of (x, y): [B, N]."""
        gx = tf.gather(pos_x, kinds, axis=2, batch_dims=1)  # [B, M, N]
        gy = tf.gather(pos_y, kinds, axis=2, batch_dims=1)
        gr = tf.gather(reached, kinds, axis=2, batch_dims=1)
        d2 = tf.square(gx - tf.expand_dims(x, 1)) + tf.square(gy - tf.expand_dims(y, 1))
        person = tf.expand_dims(tf.sequence_mask(count, m), 2)
        return tf.reduce_any(tf.logical_and(tf.logical_and(gr > 0, d2 <= r2), person), axis=1)

    def body(pos_x, pos_y, reached, count, pointer, done):
        claimed = claims(pos_x, pos_y, reached, count, kind, sx, sy)
        cand = tf.logical_and(tf.logical_and(valid, tf.logical_not(claimed)), slots >= tf.expand_dims(pointer, 1))
        # the first P candidates, in seed order
        order, pick = tf.math.top_k(tf.where(cand, s_max - slots, tf.zeros_like(slots)), k=p)
        has = order > 0  # [B, P]
        pick = tf.where(has, pick, tf.zeros_like(pick))
        kinds = tf.gather(kind, pick, batch_dims=1)
        x, y = tf.gather(sx, pick, batch_dims=1), tf.gather(sy, pick, batch_dims=1)
        px, py, rch = _grow(g, kinds, x, y)
        def visit(q, pos_x, pos_y, reached, count):
            def col(t):  # column q of [B, P, ...], kept as [B, 1, ...]
                return tf.gather(t, tf.reshape(q, [1]), axis=1)

            free = tf.logical_not(claims(pos_x, pos_y, reached, count, col(kinds), col(x), col(y))[:, 0])
            keep = tf.logical_and(tf.logical_and(col(has)[:, 0], free), tf.logical_and(count < m, tf.logical_not(done)))
            slot = tf.logical_and(tf.sequence_mask(count + 1, m), tf.logical_not(tf.sequence_mask(count, m)))
            slot = tf.expand_dims(tf.logical_and(slot, tf.expand_dims(keep, 1)), 2)
            return (q + 1, tf.where(slot, col(px), pos_x), tf.where(slot, col(py), pos_y),
                    tf.where(slot, col(rch), reached), count + tf.cast(keep, tf.int32))

        _, pos_x, pos_y, reached, count = tf.while_loop(
            lambda q, *_: q < p, visit, (tf.constant(0), pos_x, pos_y, reached, count), maximum_iterations=p)
        more = has[:, p - 1]  # P candidates visited: there may be more after the last one
        pointer = tf.where(more, pick[:, p - 1] + 1, pointer)
        done = tf.logical_or(done, tf.logical_or(tf.logical_not(more), count >= m))
        return pos_x, pos_y, reached, count, pointer, done

    zeros = tf.zeros([g.b, m, k], tf.float32)
    start = (zeros, zeros, zeros, tf.zeros([g.b], tf.int32), tf.zeros([g.b], tf.int32), tf.zeros([g.b], tf.bool))
    # every step but the last keeps at least its first candidate: at most M + 1 steps
    out = tf.while_loop(lambda *state: tf.reduce_any(tf.logical_not(state[-1])), body, start,
                        maximum_iterations=m + 1)
    return out[0], out[1], out[2], out[3]


def _keypoint_scores(g: _Grid, pos_x, pos_y, reached):
    """Scores [B, M, K] of the decoded keypoints (see the codec's ``keypoint_score``)."""
    codec = g.codec
    m = pos_x.shape[1]
    flat_x, flat_y = tf.reshape(pos_x, [g.b, -1]), tf.reshape(pos_y, [g.b, -1])  # [B, M*K]
    kind = tf.zeros([g.b, 1], tf.int32) + tf.expand_dims(tf.tile(tf.range(g.k), [m]), 0)
    ci, cj = g.cell(flat_x, flat_y)
    if codec.keypoint_score == "hough":
        scores = g.read(g.hough, ci, cj, g.k, kind)
        return tf.reshape(scores, [g.b, m, g.k]) * reached
    big = 1e9
    on = reached > 0
    lo_x = tf.reduce_min(tf.where(on, pos_x, big), axis=2)
    hi_x = tf.reduce_max(tf.where(on, pos_x, -big), axis=2)
    lo_y = tf.reduce_min(tf.where(on, pos_y, big), axis=2)
    hi_y = tf.reduce_max(tf.where(on, pos_y, -big), axis=2)
    any_on = tf.reduce_any(on, axis=2)
    area = tf.where(any_on, (hi_x - lo_x) * (hi_y - lo_y), tf.zeros_like(lo_x))
    area = tf.maximum(area, 1.0)  # lam^2, [B, M]
    kappa2 = tf.constant((2.0 * codec.keypoint_set.sigmas_array) ** 2, tf.float32)
    denom = tf.reshape(2.0 * tf.expand_dims(area, 2) * kappa2, [g.b, -1, 1])  # [B, M*K, 1]
    # the (2r+1)^2 window around each keypoint's cell, gathered at once: [B, M*K, W]
    r = codec.window_reach
    di, dj = (v.reshape(-1) for v in np.meshgrid(np.arange(-r, r + 1), np.arange(-r, r + 1), indexing="ij"))
    ii = tf.expand_dims(ci, 2) + tf.constant(di, tf.int32)
    jj = tf.expand_dims(cj, 2) + tf.constant(dj, tf.int32)
    inside = tf.logical_and(tf.logical_and(ii >= 0, ii < g.h), tf.logical_and(jj >= 0, jj < g.w))
    ii, jj = tf.clip_by_value(ii, 0, g.h - 1), tf.clip_by_value(jj, 0, g.w - 1)
    cx, cy = g.centre(ii, jj)
    d2 = tf.square(cx - tf.expand_dims(flat_x, 2)) + tf.square(cy - tf.expand_dims(flat_y, 2))
    use = tf.logical_and(inside, d2 <= codec.radius**2)
    n_win = len(di)
    hv = g.read(g.hough, tf.reshape(ii, [g.b, -1]), tf.reshape(jj, [g.b, -1]), g.k,
                tf.reshape(tf.tile(tf.expand_dims(kind, 2), [1, 1, n_win]), [g.b, -1]))
    hv = tf.where(use, tf.reshape(hv, tf.shape(d2)), tf.zeros_like(d2))
    total = tf.reduce_sum(hv, axis=2)
    weighted = tf.reduce_sum(hv * tf.exp(-d2 / denom), axis=2)
    prob = g.read(g.heat, ci, cj, g.k, kind)
    expected = tf.where(total > 0, weighted / tf.maximum(total, 1e-30), tf.zeros_like(total))
    return tf.reshape(prob * expected, [g.b, m, g.k]) * reached


def _sort(order, *tensors):
    return [tf.gather(t, order, batch_dims=1) for t in tensors]


def strongpose_decode_tf(heatmaps, short_offsets, mid_offsets, codec: StrongPoseCodec, max_people: int = 20,
                         seeds_per_step: int = SEEDS_PER_STEP):
    """Batched maps -> people, padded to ``max_people``, in the pixels of the network input.

    Args:
        heatmaps: ``[B, h, w, K]`` probabilities (after the sigmoid).
        short_offsets: ``[B, h, w, 2K]`` pixels.
        mid_offsets: ``[B, h, w, 4E]`` pixels.
        codec: the settings (stride, radius, thresholds, scores, edges).
        max_people: M.
        seeds_per_step: people grown at once per loop step (speed only; the result is the same).

    Returns a dict: ``keypoints [B, M, K, 3]`` (x, y, score), ``scores [B, M]``, ``boxes [B, M, 4]``,
    ``num_poses [B]`` int32; people best first, rows past ``num_poses`` zero.
    """
    if isinstance(max_people, bool) or not isinstance(max_people, (int, np.integer)) or max_people < 1:
        raise ValueError(f"max_people: expected a positive integer, got {max_people!r}")
    m = int(max_people)
    if isinstance(seeds_per_step, bool) or not isinstance(seeds_per_step, (int, np.integer)) or seeds_per_step < 1:
        raise ValueError(f"seeds_per_step: expected a positive integer, got {seeds_per_step!r}")
    ch = codec.channels
    maps = {"heatmaps": heatmaps, "short_offsets": short_offsets, "mid_offsets": mid_offsets}
    for name, value in maps.items():
        shape = tuple(value.shape)
        if len(shape) != 4 or shape[-1] != ch[name]:
            raise ValueError(f"{name}: expected [B, h, w, {ch[name]}], got shape {shape}")
    heat, short, mid = (tf.cast(v, tf.float32) for v in maps.values())
    k = codec.num_keypoints
    hough = hough_tf(heat, short, codec)
    g = _Grid(codec, heat, short, mid, hough)
    pos_x, pos_y, reached, count = _people(g, _seeds(hough, codec, g), m, int(seeds_per_step))
    kp_scores = _keypoint_scores(g, pos_x, pos_y, reached)
    valid = tf.sequence_mask(count, m)
    mean = tf.reduce_sum(kp_scores, axis=2) / float(k)
    final = mean
    if codec.instance_score == "soft_nms":
        order = tf.argsort(tf.where(valid, mean, -tf.ones_like(mean)), axis=1, direction="DESCENDING", stable=True)
        sx, sy, sr, ss = _sort(order, pos_x, pos_y, reached, kp_scores)
        d2 = tf.square(tf.expand_dims(sx, 2) - tf.expand_dims(sx, 1)) + tf.square(
            tf.expand_dims(sy, 2) - tf.expand_dims(sy, 1))  # [B, j, j', K]
        both = tf.logical_and(tf.expand_dims(sr, 2) > 0, tf.expand_dims(sr, 1) > 0)
        earlier = tf.constant(np.tri(m, k=-1, dtype=bool)[None, :, :, None])  # j' ranked before j
        claimed = tf.reduce_any(
            tf.logical_and(tf.logical_and(both, d2 <= codec.nms_radius**2), earlier), axis=2)
        ranked = tf.reduce_sum(ss * (1.0 - tf.cast(claimed, tf.float32)), axis=2) / float(k)
        # back to decoding order: scatter-free, through the inverse permutation
        final = tf.gather(ranked, tf.argsort(order, axis=1, stable=True), batch_dims=1)
    order = tf.argsort(tf.where(valid, final, -tf.ones_like(final)), axis=1, direction="DESCENDING", stable=True)
    pos_x, pos_y, reached, kp_scores, final, valid = _sort(order, pos_x, pos_y, reached, kp_scores, final, valid)
    keep = tf.logical_and(valid, final > codec.score_threshold)
    keep_f = tf.cast(keep, tf.float32)
    on = reached * tf.expand_dims(keep_f, 2)
    xs, ys = pos_x * on, pos_y * on
    keypoints = tf.stack([xs, ys, kp_scores * on], axis=-1)
    big = 1e9
    onb = on > 0
    boxes = tf.stack([tf.reduce_min(tf.where(onb, xs, big), axis=2), tf.reduce_min(tf.where(onb, ys, big), axis=2),
                      tf.reduce_max(tf.where(onb, xs, -big), axis=2), tf.reduce_max(tf.where(onb, ys, -big), axis=2)],
                     axis=-1) * tf.expand_dims(keep_f, 2)
    return {"keypoints": keypoints, "scores": final * keep_f, "boxes": boxes,
            "num_poses": tf.reduce_sum(tf.cast(keep, tf.int32), axis=1)}


@keras.saving.register_keras_serializable(package="kerapose")
class StrongPoseDecoder(keras.layers.Layer):
    """Keras layer around :func:`strongpose_decode_tf`; its settings are a codec's.

    ``call(heatmaps, short_offsets, mid_offsets, scale=None)``: heat maps as probabilities;
    ``scale`` ``[B]`` (network pixels per image pixel, from the letterbox) maps the results back to
    the original images' pixels.

    Args:
        max_people: M, the padded number of people per image.
        **codec_config: :class:`kerapose.codecs.strongpose.StrongPoseCodec` arguments.
    """

    keeps_float = True  # int8 export keeps it float32: coordinates and scores are never int8

    def __init__(self, max_people: int = 20, keypoint_set: str = "coco17", stride: int = 8, radius: float = 16.0,
                 nms_radius: float = 10.0, peak_threshold: float = 0.01, max_seeds: int = 512, refine_steps: int = 2,
                 keypoint_score: str = "expected_oks", instance_score: str = "soft_nms",
                 score_threshold: float = 0.0, edge_hops: int = 2, **kwargs):
        super().__init__(**kwargs)
        if isinstance(max_people, bool) or not isinstance(max_people, (int, np.integer)) or max_people < 1:
            raise ValueError(f"max_people: expected a positive integer, got {max_people!r}")
        self.max_people = int(max_people)
        self.codec = StrongPoseCodec(keypoint_set, stride=stride, radius=radius, nms_radius=nms_radius,
                                     peak_threshold=peak_threshold, max_seeds=max_seeds, refine_steps=refine_steps,
                                     keypoint_score=keypoint_score, instance_score=instance_score,
                                     score_threshold=score_threshold, edge_hops=edge_hops)

    def call(self, heatmaps, short_offsets, mid_offsets, scale=None):
        out = strongpose_decode_tf(heatmaps, short_offsets, mid_offsets, self.codec, self.max_people)
        if scale is not None:
            inv = tf.reshape(1.0 / tf.cast(scale, tf.float32), [-1, 1, 1])
            kp = out["keypoints"]
            out["keypoints"] = tf.concat([kp[..., :2] * tf.expand_dims(inv, 3), kp[..., 2:]], axis=-1)
            out["boxes"] = out["boxes"] * inv
        return out

    def compute_output_spec(self, heatmaps, short_offsets, mid_offsets, scale=None):
        b, m, k = heatmaps.shape[0], self.max_people, self.codec.num_keypoints
        return {
            "keypoints": keras.KerasTensor((b, m, k, 3), "float32"),
            "scores": keras.KerasTensor((b, m), "float32"),
            "boxes": keras.KerasTensor((b, m, 4), "float32"),
            "num_poses": keras.KerasTensor((b,), "int32"),
        }

    def get_config(self) -> dict:
        return {**super().get_config(), "max_people": self.max_people, **self.codec.get_config()}
