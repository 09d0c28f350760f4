"""tf.data pipelines: COCO records -> augmented crops -> codec targets, batched.

Target generation is vectorised numpy inside ``tf.numpy_function`` (the codecs are numpy;
throughput in ``benchmarks/bench_training.py``), mapped in parallel. Randomness is a function of
(seed, epoch, image index), so a deterministic pipeline gives the same batches whatever the
number of parallel calls. Unreadable images and malformed annotations are skipped and counted
(:class:`SkipCounter`), never fatal.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import cv2
import numpy as np
import tensorflow as tf

from kerapose.codecs.boxes import BoxCodec, box_iou
from kerapose.codecs.heatmap import HeatmapCodec
from kerapose.codecs.prn import PRNCodec
from kerapose.codecs.segmentation import SegmentationCodec
from kerapose.data.augment import AugmentConfig, augment
from kerapose.data.coco import CocoKeypoints, ImageRecord
from kerapose.losses import pack_box_targets, pack_weights
from kerapose.skeleton import get_keypoint_set

__all__ = [
    "SkipCounter", "report_annotation_issues", "read_image", "MultiPoseNetTargets", "keypoint_dataset", "prn_dataset",
    "annotation_prn_pairs", "network_prn_pairs", "PRN_PAIR_BOXES",
]


@dataclass
class SkipCounter:
    """Thread-safe count of skipped samples by reason, reported once per epoch."""

    counts: dict = field(default_factory=dict)
    examples: dict = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, reason: str, where: str) -> None:
        with self._lock:
            self.counts[reason] = self.counts.get(reason, 0) + 1
            self.examples.setdefault(reason, where)

    def total(self) -> int:
        return sum(self.counts.values())

    def report(self) -> str:
        if not self.counts:
            return "no samples skipped"
        return "; ".join(f"{n} skipped: {r} (e.g. {self.examples[r]})" for r, n in sorted(self.counts.items()))

    def reset(self) -> None:
        with self._lock:
            self.counts.clear()
            self.examples.clear()


def report_annotation_issues(coco: CocoKeypoints, log: Callable[[str], None] | None = None) -> bool:
    """Print the broken annotations the dataset skipped or repaired while loading
    (``coco.annotation_issues``: kind, count, one example with file and annotation id), once
    per dataset object, so once per run however many pipelines are built on it. True if printed."""
    issues = getattr(coco, "annotation_issues", None)
    if not issues or issues.reported:
        return False
    issues.reported = True
    head = (f"[kerapose] {coco.ann_file}: {issues.skipped_annotations} annotation(s) skipped, "
            f"{issues.repairs} repair(s), {issues.skipped_images} image(s) skipped")
    lines = "\n".join(f"  {line}" for line in issues.report().splitlines())
    (log or (lambda msg: print(msg, flush=True)))(f"{head}\n{lines}")
    return True


def read_image(path: str) -> np.ndarray:
    """RGB uint8 [H, W, 3] of an image file; ValueError naming the file if it cannot be decoded.

    Grayscale, RGBA and 16-bit images are converted to 8-bit RGB.
    """
    data = np.fromfile(path, dtype=np.uint8) if path else np.zeros(0, np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None:
        raise ValueError(f"{path}: not a readable image")
    if img.dtype == np.uint16:
        img = (img / 257.0).round().astype(np.uint8)
    elif img.dtype != np.uint8:
        raise ValueError(f"{path}: unsupported image dtype {img.dtype}")
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    elif img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    else:
        raise ValueError(f"{path}: unsupported channel count {img.shape[2]}")
    return img


class MultiPoseNetTargets:
    """The targets of MultiPoseNet's outputs for one augmented crop (one codec per target kind).

    ``heatmaps`` (and every ``heatmaps_k*``): K Gaussian heatmaps + the person mask, packed with
    the ignore mask W for :class:`kerapose.losses.MaskedL2` ([h, w, K + 2]);
    ``person_logits``: anchor states 1 / 0 / -1 ([A, 1]); ``person_boxes``: box targets packed
    with the anchor state ([A, 5]).
    """

    def __init__(self, keypoint_set="coco17", input_size=(480, 480), stride: int = 4, sigma: float = 2.0,
                 intermediate_levels=(2, 3, 4, 5), person_targets: bool = True, heatmap_targets: bool = True):
        self.keypoint_set = get_keypoint_set(keypoint_set)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.heatmap_codec = HeatmapCodec(self.keypoint_set, stride=stride, sigma=sigma)
        self.seg_codec = SegmentationCodec(stride=stride)
        self.box_codec = BoxCodec()
        self.intermediate_levels = tuple(intermediate_levels)
        self.person_targets = person_targets
        self.heatmap_targets = heatmap_targets
        if not (person_targets or heatmap_targets):
            raise ValueError("MultiPoseNetTargets needs heatmap_targets or person_targets")
        self.stride = stride

    @property
    def output_shapes(self) -> dict:
        h, w = self.heatmap_codec.output_size(self.input_size)
        k = self.keypoint_set.num_keypoints
        shapes = {}
        if self.heatmap_targets:
            shapes["heatmaps"] = (h, w, k + 2)
            shapes.update({f"heatmaps_k{l}": (h, w, k + 2) for l in self.intermediate_levels})
        if self.person_targets:
            a = self.box_codec.num_anchors(self.input_size)
            shapes.update({"person_logits": (a, 1), "person_boxes": (a, 5)})
        return shapes

    def encode(self, crop: dict) -> dict:
        rec: ImageRecord = crop["record"]
        out = {}
        if self.heatmap_targets:
            heat = self.heatmap_codec.encode(rec.keypoints[~rec.iscrowd], self.input_size)
            mask, weights = self.seg_codec.encode(rec)
            packed = np.asarray(pack_weights(np.concatenate([heat, mask[..., None]], -1), weights[..., None]),
                                np.float32)
            out["heatmaps"] = packed
            out.update({f"heatmaps_k{l}": packed for l in self.intermediate_levels})
        if self.person_targets:
            crowd = rec.iscrowd
            valid = (rec.boxes[:, 2] > rec.boxes[:, 0]) & (rec.boxes[:, 3] > rec.boxes[:, 1])
            cls_t, box_t = self.box_codec.encode(rec.boxes[~crowd & valid], self.input_size,
                                                 ignore_boxes=rec.boxes[crowd & valid])
            out["person_logits"] = cls_t.astype(np.float32)
            out["person_boxes"] = np.asarray(pack_box_targets(box_t, cls_t), np.float32)
        return out


def _sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(epoch), int(index)])


# Map parallelism of finite (evaluation) pipelines, which run without autotuning.
_EVAL_PARALLELISM = max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def keypoint_dataset(
    coco: CocoKeypoints,
    targets: MultiPoseNetTargets,
    augment_config: AugmentConfig | None = None,
    batch_size: int = 8,
    shuffle: bool = True,
    seed: int = 0,
    repeat: bool = True,
    deterministic: bool = False,
    num_parallel_calls: int | None = None,
    shard: tuple[int, int] | None = None,
    skips: SkipCounter | None = None,
    only_with_keypoints: bool = True,
) -> tf.data.Dataset:
    """(image float32 [B, H, W, 3] in 0..255, {output name: target}) batches for ``model.fit``.

    Args:
        coco: the dataset split.
        targets: which outputs get targets (:class:`MultiPoseNetTargets`).
        augment_config: crop/augmentation settings; its ``output_size`` must equal the
            targets' ``input_size``. Default: person-centric crops of that size.
        shuffle, seed, repeat: per-epoch reshuffling of image order.
        deterministic: keep element order fixed under parallel mapping.
        num_parallel_calls: parallel map calls (default: tf.data.AUTOTUNE).
        shard: (num_shards, index) for multi-worker input sharding by image.
        skips: a :class:`SkipCounter` that collects unreadable images / bad annotations.
        only_with_keypoints: train on images that have at least one labelled person.
    """
    cfg = augment_config or AugmentConfig(output_size=targets.input_size)
    if tuple(cfg.output_size) != targets.input_size:
        raise ValueError(f"augment output_size {tuple(cfg.output_size)} != target input_size {targets.input_size}")
    skips = skips if skips is not None else SkipCounter()
    report_annotation_issues(coco)
    ids = list(coco.image_ids)
    if only_with_keypoints:
        ids = [i for i in ids if len(coco.coco.getAnnIds(imgIds=[i]))]
    if not ids:
        raise ValueError(f"{coco.ann_file}: no images with person annotations")
    shapes = targets.output_shapes
    names = list(shapes)
    h, w = targets.input_size

    loaded = [0]

    def skip(reason: str, where: str):
        skips.add(reason, where)
        # A dataset where nothing loads would make the filter below spin forever: fail loudly.
        if loaded[0] == 0 and skips.total() >= len(ids):
            raise RuntimeError(f"{coco.ann_file}: every image was skipped ({skips.report()})")
        return _empty(h, w, shapes)

    def load(index, epoch):
        image_id = ids[int(index)]
        try:
            rec = coco.record(image_id)
        except Exception as e:  # malformed annotation: skip, count
            return skip("bad annotation", f"image {image_id}: {e}")
        try:
            img = read_image(rec.path)
        except (ValueError, OSError) as e:
            return skip("unreadable image", str(e))
        if img.shape[:2] != (rec.height, rec.width):
            return skip("size mismatch", f"{rec.path}: file {img.shape[:2]}, annotation {(rec.height, rec.width)}")
        loaded[0] += 1
        rng = _sample_rng(seed, int(epoch), image_id)
        crop = augment(rec, img, cfg, rng, targets.keypoint_set)
        t = targets.encode(crop)
        return (np.True_, crop["image"].astype(np.float32), *[t[n] for n in names])

    index = tf.range(len(ids), dtype=tf.int64)
    if shard is not None:
        num_shards, shard_index = int(shard[0]), int(shard[1])
        if not 0 <= shard_index < num_shards:
            raise ValueError(f"shard {tuple(shard)}: expected (num_shards, index) with 0 <= index < num_shards")
        if len(ids) < num_shards:  # an empty shard would make the repeated dataset spin forever
            raise ValueError(f"{coco.ann_file}: {len(ids)} images with people cannot be split into "
                             f"{num_shards} shards (one per worker); every worker needs at least one image")
        index = index[shard_index::num_shards]

    def epoch_of(e):
        # A fresh permutation per epoch, a pure function of (seed, epoch): resumable and deterministic.
        order = tf.random.experimental.stateless_shuffle(index, seed=tf.stack([tf.constant(seed, tf.int64), e]))
        return tf.data.Dataset.from_tensor_slices(order if shuffle else index).map(lambda i: (i, e))

    epochs = tf.data.Dataset.range(1 << 31) if repeat else tf.data.Dataset.range(1)
    ds = epochs.flat_map(epoch_of)
    tout = [tf.bool, tf.float32] + [tf.float32] * len(names)

    def py_map(i, e):
        out = tf.numpy_function(load, [i, e], tout, stateful=False)
        ok, image, *ts = out
        ok.set_shape(())
        image.set_shape((h, w, 3))
        for t, n in zip(ts, names):
            t.set_shape(shapes[n])
        return ok, image, dict(zip(names, ts))

    parallel = num_parallel_calls or (tf.data.AUTOTUNE if repeat else _EVAL_PARALLELISM)
    ds = ds.map(py_map, num_parallel_calls=parallel, deterministic=deterministic)
    def is_ok(ok, image, t):
        return ok

    def drop_flag(ok, image, t):
        return image, t

    ds = ds.filter(is_ok).map(drop_flag)
    ds = ds.batch(batch_size, drop_remainder=repeat)
    options = tf.data.Options()
    options.deterministic = deterministic
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.OFF if shard is not None else tf.data.experimental.AutoShardPolicy.DATA
    )
    return _prefetched(ds.with_options(options), repeat)


def _prefetched(ds: tf.data.Dataset, repeat: bool) -> tf.data.Dataset:
    """The last step of both pipelines. A finite (evaluation) one is rebuilt every epoch, and
    deleting an iterator waits for tf.data's autotuning thread to wake (24-28 s stalls after
    half of the quickstart's epochs), so it runs with autotuning off and a fixed prefetch."""
    if repeat:
        return ds.prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.prefetch(2).with_options(options)


