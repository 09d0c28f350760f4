"""MultiPoseNet inference latency on CPU: raw network vs end to end, per export format, and the PRN.

One process, one run: every row is measured in the same run, so the ratios between rows hold
even on a shared machine (its load average goes into the JSON). The model is a random-weight
MultiPoseNet (seeded; latency does not depend on the weights except through the number of
people the end-to-end decoder keeps, reported as ``people``). Inputs are the coco-mini val2017
images, letterboxed to each size, one image per call (batch 1), cycling over the images.

Rows, per input size (each: median and p90 of ``--runs`` timed calls after 2 warm-up calls,
outputs fetched to numpy inside the timed call; a runtime's network and e2e rows are timed in
turns, call by call, so a change of load from other processes hits both and their ratio holds):

- network alone: Keras ``predict_on_batch``, Keras model in a ``tf.function``, the SavedModel
  ``serving_default`` signature, TFLite fp32 / fp16 / int8 (int8 calibrated on 20 real images;
  float32 in and out) with ai-edge-litert, ONNX Runtime (CPU provider);
- end to end (uint8 image in, poses out: letterbox, network, anchor decoding + NMS, RoI crops,
  PRN and its decoding in one graph; fed the already letterboxed image so the network input is
  the same): Keras ``model.end_to_end`` in a ``tf.function``, SavedModel, TFLite fp32, ONNX.
  ``overhead_pct`` = (e2e - network) / network, against the same runtime's network row
  (target < 10 %). TFLite int8 has no e2e row: full-integer quantization of the end-to-end graph
  is refused by the export (the decoder's NMS and pixel coordinates cannot be int8).

Plus the PRN alone (``model.prn`` in a ``tf.function``) on a batch of N crops [N, 56, 36, K],
N = ``--people``: ms per call and per person (paper: 2 ms per person on a GPU).

TF intra/inter-op threads, LiteRT and ONNX Runtime threads are all ``--threads``. Exports go to a
temporary directory. ``--quick``: ResNet-18 at 128x128, 3 runs (a smoke run of the script).

Usage: ``python benchmarks/bench_latency.py [--backbone resnet50] [--sizes 384x576 480x480]
[--runs 10] [--threads 2] [--formats keras savedmodel tflite-fp32 tflite-fp16 tflite-int8 onnx]
[--people 1 5 20] [--images DIR] [--quick] [--out benchmarks/results/latency.json]``
"""

from __future__ import annotations

import argparse
import gc
import glob
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))
DEFAULT_IMAGES = ROOT.parent / "shared" / "data" / "coco-mini" / "val2017"
FORMATS = ("keras", "savedmodel", "tflite-fp32", "tflite-fp16", "tflite-int8", "onnx")
WARMUP = 2
NUM_CALIBRATION = 20
MAX_PEOPLE = 20
SCORE_THRESHOLD = 0.3


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be HxW (e.g. 384x576), got {text!r}") from None
    return h, w


def load_images(folder: Path, size: tuple[int, int]) -> np.ndarray:
    """The folder's images as RGB uint8 [N, H, W, 3], letterboxed to ``size``."""
    import cv2

    from kerapose.export.tflite import letterbox_uint8

    paths = sorted(glob.glob(str(folder / "*.jpg")))
    if not paths:
        raise SystemExit(f"no .jpg images in {folder} (pass --images DIR)")
    out = []
    for p in paths:
        bgr = cv2.imread(p, cv2.IMREAD_COLOR)
        out.append(letterbox_uint8(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), size))
    return np.stack(out)


def to_numpy(out) -> dict:
    """Fetch every output (forces the computation to finish inside the timed call)."""
    if isinstance(out, dict):
        return {k: np.asarray(v) for k, v in out.items()}
    return {"output": np.asarray(out)}


def _stats(times: list, last) -> dict:
    t = np.asarray(times)
    res = {"median_ms": float(np.median(t)), "p90_ms": float(np.percentile(t, 90)),
           "mean_ms": float(t.mean()), "runs": len(times)}
    if last is not None and "num_poses" in last:
        res["people"] = int(np.asarray(last["num_poses"]).reshape(-1)[0])
    return res


