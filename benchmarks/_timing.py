"""Shared timing helper of the benchmark scripts (run as `python benchmarks/bench_x.py`)."""

from __future__ import annotations

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
