"""StrongPose decoding time against the number of people: numpy reference vs in-graph decoder.

Synthetic targets: a fully labelled COCO val person (from ../shared/data/coco-mini) replicated on
a grid over a fixed 480x640 canvas (so the per-image work, the Hough voting, stays the same and
only the number of people changes), encoded with ``StrongPoseCodec`` at stride 8. Each decoder
runs on the encoded maps; median over interleaved rounds of the median of several runs.

    python benchmarks/bench_strongpose_decode.py [--runs 10] [--rounds 3]

Prints a table and writes benchmarks/results/strongpose_decode.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import median_ms  # noqa: E402

from kerapose.codecs.strongpose import StrongPoseCodec  # noqa: E402
from kerapose.data.coco import CocoKeypoints  # noqa: E402
from kerapose.models.strongpose.decoder import strongpose_decode_tf  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CANVAS = (480, 640)
COUNTS = (2, 5, 10, 20)
MAPS = ("heatmaps", "short_offsets", "mid_offsets")


def template_person(data_root: Path) -> np.ndarray:
    """The largest fully labelled person of coco-mini val, keypoints relative to its box, [17, 3]."""
    ds = CocoKeypoints(str(data_root), "val2017")
    best = None
    for record in ds:
        for kp, area, crowd in zip(record.keypoints, record.areas, record.iscrowd):
            if not crowd and (kp[:, 2] > 0).all() and (best is None or area > best[0]):
                best = (area, kp.copy())
    kp = best[1].astype(np.float64)
    kp[:, :2] -= kp[:, :2].min(0)
    return kp


def scene(template: np.ndarray, n: int) -> np.ndarray:
    """``n`` copies of the person, each scaled into one cell of a grid over the canvas."""
    h, w = CANVAS
    cols = math.ceil(math.sqrt(n * w / h))
    rows = math.ceil(n / cols)
    cell_h, cell_w = h / rows, w / cols
    extent = template[:, :2].max(0)
    scale = 0.8 * min(cell_w / extent[0], cell_h / extent[1])
    people = []
    for i in range(n):
        r, c = divmod(i, cols)
        kp = template.copy()
        kp[:, :2] = kp[:, :2] * scale + (c * cell_w + 0.1 * cell_w, r * cell_h + 0.1 * cell_h)
        people.append(kp)
    return np.stack(people)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="timed calls per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the table gives their median")
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data" / "coco-mini"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "strongpose_decode.json"))
    args = parser.parse_args()

    codec = StrongPoseCodec()
    ch = codec.channels
    spec = [tf.TensorSpec([None, None, None, ch[n]]) for n in MAPS]
    graph = tf.function(lambda h, s, m: strongpose_decode_tf(h, s, m, codec, max_people=20), input_signature=spec)
    template = template_person(Path(args.data_root))
    scenes = {}
    for n in COUNTS:
        t = codec.encode_keypoints(scene(template, n), CANVAS)
        scenes[n] = [t[k] for k in MAPS]
    # rounds over all counts, interleaved, so a busy spell of the machine spreads over every row
    times: dict[int, dict[str, list[float]]] = {n: {"numpy": [], "graph": []} for n in COUNTS}
    for _ in range(args.rounds):
        for n, maps in scenes.items():
            batch = [tf.constant(m[None]) for m in maps]
            times[n]["numpy"].append(median_ms(lambda: codec.decode(*maps), args.runs))
            times[n]["graph"].append(median_ms(lambda: graph(*batch)["num_poses"].numpy(), args.runs))
    rows = []
    for n, maps in scenes.items():
        rows.append({"people": n, "found_numpy": len(codec.decode(*maps)["scores"]),
                     "found_graph": int(graph(*[m[None] for m in maps])["num_poses"][0]),
                     "numpy_ms": round(float(np.median(times[n]["numpy"])), 2),
                     "graph_ms": round(float(np.median(times[n]["graph"])), 2)})
    grid = scenes[COUNTS[0]][0].shape[:2]
    print(f"StrongPose decoding, {CANVAS[0]}x{CANVAS[1]} image, stride 8 ({grid[0]}x{grid[1]} cells)"
          f", median of {args.rounds} interleaved rounds of {args.runs} runs")
    print(f"{'people':>6}  {'found (np/tf)':>13}  {'numpy ms':>9}  {'graph ms':>9}")
    for r in rows:
        print(f"{r['people']:>6}  {r['found_numpy']:>6}/{r['found_graph']:<6}  {r['numpy_ms']:>9.2f}  "
              f"{r['graph_ms']:>9.2f}")
    result = {
        "benchmark": "strongpose_decode",
        "canvas_hw": list(CANVAS),
        "grid_hw": list(grid),
        "codec": codec.get_config(),
        "max_people_graph": 20,
        "runs": args.runs,
        "rounds": args.rounds,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "tensorflow": tf.__version__},
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