def time_interleaved(calls: list, runs: int) -> list[dict]:
    """Median / p90 / mean ms of each ``(fn, inputs)`` over ``runs`` calls cycling over its inputs,
    after WARMUP calls each. The functions take turns call by call, so a change in the machine's
    load during the measurement hits them all alike and their ratios (the e2e overhead) hold."""
    last = [None] * len(calls)
    for i in range(WARMUP):
        for j, (fn, inputs) in enumerate(calls):
            last[j] = fn(inputs[i % len(inputs)])
    times: list[list] = [[] for _ in calls]
    for i in range(runs):
        for j, (fn, inputs) in enumerate(calls):
            x = inputs[i % len(inputs)]
            t0 = time.perf_counter()
            last[j] = fn(x)
            times[j].append((time.perf_counter() - t0) * 1e3)
    return [_stats(t, out) for t, out in zip(times, last)]


def time_calls(fn: Callable[[np.ndarray], dict], inputs: list, runs: int) -> dict:
    """Median / p90 / mean ms of ``runs`` calls cycling over ``inputs``, after WARMUP calls."""
    return time_interleaved([(fn, inputs)], runs)[0]


def bench_size(model, size: tuple[int, int], images: np.ndarray, formats: list, runs: int, threads: int,
               workdir: str, log: Callable[[str], None]) -> list[dict]:
    import tensorflow as tf

    from kerapose.export import formats as export_formats
    from kerapose.export.onnx import OnnxRunner
    from kerapose.export.tflite import TFLiteRunner

    tag = f"{size[0]}x{size[1]}"
    float_inputs = [img[None].astype(np.float32) for img in images]
    uint8_inputs = [img[None] for img in images]
    calib = [img for img in images[:NUM_CALIBRATION]]
    rows: list[dict] = []

    def group(*specs: tuple) -> None:
        """Set up every ``(kind, name, make, inputs, note)`` row, then time those that work
        interleaved (a runtime's network and e2e rows: their ratio is the overhead)."""
        ready = []
        for kind, name, make, inputs, note in specs:
            log(f"[{tag}] {kind:7s} {name} ...")
            row = {"size": tag, "kind": kind, "name": name, "note": note}
            t0 = time.perf_counter()
            try:
                fn = make()
                row["setup_s"] = round(time.perf_counter() - t0, 1)
                ready.append((row, fn, inputs))
            except Exception as e:  # noqa: BLE001  (one failing format must not lose the other rows)
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
                log(f"[{tag}] {kind:7s} {name}: FAILED {row['error']}")
                traceback.print_exc()
            rows.append(row)
        try:
            stats = time_interleaved([(fn, inputs) for _, fn, inputs in ready], runs)
        except Exception as e:  # noqa: BLE001
            for row, _, _ in ready:
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
            log(f"[{tag}] timing FAILED {type(e).__name__}: {e}")
            traceback.print_exc()
            release(ready)
            return
        for (row, _, _), st in zip(ready, stats):
            row.update(st)
            log(f"[{tag}] {row['kind']:7s} {row['name']}: {row['median_ms']:.1f} ms (setup {row['setup_s']} s)")
        release(ready)

    def release(ready: list) -> None:
        """Free the group's runtimes (interpreters, sessions, loaded SavedModels) and their
        export files before the next group: holding every runtime of a size at once was
        OOM-killed at 480x480. The peak RSS so far goes into the group's rows."""
        ready.clear()
        gc.collect()
        for path in os.listdir(workdir):
            target = os.path.join(workdir, path)
            shutil.rmtree(target) if os.path.isdir(target) else os.remove(target)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
        for row in rows:
            row.setdefault("peak_rss_mib", round(peak))

    def export(fmt: str, e2e: bool, quantize: str | None = None, **kw) -> str:
        suffix = export_formats.get_format(fmt).suffix
        out = os.path.join(workdir, f"{tag}-{fmt}-{quantize or 'none'}-{'e2e' if e2e else 'net'}{suffix}")
        return export_formats.export_model(model, fmt, out, quantize=quantize, end_to_end=e2e, input_size=size,
                                           max_people=MAX_PEOPLE, score_threshold=SCORE_THRESHOLD, **kw)

    def tf_graph(keras_model, spec):
        fn = tf.function(lambda x: keras_model(x, training=False), input_signature=[spec])
        return lambda x: to_numpy(fn(tf.constant(x)))

    def savedmodel(e2e: bool):
        loaded = tf.saved_model.load(export("savedmodel", e2e))
        sig = loaded.signatures["serving_default"]
        return lambda x, _keep=loaded: to_numpy(sig(image=tf.constant(x)))

    def tflite(e2e: bool, quantize: str | None, **kw):
        runner = TFLiteRunner(export("tflite", e2e, quantize, **kw), num_threads=threads)
        return lambda x: runner(image=x)

    def onnx(e2e: bool):
        runner = OnnxRunner(export("onnx", e2e), num_threads=threads)
        return lambda x: runner(image=x)

    e2e_note = "uint8 letterboxed image in, poses out"
    if "keras" in formats:
        group(("network", "Keras predict_on_batch", lambda: (lambda x: to_numpy(model.predict_on_batch(x))),
               float_inputs, ""),
              ("network", "Keras tf.function", lambda: tf_graph(model, tf.TensorSpec([1, *size, 3], tf.float32)),
               float_inputs, ""),
              ("e2e", "Keras tf.function",
               lambda: tf_graph(model.end_to_end(size, max_people=MAX_PEOPLE, score_threshold=SCORE_THRESHOLD),
                                tf.TensorSpec([1, None, None, 3], tf.uint8)), uint8_inputs, e2e_note))
    if "savedmodel" in formats:
        group(("network", "SavedModel", lambda: savedmodel(False), float_inputs, ""),
              ("e2e", "SavedModel", lambda: savedmodel(True), uint8_inputs, e2e_note))
    if "tflite-fp32" in formats:
        group(("network", "TFLite fp32", lambda: tflite(False, None), float_inputs, ""),
              ("e2e", "TFLite fp32", lambda: tflite(True, None), uint8_inputs, e2e_note))
    if "tflite-fp16" in formats:
        group(("network", "TFLite fp16", lambda: tflite(False, "fp16"), float_inputs,
               "fp16 weights, dequantized to fp32 on CPU"))
    if "tflite-int8" in formats:
        group(("network", "TFLite int8", lambda: tflite(False, "int8", calibration_images=calib), float_inputs,
               f"calibrated on {len(calib)} real images, float32 in/out"))
        # Not timed: the export refuses it. Record its own reason.
        try:
            export_formats.get_format("tflite").check_end_to_end("int8")
            reason = "export accepted it (unexpected)"
        except ValueError as e:
            reason = str(e).split(";")[0]
        rows.append({"size": tag, "kind": "e2e", "name": "TFLite int8", "note": "not supported",
                     "error": f"not supported: {reason}"})
    if "onnx" in formats:
        group(("network", "ONNX Runtime", lambda: onnx(False), float_inputs, ""),
              ("e2e", "ONNX Runtime", lambda: onnx(True), uint8_inputs, e2e_note))

    # e2e overhead against the same runtime's network row
    base_of = {"Keras tf.function": "Keras tf.function", "SavedModel": "SavedModel", "TFLite fp32": "TFLite fp32",
               "ONNX Runtime": "ONNX Runtime"}
    net = {r["name"]: r for r in rows if r["kind"] == "network" and "median_ms" in r}
    for r in rows:
        base = net.get(base_of.get(r["name"], ""))
        if r["kind"] == "e2e" and "median_ms" in r and base:
            r["overhead_pct"] = 100.0 * (r["median_ms"] - base["median_ms"]) / base["median_ms"]
    return rows