def _empty(h: int, w: int, shapes: dict):
    return (np.False_, np.zeros((h, w, 3), np.float32), *[np.zeros(s, np.float32) for s in shapes.values()])


def prn_dataset(
    coco: CocoKeypoints,
    codec: PRNCodec,
    batch_size: int = 32,
    shuffle: bool = True,
    seed: int = 0,
    flip: bool = True,
    repeat: bool = True,
    pairs: tuple[np.ndarray, np.ndarray] | None = None,
    sharded: bool = False,
) -> tuple[tf.data.Dataset, int]:
    """PRN training pairs, with horizontal flips as augmentation. Returns (dataset, num_pairs).

    By default the pairs come from the annotations (input: everyone's keypoints in the owner's
    box, rendered by ``codec``; target: the owner's), as in the paper; ``pairs`` gives other
    ``(inputs, targets)`` arrays instead, e.g. :func:`network_prn_pairs` (memory-mapped files
    included: batches are read from them as they are needed, so memory stays at a few batches
    whatever the number of pairs). ``flip`` adds every pair mirrored (the crop grid flipped and
    the left/right channels swapped), made batch by batch, not stored. ``sharded``: the pairs
    are this worker's own share (tf.data must not shard them again).
    """
    if pairs is None:
        pairs = annotation_prn_pairs(coco, codec)
    x, y = pairs
    m = len(x)
    n = 2 * m if flip else m
    perm = np.asarray(codec.keypoint_set.flip_index)

    def take(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        src = idx % m
        order = np.argsort(src, kind="stable")  # read memory-mapped files front to back
        rows = np.empty_like(order)
        rows[order] = np.arange(len(order))
        xb = np.asarray(x[src[order]], np.float32)[rows]
        yb = np.asarray(y[src[order]], np.float32)[rows]
        mirrored = idx >= m
        if mirrored.any():
            xb[mirrored] = xb[mirrored][:, :, ::-1][..., perm]
            yb[mirrored] = yb[mirrored][:, :, ::-1][..., perm]
        return xb, yb

    def batches():
        rng = np.random.default_rng(seed)
        if not repeat:
            order = rng.permutation(n) if shuffle else np.arange(n)
            for s in range(0, n, batch_size):
                yield take(order[s:s + batch_size])
            return
        stream = np.zeros(0, np.int64)  # full batches across epoch boundaries
        while True:
            while len(stream) < batch_size:
                stream = np.concatenate([stream, rng.permutation(n) if shuffle else np.arange(n)])
            yield take(stream[:batch_size])
            stream = stream[batch_size:]

    spec = tf.TensorSpec((None, *x.shape[1:]), tf.float32)
    ds = tf.data.Dataset.from_generator(batches, output_signature=(spec, spec))
    if sharded:
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        ds = ds.with_options(options)
    return _prefetched(ds, repeat), n


def annotation_prn_pairs(coco: CocoKeypoints, codec: PRNCodec) -> tuple[np.ndarray, np.ndarray]:
    """The paper's PRN pairs: ``(inputs, targets)`` ``[M, ch, cw, K]`` rendered from the annotations."""
    report_annotation_issues(coco)
    xs, ys = [], []
    for rec in coco:
        if not len(rec.keypoints):
            continue
        x, y, _ = codec.training_pairs(rec)
        if len(x):
            xs.append(x)
            ys.append(y)
    if not xs:
        raise ValueError(f"{coco.ann_file}: no persons with keypoints to build PRN pairs from")
    return np.concatenate(xs), np.concatenate(ys)


PRN_PAIR_BOXES = ("annotations", "detections")


def _matched_boxes(rec: ImageRecord, found: np.ndarray, match_iou: float) -> ImageRecord:
    """``rec`` with each person's box replaced by the detection (image pixels) of highest IoU
    with it, where that IoU reaches ``match_iou``."""
    gt = np.asarray(rec.boxes, np.float64).reshape(-1, 4)
    if not len(found) or not len(gt):
        return rec
    iou = box_iou(gt, found)
    best = iou.argmax(1)
    take = iou[np.arange(len(gt)), best] >= match_iou
    return replace(rec, boxes=np.where(take[:, None], found[best], gt).astype(np.float32))


def network_prn_pairs(
    coco: CocoKeypoints,
    codec: PRNCodec,
    keypoint_model,
    input_size: tuple[int, int],
    stride: int = 4,
    batch_size: int = 16,
    skips: SkipCounter | None = None,
    progress: bool = True,
    boxes: str = "annotations",
    match_iou: float = 0.5,
    out: str | None = None,
    shard: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """PRN pairs whose inputs are the trained keypoint subnet's own heatmaps.

    Each image is letterboxed to ``input_size`` as at inference, run through ``keypoint_model``
    (a model with a ``heatmaps`` output of at least K channels at ``stride``), and the heatmaps
    are cropped at every annotated person's box; targets are those of
    :meth:`PRNCodec.training_targets` for that box. The PRN then learns to clean up the heatmaps
    the network really produces, which differ from rendered Gaussians (weaker, wider, with
    spurious peaks) while the network is far from converged. Unreadable images are skipped and
    counted.

    ``boxes="annotations"`` crops at the ground-truth boxes. ``boxes="detections"`` crops at the
    boxes the model's own person subnet finds (``keypoint_model`` must then also output
    ``person_logits`` and ``person_boxes``, e.g. the whole MultiPoseNet): each person takes the
    detection of highest IoU with its box if that IoU is at least ``match_iou``, its
    ground-truth box otherwise. The PRN then sees crops shifted and scaled as at inference.

    ``out``: a folder where the pairs go as float16 ``.npy`` files, written batch by batch and
    returned memory-mapped, so memory stays at one batch whatever the dataset's size (the
    quickstart's 4000 images make about 1.6 GB of float32 pairs); a folder that already holds a
    finished set is reused (a resumed run does not compute them again). ``shard``:
    ``(workers, index)``: this worker computes the pairs of its share of the images only.
    """
    from kerapose.layers import Letterbox

    if boxes not in PRN_PAIR_BOXES:
        raise ValueError(f"boxes: expected one of {', '.join(PRN_PAIR_BOXES)}, got {boxes!r}")
    if out is not None and os.path.isfile(os.path.join(out, "count.json")):
        return _open_pairs(out)
    k = codec.num_channels
    letterbox = Letterbox(tuple(input_size))
    box_codec = BoxCodec() if boxes == "detections" else None
    records = [rec for rec in coco if len(rec.keypoints)]
    if shard is not None:
        records = records[int(shard[1])::int(shard[0])]
    sink = _PairSink(out, sum(len(codec.pair_persons(r)) for r in records), (*codec.input_hw, k))
    xs, ys = sink.xs, sink.ys
    pending: list[tuple] = []  # (record, network image, scale) waiting for a batch
    bar = None
    if progress:
        import keras

        bar = keras.utils.Progbar(len(records), unit_name="image")

    def flush():
        out = keypoint_model(np.stack([p[1] for p in pending]), training=False)
        if box_codec is not None and not {"person_logits", "person_boxes"} <= set(out):
            raise ValueError(f"boxes='detections' needs a model with person_logits and person_boxes outputs, "
                             f"got outputs {sorted(out)}")
        heat = np.asarray(out["heatmaps"], np.float32)[..., :k]
        if box_codec is not None:  # one conversion per batch, not per image
            logits, deltas = np.asarray(out["person_logits"]), np.asarray(out["person_boxes"])
        crop_boxes, index = [], []
        for i, (rec, _, scale) in enumerate(pending):
            if box_codec is not None:
                found, _ = box_codec.decode(logits[i], deltas[i], tuple(input_size))
                rec = _matched_boxes(rec, found / scale, match_iou)
            target, persons = codec.training_targets(rec)
            ys.append(target)
            crop_boxes.append(np.asarray(rec.boxes, np.float64)[persons] * scale)
            index.append(np.full(len(persons), i, np.int32))
        xs.append(codec.crop(heat, np.concatenate(crop_boxes), stride, image_index=np.concatenate(index)))
        sink.flush()
        pending.clear()

    for n, rec in enumerate(records):
        if len(codec.pair_persons(rec)):
            try:
                image = read_image(rec.path)
            except ValueError:
                if skips is not None:
                    skips.add("unreadable image", rec.path)
                continue
            resized, scale = letterbox(image[None])
            pending.append((rec, np.asarray(resized)[0], float(np.asarray(scale)[0])))
            if len(pending) == batch_size:
                flush()
        if bar is not None:
            bar.update(n + 1)
    if pending:
        flush()
    if not sink.count:
        raise ValueError(f"{coco.ann_file}: no readable images with annotated persons to build PRN pairs from")
    return sink.close()


class _PairSink:
    """Where :func:`network_prn_pairs` puts its pairs: lists joined at the end, or (``out``)
    float16 ``.npy`` files pre-sized to ``capacity`` pairs, filled batch by batch and finished by
    an atomic ``count.json`` (the pairs written; unreadable images leave the rest unused)."""

    def __init__(self, out: str | None, capacity: int, shape: tuple[int, ...]):
        self.out, self.count = out, 0
        self.xs: list[np.ndarray] = []
        self.ys: list[np.ndarray] = []
        if out is not None:
            os.makedirs(out, exist_ok=True)
            self.files = [np.lib.format.open_memmap(os.path.join(out, f"{name}.npy"), mode="w+", dtype=np.float16,
                                                    shape=(max(1, capacity), *shape)) for name in ("x", "y")]

    def flush(self) -> None:
        if self.out is None:
            self.count = sum(len(y) for y in self.ys)
            return
        for f, parts in zip(self.files, (self.xs, self.ys)):
            block = np.concatenate(parts)
            f[self.count:self.count + len(block)] = block
            parts.clear()
        self.count += len(block)

    def close(self) -> tuple[np.ndarray, np.ndarray]:
        if self.out is None:
            return np.concatenate(self.xs), np.concatenate(self.ys)
        for f in self.files:
            f.flush()
        self.files.clear()
        with open(os.path.join(self.out, "count.json.tmp"), "w") as fh:
            json.dump({"pairs": self.count}, fh)
        os.replace(os.path.join(self.out, "count.json.tmp"), os.path.join(self.out, "count.json"))
        return _open_pairs(self.out)


def _open_pairs(folder: str) -> tuple[np.ndarray, np.ndarray]:
    """The finished pairs of a :class:`_PairSink` folder, memory-mapped read-only."""
    with open(os.path.join(folder, "count.json")) as fh:
        n = int(json.load(fh)["pairs"])
    x, y = (np.load(os.path.join(folder, f"{name}.npy"), mmap_mode="r")[:n] for name in ("x", "y"))
    return x, y
