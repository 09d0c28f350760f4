"""Codec timings: heatmap encode / peak decode (numpy, graph, TFLite), PRN crops, segmentation.

Scenes: N = 1, 5, 10, 20 random people (all 17 keypoints labelled) in a 480x640 image,
heatmaps at stride 4 ([120, 160, 17], sigma 2 cells). Timed, each the median of ``--runs``
calls after 3 warm-up calls:

- ``encode_ms``: ``HeatmapCodec.encode``;
- ``peaks_np_ms``: ``HeatmapCodec.decode_peaks`` (numpy);
- ``peaks_tf_ms``: ``decode_peaks_tf`` (top_k 30) in a ``tf.function``, batch 1;
- ``peaks_tflite_ms``: the same graph converted to TFLite builtins, LiteRT interpreter;
- ``crop_gather_ms`` / ``crop_tf_image_ms``: N person crops to 56x36x17 with
  :func:`kerapose.ops.crop_and_resize_bilinear` vs ``tf.image.crop_and_resize`` (tf.function);
- ``prn_pairs_ms``: ``PRNCodec.training_pairs`` (numpy) for the N people;
- ``max_baseline_ms``: ``PRNCodec.max_baseline`` (numpy wrapper: crop + argmax decode).

Plus ``segmentation_ms``: ``SegmentationCodec(4).encode`` per coco-mini val image (mean over
the images with people), when the shared data is found.

Usage: ``python benchmarks/bench_codecs.py [--runs 20] [--out benchmarks/results/codecs.json]``
"""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

from _timing import median_ms as _median_ms, write_json  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from kerapose.codecs.heatmap import HeatmapCodec
from kerapose.codecs.prn import PRNCodec
from kerapose.codecs.segmentation import SegmentationCodec
from kerapose.data.coco import ImageRecord
from kerapose.ops import crop_and_resize_bilinear

IMAGE_HW = (480, 640)
STRIDE = 4


def random_people(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``[n, 17, 3]`` keypoints scattered in n random person boxes, and the boxes."""
    rng = np.random.default_rng(seed)
    h, w = IMAGE_HW
    bh = rng.uniform(80, 300, n)
    bw = bh * rng.uniform(0.3, 0.6, n)
    x1 = rng.uniform(0, w - bw)
    y1 = rng.uniform(0, h - bh)
    boxes = np.stack([x1, y1, x1 + bw, y1 + bh], -1)
    kp = np.zeros((n, 17, 3))
    kp[..., 0] = x1[:, None] + rng.uniform(0, 1, (n, 17)) * bw[:, None]
    kp[..., 1] = y1[:, None] + rng.uniform(0, 1, (n, 17)) * bh[:, None]
    kp[..., 2] = 2
    return kp, boxes


def _tflite_runner(fn, example):
    from ai_edge_litert.interpreter import Interpreter

    conv = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], fn)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    interp = Interpreter(model_content=conv.convert(), num_threads=2)
    interp.allocate_tensors()
    index = interp.get_input_details()[0]["index"]

    def run():
        interp.set_tensor(index, example)
        interp.invoke()
        return [interp.get_tensor(d["index"]) for d in interp.get_output_details()]

    return run


def _find_coco_mini() -> Path | None:
    env = os.environ.get("KERAPOSE_SHARED")
    cands = [Path(env)] if env else [p / "shared" for p in Path(__file__).resolve().parents]
    for c in cands:
        if (c / "data" / "coco-mini").is_dir():
            return c / "data" / "coco-mini"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "codecs.json"))
    args = parser.parse_args()
    if args.runs < 5:
        parser.error("--runs must be >= 5")

    hc = HeatmapCodec("coco17", stride=STRIDE, sigma=2.0, max_peaks=30)
    prn = PRNCodec()
    hh, ww = hc.output_size(IMAGE_HW)
    spec = tf.TensorSpec([1, hh, ww, 17], tf.float32)

    @tf.function(input_signature=[spec])
    def peaks_graph(x):
        return hc.decode_peaks_tf(x, top_k=30)

    peaks_lite = None
    rows = []
    for n in (1, 5, 10, 20):
        kp, boxes = random_people(n, seed=n)
        heat = hc.encode(kp, IMAGE_HW)
        batch = heat[None]
        if peaks_lite is None:
            peaks_lite = _tflite_runner(peaks_graph, batch)
        norm = tf.constant(prn.crop_boxes(boxes, (hh, ww), STRIDE))
        idx = tf.zeros([n], tf.int32)
        heat_t = tf.constant(batch)

        @tf.function
        def crop_gather(h, b, i):
            return crop_and_resize_bilinear(h, b, i, prn.input_hw)

        @tf.function
        def crop_builtin(h, b, i):
            return tf.image.crop_and_resize(h, b, i, prn.input_hw)

        record = ImageRecord(
            image_id=0, file_name="", path="", height=IMAGE_HW[0], width=IMAGE_HW[1],
            keypoints=kp.astype(np.float32), boxes=boxes.astype(np.float32), iscrowd=np.zeros(n, bool),
            areas=((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).astype(np.float32),
            ann_ids=np.arange(n), segmentations=[None] * n,
        )
        rows.append({
            "people": n,
            "encode_ms": _median_ms(lambda: hc.encode(kp, IMAGE_HW), args.runs),
            "peaks_np_ms": _median_ms(lambda: hc.decode_peaks(heat), args.runs),
            "peaks_tf_ms": _median_ms(lambda: peaks_graph(heat_t), args.runs),
            "peaks_tflite_ms": _median_ms(peaks_lite, args.runs),
            "crop_gather_ms": _median_ms(lambda: crop_gather(heat_t, norm, idx), args.runs),
            "crop_tf_image_ms": _median_ms(lambda: crop_builtin(heat_t, norm, idx), args.runs),
            "prn_pairs_ms": _median_ms(lambda: prn.training_pairs(record), args.runs),
            "max_baseline_ms": _median_ms(lambda: prn.max_baseline(heat, boxes, STRIDE), args.runs),
        })

    seg = None
    root = _find_coco_mini()
    if root is not None:
        from kerapose.data.coco import CocoKeypoints

        records = [r for r in CocoKeypoints(str(root), "val2017") if len(r.boxes)]
        sc = SegmentationCodec(STRIDE)
        seg = float(np.mean([_median_ms(lambda r=r: sc.encode(r), max(3, args.runs // 4)) for r in records]))

    cols = list(rows[0])
    print(" | ".join(f"{c:>16}" for c in cols))
    for r in rows:
        print(" | ".join(f"{r[c]:>16.3f}" if isinstance(r[c], float) else f"{r[c]:>16}" for c in cols))
    if seg is not None:
        print(f"segmentation encode (coco-mini val, stride {STRIDE}): {seg:.2f} ms / image")

    out = {
        "benchmark": "codecs",
        "image_hw": IMAGE_HW,
        "stride": STRIDE,
        "heatmap_hw": [hh, ww],
        "prn_input_hw": list(prn.input_hw),
        "runs": args.runs,
        "statistic": "median",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "tensorflow": tf.__version__},
        "rows": rows,
        "segmentation_ms_per_image": seg,
    }
    write_json(args.out, out)


if __name__ == "__main__":
    main()
