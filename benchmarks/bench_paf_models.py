"""PAF family: FTN vs OpenPose-baseline latency (the FTN paper's speed claim), MLN, and grouping.

1. Network latency, batch 1, float32, random (seeded) weights, at 368x432 (the FTN paper's
   input): ``PafBaseline`` (6 stages), ``FeatureTransferNet`` and ``MultiLevelNet``, each a
   ``tf.function`` around ``model(x, training=False)`` on one fixed random image. The models are
   timed *interleaved* (run r of every model, then run r + 1), so a change of machine load hits
   all of them alike; each figure is the median of ``--runs`` calls after 2 warm-up calls. The
   ratio baseline / FTN stands beside the paper's 2.1x (42.2 vs 20.4 FPS on a GPU).
2. Grouping per image on coco-mini val2017 ground-truth maps (OpenPose-18 heatmaps with the
   background channel + 38 PAFs at stride 8, encoded by the codecs over each whole image,
   about 60x80 cells): ``PafCodec.decode`` (numpy peaks + greedy grouping), ``group_people``
   alone (numpy, on precomputed peaks), and the in-graph ``paf_group_tf`` (peaks + grouping,
   one ``tf.function`` with free grid size); median of ``--runs`` calls per image, then the mean
   and median over images.
3. AP of the numpy and the in-graph grouping on those ground-truth maps (pycocotools, after
   OpenPose-18 -> COCO-17): the two must agree within 0.01.

The machine is shared (2 cores): the CPU count and the load average go into the JSON.

Usage: ``python benchmarks/bench_paf_models.py [--runs 5] [--size 368 432] [--no-mln] [--out ...]``
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

from _timing import median_ms, write_json  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from kerapose.codecs.grouping import group_people
from kerapose.codecs.paf import PafCodec
from kerapose.codecs.paf_graph import paf_group_tf
from kerapose.data.coco import CocoKeypoints
from kerapose.evaluation import evaluate_keypoints, keypoint_results
from kerapose.models import FeatureTransferNet, MultiLevelNet, PafBaseline
from kerapose.skeleton import OPENPOSE18, coco17_to_openpose18, openpose18_to_coco17

PAPER = {"paf-baseline": 20.4, "ftn": 42.2}  # FPS, FTN paper (GPU)
MAX_PEAKS, MAX_PEOPLE = 20, 20


def find_coco_mini() -> Path:
    env = os.environ.get("KERAPOSE_SHARED")
    roots = [Path(env)] if env else [p / "shared" for p in Path(__file__).resolve().parents]
    for root in roots:
        if (root / "data" / "coco-mini" / "annotations").is_dir():
            return root / "data" / "coco-mini"
    raise SystemExit("../shared/data/coco-mini not found; set KERAPOSE_SHARED")


def machine() -> dict:
    return {"python": platform.python_version(), "node": platform.node(), "cpus": os.cpu_count(),
            "tensorflow": tf.__version__, "numpy": np.__version__,
            "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}


def bench_networks(size: tuple[int, int], runs: int, with_mln: bool) -> list[dict]:
    builders = {"paf-baseline": lambda: PafBaseline(stages=6, input_shape=(*size, 3)),
                "ftn": lambda: FeatureTransferNet(input_shape=(*size, 3))}
    if with_mln:
        builders["mln"] = lambda: MultiLevelNet(input_shape=(*size, 3))
    x = tf.constant(np.random.default_rng(0).uniform(0, 255, (1, *size, 3)).astype(np.float32))
    fns, params = {}, {}
    for name, build in builders.items():
        tf.keras.utils.set_random_seed(0)
        model = build()
        params[name] = model.count_params()
        fns[name] = tf.function(lambda v, m=model: m(v, training=False))
        for _ in range(2):  # trace + warm-up
            fns[name](x)["pafs"].numpy()
    times = {name: [] for name in fns}
    for _ in range(runs):  # interleaved: run r of every model, then run r + 1
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn(x)["pafs"].numpy()
            times[name].append(time.perf_counter() - t0)
    rows = []
    for name, ts in times.items():
        ms = float(np.median(ts) * 1e3)
        rows.append({"model": name, "params": params[name], "median_ms": ms, "fps": 1e3 / ms,
                     "min_ms": float(np.min(ts) * 1e3), "max_ms": float(np.max(ts) * 1e3),
                     "paper_fps": PAPER.get(name)})
    return rows


def bench_grouping(root: Path, runs: int) -> tuple[list[dict], dict, int]:
    val = CocoKeypoints(str(root), "val2017")
    codec = PafCodec("openpose18", stride=8, max_peaks=MAX_PEAKS)
    spec = [tf.TensorSpec([None, None, None, 19]), tf.TensorSpec([None, None, None, 38]),
            tf.TensorSpec([2], tf.int32)]
    graph = tf.function(lambda h, p, hw: paf_group_tf(h, p, OPENPOSE18, 8, hw, max_peaks=MAX_PEAKS,
                                                      max_people=MAX_PEOPLE), input_signature=spec)
    per_image = {"numpy decode (peaks + grouping)": [], "numpy grouping only": [],
                 "in-graph tf.function (peaks + grouping)": []}
    res = {"numpy": [], "in-graph": []}
    for rec in val:
        gt = coco17_to_openpose18(rec.keypoints[~rec.iscrowd])
        hw = (rec.height, rec.width)
        heat = codec.heatmap_codec.encode(gt, hw)
        heat = np.concatenate([heat, np.maximum(1 - heat.max(-1, keepdims=True), 0)], -1)
        paf = codec.encode(gt, hw)
        peaks = codec.heatmap_codec.decode_peaks(heat[..., :18])
        h, p, s = heat[None], paf[None], np.array(hw, np.int32)
        per_image["numpy decode (peaks + grouping)"].append(median_ms(lambda: codec.decode(heat, paf, hw), runs))
        per_image["numpy grouping only"].append(median_ms(
            lambda: group_people(peaks, paf, OPENPOSE18, 8, hw, order=codec.order, **codec.grouping), runs))
        per_image["in-graph tf.function (peaks + grouping)"].append(median_ms(lambda: graph(h, p, s), runs))
        kp, sc = codec.decode(heat, paf, hw)
        res["numpy"] += keypoint_results(rec.image_id, openpose18_to_coco17(kp), sc)
        kp_t, sc_t, num = (np.asarray(v) for v in graph(h, p, s))
        n = int(num[0])
        res["in-graph"] += keypoint_results(rec.image_id, openpose18_to_coco17(kp_t[0, :n]), sc_t[0, :n])
    rows = [{"path": k, "mean_ms": float(np.mean(v)), "median_ms": float(np.median(v)), "max_ms": float(np.max(v))}
            for k, v in per_image.items()]
    ap = {k: evaluate_keypoints(val.coco, v)["AP"] for k, v in res.items()}
    return rows, ap, len(val)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--size", type=int, nargs=2, default=(368, 432), metavar=("H", "W"))
    parser.add_argument("--no-mln", action="store_true", help="time PafBaseline and FTN only")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "paf_models.json"))
    args = parser.parse_args()
    if args.runs < 5:
        parser.error("--runs must be >= 5")
    size = tuple(args.size)
    load_before = machine()["load_avg_1min"]
    t0 = time.perf_counter()
    nets = bench_networks(size, args.runs, not args.no_mln)
    net_s = time.perf_counter() - t0
    by = {r["model"]: r for r in nets}
    ratio = by["paf-baseline"]["median_ms"] / by["ftn"]["median_ms"]
    paper_ratio = PAPER["ftn"] / PAPER["paf-baseline"]
    groups, ap, n_images = bench_grouping(find_coco_mini(), max(args.runs, 10))

    print(f"\nNetworks at {size[0]}x{size[1]}, batch 1, CPU ({os.cpu_count()} cores, load {load_before:.1f}), "
          f"interleaved, median of {args.runs} runs")
    print("\n| model | params | median ms | FPS | paper FPS (GPU) |\n|---|---:|---:|---:|---:|")
    for r in nets:
        paper = f"{r['paper_fps']:.1f}" if r["paper_fps"] else "—"
        print(f"| {r['model']} | {r['params']:,} | {r['median_ms']:.0f} | {r['fps']:.2f} | {paper} |")
    print(f"\nspeed-up FTN over the baseline: {ratio:.2f}x here, {paper_ratio:.2f}x in the paper (42.2 / 20.4 FPS)")
    print(f"\nGrouping per image, coco-mini val2017 ground-truth maps ({n_images} images), "
          f"k={MAX_PEAKS}, M={MAX_PEOPLE}")
    print("\n| path | mean ms | median ms | max ms |\n|---|---:|---:|---:|")
    for r in groups:
        print(f"| {r['path']} | {r['mean_ms']:.2f} | {r['median_ms']:.2f} | {r['max_ms']:.2f} |")
    print(f"\nAP on ground-truth maps: numpy {ap['numpy']:.4f}, in-graph {ap['in-graph']:.4f} "
          f"(difference {abs(ap['numpy'] - ap['in-graph']):.4f}, required <= 0.01)")

    result = {
        "benchmark": "paf_models",
        "input_size": list(size),
        "runs": args.runs,
        "statistic": "networks: median of interleaved runs; grouping: median per image, mean/median/max over images",
        "networks": nets,
        "speedup_ftn_over_baseline": ratio,
        "paper_speedup": paper_ratio,
        "network_seconds": net_s,
        "grouping": {"images": n_images, "max_peaks": MAX_PEAKS, "max_people": MAX_PEOPLE, "rows": groups},
        "ground_truth_ap": ap,
        "machine": {**machine(), "load_avg_1min_before": load_before},
    }
    write_json(args.out, result)


if __name__ == "__main__":
    main()
