"""Shared helpers of the benchmark scripts (run as `python benchmarks/bench_x.py`): timing and
writing the results JSON."""

from __future__ import annotations

import json
import os
import time

import numpy as np


def median_ms(fn, runs: int, warmup: int = 3) -> float:
    """Median wall time of ``fn()`` in milliseconds over ``runs`` calls, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def interleaved_ms(fns: dict, runs: int, warmup: int = 2) -> dict:
    """Median wall time (ms) of each callable over ``runs`` rounds, the callables taking turns in
    each round, so that a change of load on the shared machine reaches every row alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            times[name].append(median_ms(fn, 1, warmup=0))
    return {name: float(np.median(t)) for name, t in times.items()}


def write_json(path: str, result: dict, indent: int = 2) -> None:
    """Write ``result`` to ``path`` (folders created; through a temporary file, so an interrupted run
    leaves the previous results whole) and say so."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(result, f, indent=indent)
    os.replace(path + ".tmp", path)
    print(f"wrote {path}")