def bench_prn(model, people: list, runs: int) -> list[dict]:
    import tensorflow as tf

    from kerapose.heads.prn import PRN_INPUT_HW

    k = model.num_keypoints
    fn = tf.function(lambda x: model.prn(x, training=False))
    rng = np.random.default_rng(0)
    rows = []
    for n in people:
        # softmax-like positive crops, as the decoder gives it (values do not change the time)
        crops = [rng.random((n, *PRN_INPUT_HW, k), dtype=np.float32) for _ in range(3)]
        res = time_calls(lambda x: to_numpy(fn(tf.constant(x))), crops, runs)
        res.update({"people": n, "per_person_ms": res["median_ms"] / n})
        rows.append(res)
    return rows


def markdown(rows: list[dict], prn: list[dict]) -> str:
    lines = ["| size | kind | runtime | median ms | p90 ms | e2e overhead | people | note |",
             "|---|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        if "median_ms" in r:
            ov = f"{r['overhead_pct']:+.1f} %" if "overhead_pct" in r else ""
            lines.append(f"| {r['size']} | {r['kind']} | {r['name']} | {r['median_ms']:.1f} | {r['p90_ms']:.1f} | "
                         f"{ov} | {r.get('people', '')} | {r['note']} |")
        else:
            lines.append(f"| {r['size']} | {r['kind']} | {r['name']} | - | - | | | {r['error']} |")
    lines += ["", "| PRN batch (people) | ms per call (median) | p90 ms | ms per person |", "|---:|---:|---:|---:|"]
    for p in prn:
        lines.append(f"| {p['people']} | {p['median_ms']:.2f} | {p['p90_ms']:.2f} | {p['per_person_ms']:.2f} |")
    return "\n".join(lines)


def main(argv: list | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="resnet50", choices=("resnet18", "resnet50", "resnet101"))
    ap.add_argument("--sizes", nargs="+", type=parse_size, default=[(384, 576), (480, 480)])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    ap.add_argument("--people", nargs="+", type=int, default=[1, 5, 20])
    ap.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    ap.add_argument("--quick", action="store_true", help="resnet18, 128x128, 3 runs: a smoke run")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "latency.json")
    args = ap.parse_args(argv)
    if args.quick:
        args.backbone, args.sizes, args.runs = "resnet18", [(128, 128)], 3
    if args.runs < 1 or args.threads < 1 or min(args.people) < 1:
        ap.error("--runs, --threads and --people must be positive")

    import tensorflow as tf

    # before any op runs: afterwards TF refuses to change them
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    import keras
    import onnxruntime

    from kerapose.models.multiposenet.network import MultiPoseNet

    def log(msg: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)

    keras.utils.set_random_seed(0)
    model = MultiPoseNet(backbone=args.backbone)
    log(f"MultiPoseNet {args.backbone}: {model.count_params() / 1e6:.1f} M params (+ PRN "
        f"{model.prn.count_params() / 1e6:.1f} M)")
    load_start = os.getloadavg()

    def write(rows: list[dict], prn: list[dict], complete: bool) -> str:
        table = markdown(rows, prn)
        result = {
            "benchmark": "latency",
            "complete": complete,  # False: a partial write after some sizes (the run went on)
            "model": {"name": "MultiPoseNet", "backbone": args.backbone, "fpn_size": model.fpn_size,
                      "params_m": model.count_params() / 1e6, "prn_params_m": model.prn.count_params() / 1e6,
                      "weights": "random (seed 0)"},
            "settings": {"sizes": [f"{h}x{w}" for h, w in args.sizes], "runs": args.runs, "warmup": WARMUP,
                         "threads": args.threads, "batch": 1, "images": str(args.images),
                         "num_images": int(len(glob.glob(str(args.images / "*.jpg")))),
                         "max_people": MAX_PEOPLE, "score_threshold": SCORE_THRESHOLD,
                         "int8_calibration_images": NUM_CALIBRATION, "quick": args.quick},
            "machine": {"cpu_count": os.cpu_count(), "load_avg_start": list(load_start),
                        "load_avg_end": list(os.getloadavg()), "platform": platform.platform(),
                        "processor": platform.processor(), "python": platform.python_version(),
                        "tensorflow": tf.__version__, "keras": keras.__version__,
                        "onnxruntime": onnxruntime.__version__, "numpy": np.__version__},
            "rows": rows,
            "prn": prn,
            "table_markdown": table,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        return table

    rows: list[dict] = []
    # the PRN first (seconds), then each size, writing the JSON after each: a cut-off run keeps its rows
    prn = bench_prn(model, args.people, max(args.runs, 10))
    with tempfile.TemporaryDirectory(prefix="kerapose-latency-") as workdir:
        for size in args.sizes:
            images = load_images(args.images, size)
            rows += bench_size(model, size, images, args.formats, args.runs, args.threads, workdir, log)
            write(rows, prn, complete=False)
    print(write(rows, prn, complete=True))
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
