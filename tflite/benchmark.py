"""Median latency of a .tflite model with LiteRT (ai-edge-litert) per thread count.

    python tflite/benchmark.py MODEL.tflite [--input-size 480 640] [--threads 1 2 4] [--runs 20]
                               [--warmup 3] [--image IMAGE] [--json benchmarks/results/tflite_NAME.json]

End-to-end models (uint8 image of any size) get an image of ``--input-size`` (``--image``
resized, or random pixels); raw networks get their fixed input shape (``--input-size`` must match
it when given). Prints a table and writes the figures as JSON. Run it on the target device for
numbers that mean something: desktop x86 timings say little about a phone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))


def _input_for(details: dict, input_size, image_path: str | None) -> np.ndarray:
    shape = [int(s) for s in details["shape_signature"]]
    if len(shape) != 4 or shape[-1] != 3:
        raise ValueError(f"expected an image input [B, H, W, 3], got shape signature {shape}")
    fixed = shape[1] != -1 and shape[2] != -1
    if input_size is None:
        if not fixed:
            raise ValueError("the model takes images of any size: give --input-size H W")
        input_size = shape[1:3]
    h, w = (int(v) for v in input_size)
    if fixed and (h, w) != tuple(shape[1:3]):
        raise ValueError(f"--input-size {h} {w} differs from the model's fixed input {shape[1]}x{shape[2]}")
    if image_path:
        import cv2

        bgr = cv2.imread(image_path, cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"{image_path}: not a readable image")
        x = cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), (w, h), interpolation=cv2.INTER_AREA)
    else:
        x = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    dtype = np.dtype(details["dtype"])
    scale, zero = details["quantization"]
    if dtype.kind in "iu" and dtype != np.uint8 and scale > 0:  # int8 input of an integer-only model
        x = np.clip(np.round(x / scale + zero), np.iinfo(dtype).min, np.iinfo(dtype).max)
    return x[None].astype(dtype)


def benchmark(model_path: str, threads: int, input_size=None, runs: int = 20, warmup: int = 3,
              image_path: str | None = None) -> dict:
    """Latency figures (ms) of ``runs`` timed calls after ``warmup`` untimed ones."""
    from ai_edge_litert.interpreter import Interpreter

    if runs < 1 or warmup < 0 or threads < 1:
        raise ValueError(f"runs >= 1, warmup >= 0 and threads >= 1 expected, got {runs}, {warmup}, {threads}")
    if not os.path.isfile(model_path):
        raise FileNotFoundError(f"model not found: {model_path}")
    t0 = time.perf_counter()
    interpreter = Interpreter(model_path=model_path, num_threads=threads)
    runner = interpreter.get_signature_runner()
    name, details = next(iter(runner.get_input_details().items()))
    x = _input_for(details, input_size, image_path)
    runner(**{name: x})  # the first call allocates tensors for this shape
    load_ms = (time.perf_counter() - t0) * 1e3
    for _ in range(warmup):
        runner(**{name: x})
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        runner(**{name: x})
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    return {"threads": threads, "input": list(x.shape[1:3]), "input_dtype": x.dtype.name, "runs": runs,
            "median_ms": statistics.median(times), "min_ms": times[0],
            "p90_ms": times[min(len(times) - 1, int(0.9 * len(times)))], "first_call_ms": load_ms}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"))
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--image", help="a real image to time (resized to --input-size); random pixels otherwise")
    p.add_argument("--json", help="output JSON (default benchmarks/results/tflite_<model name>.json)")
    args = p.parse_args(argv)
    try:
        rows = [benchmark(args.model, t, args.input_size, args.runs, args.warmup, args.image) for t in args.threads]
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{os.path.basename(args.model)} ({os.path.getsize(args.model) / 1e6:.1f} MB), LiteRT, "
          f"{platform.machine()} {os.cpu_count()} CPUs, median of {args.runs} runs")
    print(f"{'threads':>7} | {'input':>9} | {'median ms':>9} | {'p90 ms':>8} | {'min ms':>8} | {'1st call ms':>11}")
    for r in rows:
        hw = f"{r['input'][0]}x{r['input'][1]}"
        print(f"{r['threads']:>7} | {hw:>9} | {r['median_ms']:>9.2f} | {r['p90_ms']:>8.2f} | {r['min_ms']:>8.2f} | "
              f"{r['first_call_ms']:>11.1f}")
    out = args.json or os.path.join(_HERE, "..", "benchmarks", "results",
                                    f"tflite_{os.path.splitext(os.path.basename(args.model))[0]}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    payload = {"model": os.path.abspath(args.model), "machine": platform.machine(), "cpus": os.cpu_count(),
               "warmup": args.warmup, "results": rows}
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2)
    os.replace(tmp, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
