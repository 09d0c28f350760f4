"""Training cost on CPU: the tf.data pipeline's throughput and MultiPoseNet's training step time.

One process, one run; the machine's CPU count and load average (start and end) go into the JSON.

1. Data pipeline (``kerapose.data.pipeline.keypoint_dataset``) on the coco-mini train2017 images
   (36 images, 172 person annotations, cycled), 480x480 person-centric crops with the paper's
   augmentation (rotation +-40 degrees, scale 0.8-1.2, flips) and *all* MultiPoseNet targets:
   17 heatmaps + person mask + ignore mask at stride 4 for the output and each of the 4
   intermediate outputs, RetinaNet anchor states and box targets over P3-P7. Batch 1,
   ``num_parallel_calls`` 1 and 2: ``samples_per_s`` is the rate at which the model would receive
   samples (``--samples`` after ``--warmup``, prefetch included), ``per_core`` that rate divided
   by the parallel calls. Plus where one sample's time goes (single thread, median over the
   images): JPEG read + decode, augmentation (crop / rotate / scale / flip of image, keypoints,
   boxes, polygons), heatmap + segmentation targets, anchor targets.
2. Training step (``train_on_batch`` on one fixed real batch, so no input time), ResNet-18 and
   ResNet-50 MultiPoseNet (paper sizes: FPN 256, keypoint subnet 128 / 512), 480x480, batch 1
   and 2: the ``keypoints`` stage (backbone + FPN + keypoint subnet, masked L2 on the output and
   the four intermediate outputs, Adam) and the ``persons`` stage (RetinaNet subnet, backbone
   frozen, focal + smooth L1, Adam), as ``kerapose train`` compiles them, in float32 and in the
   ``mixed_precision`` policies of ``--precisions`` (bfloat16 pays on CPUs with AVX512_BF16 / AMX;
   float16 is emulated on CPUs). Median of ``--runs`` steps after ``--warmup`` steps;
   ``first_step_s`` is the first call (graph tracing included).

TensorFlow uses its default thread pools (all cores). Random (seeded) weights: the step time
does not depend on them.

Usage: ``python benchmarks/bench_training.py [--backbones resnet18 resnet50] [--batches 1 2]
[--precisions float32 bfloat16]
[--runs 5] [--warmup 2] [--samples 60] [--data-root ../shared/data/coco-mini]
[--out benchmarks/results/training.json]``
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from _timing import median_ms, write_json  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from kerapose.data.augment import AugmentConfig, augment  # noqa: E402
from kerapose.data.coco import CocoKeypoints  # noqa: E402
from kerapose.data.pipeline import MultiPoseNetTargets, keypoint_dataset, read_image  # noqa: E402

SIZE = (480, 480)


def find_coco_mini() -> Path | None:
    env = os.environ.get("KERAPOSE_SHARED")
    cands = [Path(env)] if env else [p / "shared" for p in ROOT.parents] + [ROOT / "shared"]
    for c in cands:
        if (c / "data" / "coco-mini").is_dir():
            return c / "data" / "coco-mini"
    return None


def pipeline_rate(train: CocoKeypoints, parallel: int, samples: int, warmup: int) -> dict:
    """Samples per second out of the full-target pipeline with ``parallel`` map calls."""
    ds = keypoint_dataset(train, MultiPoseNetTargets("coco17", SIZE), AugmentConfig(output_size=SIZE),
                          batch_size=1, seed=0, num_parallel_calls=parallel)
    it = iter(ds)
    for _ in range(warmup):
        next(it)
    t0 = time.perf_counter()
    for _ in range(samples):
        next(it)
    rate = samples / (time.perf_counter() - t0)
    return {"num_parallel_calls": parallel, "samples": samples, "samples_per_s": rate, "per_core": rate / parallel}


def pipeline_breakdown(train: CocoKeypoints) -> dict:
    """Median ms per sample of each part of the map function, one thread, over the images."""
    heat = MultiPoseNetTargets("coco17", SIZE, person_targets=False)
    person = MultiPoseNetTargets("coco17", SIZE, heatmap_targets=False)
    cfg = AugmentConfig(output_size=SIZE)
    parts: dict[str, list[float]] = {"read_ms": [], "augment_ms": [], "heatmap_seg_targets_ms": [],
                                      "anchor_targets_ms": []}
    rng = np.random.default_rng(0)
    for rec in train:
        t0 = time.perf_counter()
        img = read_image(rec.path)
        t1 = time.perf_counter()
        crop = augment(rec, img, cfg, rng, heat.keypoint_set)
        t2 = time.perf_counter()
        heat.encode(crop)
        t3 = time.perf_counter()
        person.encode(crop)
        t4 = time.perf_counter()
        for key, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            parts[key].append(dt * 1e3)
    out = {k: float(np.median(v)) for k, v in parts.items()}
    out["total_ms"] = float(sum(out.values()))
    out["images"] = len(parts["read_ms"])
    return out


def real_batch(train: CocoKeypoints, targets: MultiPoseNetTargets, batch: int):
    ds = keypoint_dataset(train, targets, AugmentConfig(output_size=SIZE), batch_size=batch, seed=1)
    x, y = next(iter(ds))
    return x, y


def step_times(backbone: str, train: CocoKeypoints, batches: list[int], runs: int, warmup: int,
               precision: str = "float32") -> list[dict]:
    """Median train step of both stages for each batch size, one model per backbone and precision."""
    from kerapose.losses import MaskedL2, RetinaFocalLoss, RetinaSmoothL1
    from kerapose.models import MultiPoseNet
    from kerapose.train import precision_policy

    keras.utils.set_random_seed(0)
    keras.mixed_precision.set_global_policy(precision_policy(precision) or "float32")
    model = MultiPoseNet(backbone, input_shape=(*SIZE, 3), backbone_weights=None)
    rows = []
    for stage in ("keypoints", "persons"):
        person = stage == "persons"
        model.freeze_backbone(person)
        targets = MultiPoseNetTargets("coco17", SIZE, person_targets=person, heatmap_targets=not person)
        sub = model.person_model if person else model.keypoint_model
        losses = ({"person_logits": RetinaFocalLoss(), "person_boxes": RetinaSmoothL1()} if person
                  else {k: MaskedL2() for k in targets.output_shapes})
        sub.compile(optimizer=keras.optimizers.Adam(1e-4), loss=losses, jit_compile=False)
        trainable = int(sum(np.prod(v.shape) for v in sub.trainable_weights))
        for batch in batches:
            x, y = real_batch(train, targets, batch)
            t0 = time.perf_counter()
            sub.train_on_batch(x, y)
            first = time.perf_counter() - t0
            ms = median_ms(lambda: sub.train_on_batch(x, y), runs, warmup=warmup)
            rows.append({"backbone": backbone, "precision": precision, "stage": stage, "batch": batch,
                         "step_ms": ms, "ms_per_image": ms / batch, "first_step_s": first,
                         "trainable_params": trainable})
            print(f"  {backbone} {precision} {stage} batch {batch}: {ms:.0f} ms/step (first {first:.1f} s)",
                  flush=True)
    model.freeze_backbone(False)
    keras.mixed_precision.set_global_policy("float32")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--precisions", nargs="+", default=["float32", "bfloat16"],
                        choices=["float32", "float16", "bfloat16"],
                        help="compute precisions of the step timings (mixed: variables and outputs float32)")
    parser.add_argument("--runs", type=int, default=5, help="timed training steps per row")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after the first, per row")
    parser.add_argument("--samples", type=int, default=60, help="timed pipeline samples per row")
    parser.add_argument("--parallel", nargs="+", type=int, default=[1, 2], help="num_parallel_calls values")
    parser.add_argument("--no-steps", action="store_true", help="only the data pipeline")
    parser.add_argument("--data-root", default=None, help="COCO-layout root with train2017 (default: coco-mini)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "training.json"))
    args = parser.parse_args()
    if args.runs < 1 or args.samples < 1 or args.warmup < 0:
        parser.error("--runs and --samples must be >= 1, --warmup >= 0")
    root = args.data_root or find_coco_mini()
    if root is None:
        parser.error("coco-mini not found beside the checkout; pass --data-root or set KERAPOSE_SHARED")
    train = CocoKeypoints(str(root), "train2017")
    load_start = os.getloadavg()

    print(f"data pipeline, {SIZE[0]}x{SIZE[1]}, all MultiPoseNet targets, coco-mini train2017:", flush=True)
    breakdown = pipeline_breakdown(train)
    pipe = [pipeline_rate(train, p, args.samples, warmup=max(5, args.samples // 10)) for p in args.parallel]
    print("| num_parallel_calls | samples/s | samples/s per core |\n|---:|---:|---:|")
    for r in pipe:
        print(f"| {r['num_parallel_calls']} | {r['samples_per_s']:.2f} | {r['per_core']:.2f} |")
    print("one sample, one thread (median ms): " + ", ".join(
        f"{k[:-3]} {v:.1f}" for k, v in breakdown.items() if k.endswith("_ms")) + "\n", flush=True)

    steps: list[dict] = []
    if not args.no_steps:
        print(f"training step, {SIZE[0]}x{SIZE[1]} (median of {args.runs} after {args.warmup} warm-up):", flush=True)
        for backbone in args.backbones:
            for precision in args.precisions:
                steps += step_times(backbone, train, args.batches, args.runs, args.warmup, precision)
                keras.backend.clear_session()
        base = {(r["backbone"], r["stage"], r["batch"]): r["step_ms"] for r in steps if r["precision"] == "float32"}
        for r in steps:  # speed-up over float32, measured in this run
            ref = base.get((r["backbone"], r["stage"], r["batch"]))
            r["speedup_vs_float32"] = ref / r["step_ms"] if ref else None
        print("\n| backbone | precision | stage | batch | ms / step | ms / image | vs float32 | first step (s) "
              "| trainable params |")
        print("|---|---|---|---:|---:|---:|---:|---:|---:|")
        for r in steps:
            ratio = f"{r['speedup_vs_float32']:.2f}x" if r["speedup_vs_float32"] else "-"
            print(f"| {r['backbone']} | {r['precision']} | {r['stage']} | {r['batch']} | {r['step_ms']:.0f} "
                  f"| {r['ms_per_image']:.0f} | {ratio} | {r['first_step_s']:.1f} | {r['trainable_params']:,} |")

    out = {
        "benchmark": "training",
        "input_hw": list(SIZE),
        # relative to the checkout: the JSON is committed and must not carry this machine's paths
        "data": {"root": os.path.relpath(root, ROOT), "split": "train2017", "images": len(train)},
        "statistic": "median",
        "settings": {"runs": args.runs, "warmup": args.warmup, "samples": args.samples},
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "load_avg_start": list(load_start),
                    "load_avg_end": list(os.getloadavg()), "tensorflow": tf.__version__, "keras": keras.__version__},
        "pipeline": pipe,
        "pipeline_breakdown": breakdown,
        "steps": steps,
    }
    write_json(args.out, out)


if __name__ == "__main__":
    main()
