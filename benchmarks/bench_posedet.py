"""PoseDet beside MultiPoseNet and the PAF family on this CPU, and PoseDet's light TFLite exports
beside MoveNet MultiPose Lightning.

1. Keras (``tf.function``), batch 1, one input size (``--size``, default 512x512, a multiple of
   every family's size multiple): ``network`` is the model on a float image already at that
   size; ``end to end`` is ``model.end_to_end(size)`` on a real coco-mini val image (uint8,
   640x426: letterbox, network, decoding). Models: PoseDet-R50 and MultiPoseNet-R50 (the same
   ResNet-50 backbone), FTN (the PAF family: VGG-19 front end, the backbone its paper uses).
   Random weights: the networks' work does not depend on them, the decoders' does, so PoseDet and
   MultiPoseNet decode with score threshold 0 (20 people each: PoseDet's OKS-NMS over its top 100
   candidates, MultiPoseNet's PRN on 20 boxes) and FTN with its defaults (grouping its peaks).
2. LiteRT (ai-edge-litert), ``--threads`` threads (default 2), in this same process: PoseDet's
   light setting (``posedet-mnv2``) exported end to end (uint8 image in, people out) as fp32,
   fp16 and dynamic-range int8 at 256x256 and 256x384 (its raw network's full-int8 conversion
   writes a file that aborts the process in LiteRT's first invoke, so it is not timed), beside MoveNet MultiPose
   Lightning's LiteRT files at the same sizes (``shared/peers/movenet-multipose-lightning``; its
   input is int32 [1, H, W, 3]). Both get the same frame: a coco-mini val image letterboxed to the
   input size, so neither pays for a resize the other skips.

3. With ``--trained MODEL.keras`` (e.g. the overfit recipe's ``model.keras``) and ``--ids``: the
   accuracy each export keeps, end to end on those coco-mini train images (pycocotools AP):
   Keras, TFLite fp32 / fp16 / dynamic / int8 end to end, and full int8 of the raw network through
   LiteRT followed by the same letterbox and in-graph decoder in TensorFlow.

Every time is the median of ``--runs`` rounds after warm-up calls (``benchmarks/_timing.py``); in
each round every row of a table runs once, in turn, so a change of load on the shared 2-core machine
reaches all rows alike. The load average before and after goes into the JSON; the ratio to
MoveNet is the figure to quote.

Usage: ``python benchmarks/bench_posedet.py [--runs 5] [--size 512 512] [--threads 2]
[--no-keras] [--no-tflite] [--out benchmarks/results/posedet.json]``
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2
import keras
import numpy as np
import tensorflow as tf

from _peers import MoveNet, find_shared  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from _timing import interleaved_ms, write_json  # noqa: E402
from kerapose.info import model_info
from kerapose.models.registry import build_model

KERAS_MODELS = ("posedet-r50", "multiposenet-r50", "ftn")
TFLITE_SIZES = ((256, 256), (256, 384))
LIGHT = "posedet-mnv2"
IMAGES = "data/coco-mini/val2017"


def keras_callables(name: str, size: tuple[int, int], image: np.ndarray) -> tuple[dict, dict]:
    """The network and end-to-end calls of a built-in model, and its size figures."""
    keras.utils.set_random_seed(0)
    model = build_model(name, input_shape=(*size, 3))
    info = model_info(model, input_hw=size)
    x = tf.constant(np.random.default_rng(0).uniform(0, 255, (1, *size, 3)).astype(np.float32))
    net = tf.function(lambda t: model(t, training=False))
    # score threshold 0 where the decoder has one: a random network's people all score near its
    # prior, so each decoder works on max_people people, as it would on a crowded image
    threshold = {} if name in ("ftn", "mln", "paf-baseline") else {"score_threshold": 0.0}
    e2e_model = model.end_to_end(size, max_people=20, **threshold)
    e2e = tf.function(lambda t: e2e_model(t, training=False),
                      input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8)])
    u8 = tf.constant(image[None])
    people = int(e2e(u8)["num_poses"][0])
    return ({f"{name} network": lambda: net(x), f"{name} end to end": lambda: e2e(u8)},
            {"params": info["params"], "gmacs": info["macs"] / 1e9, "people": people})


def bench_keras(names, size: tuple[int, int], image: np.ndarray, runs: int) -> dict:
    fns, rows = {}, {}
    for name in names:
        calls, rows[name] = keras_callables(name, size, image)
        fns.update(calls)
    times = interleaved_ms(fns, runs)
    for name, r in rows.items():
        r["network_ms"] = times[f"{name} network"]
        r["end_to_end_ms"] = times[f"{name} end to end"]
    return rows


def bench_tflite(size: tuple[int, int], frame: np.ndarray, runs: int, threads: int, workdir: str) -> dict:
    from kerapose.export import TFLiteRunner, export_model

    keras.utils.set_random_seed(0)
    model = build_model(LIGHT, input_shape=(*size, 3))
    tag = f"{size[0]}x{size[1]}"
    sm = export_model(model, "savedmodel", os.path.join(workdir, f"e2e_{tag}"), end_to_end=True, input_size=size)
    fns, sizes = {}, {}
    for quantize in ("none", "fp16", "dynamic"):  # dynamic is checked against float32 on real images
        path = export_model(sm, "tflite", os.path.join(workdir, f"e2e_{tag}_{quantize}.tflite"), quantize=quantize,
                            calibration_images=[frame] if quantize == "dynamic" else None)
        runner = TFLiteRunner(path, num_threads=threads)
        label = f"end to end {'fp32' if quantize == 'none' else quantize}"
        fns[label] = lambda runner=runner: runner(image=frame[None])
        sizes[label] = os.path.getsize(path)
    movenet = MoveNet(size, threads)
    frame_i32 = frame[None].astype(np.int32)
    fns["MoveNet MultiPose Lightning"] = lambda: movenet.invoke(frame_i32)
    sizes["MoveNet MultiPose Lightning"] = os.path.getsize(movenet.path)
    times = interleaved_ms(fns, runs, warmup=3)
    base = times["MoveNet MultiPose Lightning"]
    return {label: {"ms": ms, "vs_movenet": ms / base, "bytes": sizes[label]} for label, ms in times.items()}


def export_accuracy(path: str, ids: list[int], size: tuple[int, int] | None, workdir: str) -> dict:
    """AP on coco-mini train images ``ids`` of a trained PoseDet and of its exports (see the docstring)."""
    from kerapose.data.coco import CocoKeypoints
    from kerapose.export import TFLiteRunner, export_model
    from kerapose.layers import Letterbox
    from kerapose.models.posedet.decoder import PoseDetDecoder
    from kerapose.predict import PosePredictor
    from kerapose.training.scoring import evaluate_predictions

    model = keras.saving.load_model(path)
    size = tuple(size or model.input_shape_config[:2])
    if None in size:
        raise SystemExit("--trained: give --trained-size H W for a model built without a fixed input size")
    ds = CocoKeypoints(str(find_shared("data/coco-mini")), "train2017")
    settings = {"max_people": 10, "score_threshold": 0.05}
    sm = export_model(model, "savedmodel", os.path.join(workdir, "trained_sm"), end_to_end=True, input_size=size,
                      **settings)
    predictors = {"keras": PosePredictor.load(path, input_size=size, **settings)}
    # the images it is scored on plus 16 others: a memorising network's deployment images are its
    # training images, and calibrated on the 16 others alone (activations it never produced on
    # them) its int8 end-to-end AP was 0.356, against 0.933 with these
    calibration = [ds.record(i).path for i in ids] + [ds.record(i).path for i in ds.image_ids if i not in ids][:16]
    for quantize in ("none", "fp16", "dynamic"):
        lite = export_model(sm, "tflite", os.path.join(workdir, f"trained_{quantize}.tflite"), quantize=quantize,
                            calibration_images=calibration if quantize == "dynamic" else None)
        predictors[f"tflite {'fp32' if quantize == 'none' else quantize} end to end"] = PosePredictor.load(
            lite, score_threshold=settings["score_threshold"])
    # int8 end to end quantizes from the Keras graph (its layers say what stays float32)
    lite = export_model(model, "tflite", os.path.join(workdir, "trained_int8_e2e.tflite"), quantize="int8",
                        end_to_end=True, input_size=size, calibration_images=calibration, **settings)
    predictors["tflite int8 end to end"] = PosePredictor.load(lite, score_threshold=settings["score_threshold"])
    raw = TFLiteRunner(export_model(model, "tflite", os.path.join(workdir, "trained_int8.tflite"), quantize="int8",
                                    input_size=size, calibration_images=calibration))
    box = Letterbox(size)
    decoder = PoseDetDecoder(model.keypoint_set.name, **settings)

    def int8(image: np.ndarray) -> dict:
        frame, scale = box(tf.constant(image[None]))
        out = raw(image=frame.numpy())
        people = decoder(tf.constant(out["poses"]), tf.constant(out["logits"]), scale, tf.constant(image.shape[:2]))
        n = int(people["num_poses"][0])
        return {k: np.asarray(people[k])[0, :n] for k in ("keypoints", "scores", "boxes")}

    predictors["tflite int8 network + decoder"] = int8
    out = {}
    for name, predict in predictors.items():
        m = evaluate_predictions(predict, ds, model.keypoint_set, image_ids=ids, progress=False, per_keypoint=False)
        out[name] = {"AP": m["AP"], "AP50": m["AP50"], "AR": m["AR"], "people": m["people"]}
        print("accuracy", name, {k: round(v, 3) if isinstance(v, float) else v for k, v in out[name].items()},
              flush=True)
    return out


def letterbox(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from kerapose.export.tflite import letterbox_uint8

    return letterbox_uint8(image, size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--size", type=int, nargs=2, default=(512, 512), metavar=("H", "W"))
    parser.add_argument("--threads", type=int, default=2, help="LiteRT threads (MoveNet and PoseDet alike)")
    parser.add_argument("--models", nargs="+", default=list(KERAS_MODELS), help="built-in names for part 1")
    parser.add_argument("--no-keras", action="store_true")
    parser.add_argument("--no-tflite", action="store_true")
    parser.add_argument("--trained", help="a trained PoseDet .keras file: AP of each export (part 3)")
    parser.add_argument("--trained-size", type=int, nargs=2, metavar=("H", "W"),
                        help="its input size (default: the model's fixed one)")
    parser.add_argument("--ids", type=int, nargs="+", default=[790, 30752, 37666, 183872, 234748, 442450],
                        help="coco-mini train image ids to score it on (default: the overfit recipe's)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "posedet.json"))
    args = parser.parse_args()
    if args.runs < 3:
        parser.error("--runs must be >= 3")
    size = tuple(args.size)
    load_before = os.getloadavg()
    folder = find_shared(IMAGES)
    names = sorted(n for n in os.listdir(folder) if n.endswith(".jpg"))
    images = [cv2.cvtColor(cv2.imread(str(folder / n)), cv2.COLOR_BGR2RGB) for n in names[:1]]

    keras_rows = {}
    if not args.no_keras:
        keras_rows = bench_keras(args.models, size, images[0], args.runs)
        for name, r in keras_rows.items():
            print(name, {k: round(v, 1) if isinstance(v, float) else v for k, v in r.items()}, flush=True)
    tflite = {}
    if not args.no_tflite:
        with tempfile.TemporaryDirectory(prefix="bench-posedet-") as tmp:
            for hw in TFLITE_SIZES:
                tflite[f"{hw[0]}x{hw[1]}"] = bench_tflite(hw, letterbox(images[0], hw), args.runs, args.threads, tmp)
    accuracy = {}
    if args.trained:
        with tempfile.TemporaryDirectory(prefix="bench-posedet-acc-") as tmp:
            accuracy = export_accuracy(args.trained, args.ids, tuple(args.trained_size or ()) or None, tmp)
    load_after = os.getloadavg()

    print(f"\nbatch 1, median of {args.runs} runs; {os.cpu_count()} CPUs, load average {load_before[0]:.2f} -> "
          f"{load_after[0]:.2f}")
    if keras_rows:
        print(f"\n| Keras, {size[0]}x{size[1]} | params | GMACs | network ms | end to end ms | people decoded |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, r in keras_rows.items():
            print(f"| {name} | {r['params'] / 1e6:.1f} M | {r['gmacs']:.1f} | {r['network_ms']:.0f} | "
                  f"{r['end_to_end_ms']:.0f} | {r['people']} |")
    if tflite:
        print(f"\n| LiteRT, {args.threads} threads | " + " | ".join(f"{s} ms (x MoveNet)" for s in tflite) + " |")
        print("|---|" + "---:|" * len(tflite))
        for row in next(iter(tflite.values())):
            label = row if row.startswith("MoveNet") else f"{LIGHT} {row}"
            print(f"| {label} | " + " | ".join(f"{t[row]['ms']:.1f} (x{t[row]['vs_movenet']:.2f})"
                                                for t in tflite.values()) + " |")
    if accuracy:
        print(f"\n| {os.path.basename(args.trained)} on coco-mini train {args.ids} | AP | AP50 | AR | people |")
        print("|---|---:|---:|---:|---:|")
        for name, r in accuracy.items():
            print(f"| {name} | {r['AP']:.3f} | {r['AP50']:.3f} | {r['AR']:.3f} | {r['people']} |")
    result = {
        "benchmark": "posedet",
        "image": names[0],
        "runs": args.runs,
        "statistic": "median of runs after warm-up, batch 1, the rows of a table taking turns in each round",
        "keras_input_size": list(size),
        "keras": keras_rows,
        "tflite_model": LIGHT,
        "tflite_threads": args.threads,
        "tflite": tflite,
        "export_accuracy": {"model": args.trained, "image_ids": args.ids, "results": accuracy} if accuracy else None,
        "machine": {"python": platform.python_version(), "node": platform.node(), "cpus": os.cpu_count(),
                    "tensorflow": tf.__version__, "numpy": np.__version__,
                    "load_avg_before": list(load_before), "load_avg_after": list(load_after)},
    }
    write_json(args.out, result)


if __name__ == "__main__":
    main()
