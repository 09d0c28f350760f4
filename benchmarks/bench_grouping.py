"""Greedy PAF grouping time for 2, 5, 10 and 20 synthetic people, and peak decoding time.

Synthetic scene: N copies of a standing COCO-17 pose (jittered, scaled to fit) side by side
in a 640x480 image; ground-truth heatmaps (sigma 1 cell) and PAFs are encoded at stride 8
with :class:`kerapose.codecs.paf.PafCodec`, peaks decoded once, then timed:

- ``peaks_ms``: ``HeatmapCodec.decode_peaks`` on the [60, 80, 17] heatmaps;
- ``grouping_ms``: ``group_people`` on those peaks and the [60, 80, 38] PAFs;
- ``decode_ms``: ``PafCodec.decode`` (both);
- ``encode_ms``: ``PafCodec.encode`` of the ground truth (the PAF targets of the data pipeline).

Each figure is the median of ``--runs`` (default 50) timed calls after 3 warm-up calls.
Reference (Cao et al. 2017, Fig. 10-ish, C++): about 0.2 ms for 2 people and 0.6 ms for 10.

Usage: ``python benchmarks/bench_grouping.py [--runs 50] [--out benchmarks/results/grouping.json]``
"""

from __future__ import annotations

import argparse
import os
import platform

import numpy as np

from _timing import median_ms as _median_ms, write_json  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from kerapose.codecs.grouping import group_people
from kerapose.codecs.paf import PafCodec

# A standing person facing the camera, COCO-17 order, in units of body height (x, y).
TEMPLATE = np.array([
    [0.00, 0.06], [0.03, 0.04], [-0.03, 0.04], [0.06, 0.06], [-0.06, 0.06],
    [0.12, 0.20], [-0.12, 0.20], [0.16, 0.36], [-0.16, 0.36], [0.18, 0.50], [-0.18, 0.50],
    [0.09, 0.52], [-0.09, 0.52], [0.10, 0.74], [-0.10, 0.74], [0.10, 0.96], [-0.10, 0.96],
])


def synthetic_people(n: int, image_hw=(480, 640), seed: int = 0) -> np.ndarray:
    """``[n, 17, 3]`` keypoints of ``n`` jittered people in columns (two rows above 10)."""
    rng = np.random.default_rng(seed)
    h, w = image_hw
    rows = 1 if n <= 10 else 2
    cols = int(np.ceil(n / rows))
    cell_w, cell_h = w / cols, h / rows
    height = min(cell_h * 0.9, cell_w * 2.2)
    out = np.zeros((n, 17, 3))
    for i in range(n):
        r, c = divmod(i, cols)
        pose = TEMPLATE * height + rng.normal(0, 0.015 * height, TEMPLATE.shape)
        out[i, :, 0] = (c + 0.5) * cell_w + pose[:, 0]
        out[i, :, 1] = r * cell_h + 0.05 * cell_h + pose[:, 1]
        out[i, :, 2] = 2
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "grouping.json"))
    args = parser.parse_args()
    if args.runs < 20:
        parser.error("--runs must be >= 20")

    image_hw = (480, 640)
    codec = PafCodec("coco17", stride=8)
    rows = []
    for n in (2, 5, 10, 20):
        gt = synthetic_people(n, image_hw, seed=n)
        heat = codec.heatmap_codec.encode(gt, image_hw)
        pafs = codec.encode(gt, image_hw)
        peaks = codec.heatmap_codec.decode_peaks(heat)
        kp, _ = group_people(peaks, pafs, codec.keypoint_set, codec.stride, image_hw)
        rows.append({
            "people": n,
            "found": int(len(kp)),
            "candidates": int(sum(len(p) for p in peaks)),
            "peaks_ms": _median_ms(lambda: codec.heatmap_codec.decode_peaks(heat), args.runs),
            "grouping_ms": _median_ms(
                lambda: group_people(peaks, pafs, codec.keypoint_set, codec.stride, image_hw), args.runs
            ),
            "decode_ms": _median_ms(lambda: codec.decode(heat, pafs, image_hw), args.runs),
            "encode_ms": _median_ms(lambda: codec.encode(gt, image_hw), args.runs),
        })

    print(f"PAF grouping, COCO-17, stride 8, {image_hw[1]}x{image_hw[0]} image, median of {args.runs} runs")
    print(f"{'people':>6} {'found':>5} {'cands':>5} {'peaks ms':>9} {'grouping ms':>12} {'decode ms':>10} "
          f"{'encode ms':>10}")
    for r in rows:
        print(f"{r['people']:>6} {r['found']:>5} {r['candidates']:>5} {r['peaks_ms']:>9.3f} "
              f"{r['grouping_ms']:>12.3f} {r['decode_ms']:>10.3f} {r['encode_ms']:>10.3f}")
    print("paper (Cao et al. 2017, C++): 0.2 ms for 2 people, 0.6 ms for 10")
    result = {
        "benchmark": "grouping",
        "keypoint_set": "coco17",
        "stride": 8,
        "image_hw": list(image_hw),
        "runs": args.runs,
        "statistic": "median",
        "machine": {"python": platform.python_version(), "processor": platform.processor(),
                    "node": platform.node(), "numpy": np.__version__, "cpus": os.cpu_count(),
                    "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None},
        "paper_ms": {"2": 0.2, "10": 0.6},
        "rows": rows,
    }
    write_json(args.out, result)


if __name__ == "__main__":
    main()
