"""Dynamic batching: group concurrent requests with the same input shapes into one model call.

The knobs follow TensorFlow Serving's ``batching_parameters`` (``--batching_parameters_file``):
``max_batch_size``, ``batch_timeout_micros`` and ``num_batch_threads``. A request waits at most
``batch_timeout_micros`` for others with the same model version and per-example input shapes
(an image of another size cannot share a tensor), then the group runs as one call and each
request gets its own slice of every output.
"""

from __future__ import annotations

import queue
import re
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BatchingOptions:
    """TF Serving batching parameters (same names and units)."""

    max_batch_size: int = 8
    batch_timeout_micros: int = 2000
    num_batch_threads: int = 2

    def __post_init__(self):
        for field_name in ("max_batch_size", "num_batch_threads"):
            if getattr(self, field_name) < 1:
                raise ValueError(f"{field_name}: expected >= 1, got {getattr(self, field_name)}")
        if self.batch_timeout_micros < 0:
            raise ValueError(f"batch_timeout_micros: expected >= 0, got {self.batch_timeout_micros}")


_FIELD_RE = re.compile(r"(\w+)\s*\{\s*value\s*:\s*(\d+)\s*\}")


def load_batching_config(path: str) -> BatchingOptions:
    """Read the fields we support from a TF Serving ``batching.config`` (text protobuf)."""
    with open(path, encoding="utf-8") as f:
        text = re.sub(r"#.*", "", f.read())
    values = {k: int(v) for k, v in _FIELD_RE.findall(text)}
    known = {"max_batch_size", "batch_timeout_micros", "num_batch_threads"}
    return BatchingOptions(**{k: v for k, v in values.items() if k in known})


class _Item:
    __slots__ = ("key", "model", "arrays", "size", "future")

    def __init__(self, key, model, arrays, size):
        self.key, self.model, self.arrays, self.size = key, model, arrays, size
        self.future: Future = Future()


class DynamicBatcher:
    """Collects requests on a dispatcher thread and runs grouped batches on a thread pool."""

    def __init__(self, options: BatchingOptions | None = None):
        self.options = options or BatchingOptions()
        self._queue: queue.Queue = queue.Queue()
        self._pool = ThreadPoolExecutor(self.options.num_batch_threads, thread_name_prefix="batch")
        self._closed = threading.Event()
        self.batch_sizes: list[int] = []  # one entry per model call, for tests and benchmarks
        self._thread = threading.Thread(target=self._dispatch, name="kerapose-batcher", daemon=True)
        self._thread.start()

    def submit(self, model, arrays: dict) -> Future:
        """Queue ``arrays`` (batch-major numpy arrays keyed by input name) for ``model``.

        ``model`` is a callable taking and returning dicts of arrays (a ``LoadedVersion``).
        Requests bigger than ``max_batch_size`` run on their own.
        """
        sizes = {a.shape[0] if a.ndim else 1 for a in arrays.values()}
        if len(sizes) != 1 or any(a.ndim == 0 for a in arrays.values()):
            raise ValueError(f"inputs: expected one shared batch dimension, got sizes {sorted(sizes)}")
        key = (id(model), tuple(sorted((k, a.shape[1:], a.dtype.str) for k, a in arrays.items())))
        item = _Item(key, model, arrays, sizes.pop())
        if self._closed.is_set():
            raise RuntimeError("batcher is closed")
        self._queue.put(item)
        return item.future

    def close(self) -> None:
        self._closed.set()
        self._queue.put(None)
        self._thread.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _dispatch(self) -> None:
        timeout = self.options.batch_timeout_micros / 1e6
        limit = self.options.max_batch_size
        pending: list[_Item] = []  # items of another shape that arrived while a batch was filling
        while True:
            first = pending.pop(0) if pending else self._queue.get()
            if first is None:
                return
            batch, total = [first], first.size
            deadline = time.monotonic() + timeout
            # Same-key items that were set aside join first, in arrival order.
            for it in [p for p in pending if p.key == first.key]:
                if total + it.size > limit:
                    break
                pending.remove(it)
                batch.append(it)
                total += it.size
            while total < limit:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    it = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
                if it is None:
                    self._queue.put(None)  # stop after this batch
                    break
                if it.key == first.key and total + it.size <= limit:
                    batch.append(it)
                    total += it.size
                else:
                    pending.append(it)
            self._pool.submit(self._run, batch)

    def _run(self, batch: list[_Item]) -> None:
        live = [it for it in batch if it.future.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            if len(live) == 1:
                outs = [live[0].model(live[0].arrays)]
            else:
                merged = {k: np.concatenate([it.arrays[k] for it in live]) for k in live[0].arrays}
                result = live[0].model(merged)
                total = sum(it.size for it in live)
                bad = [k for k, v in result.items() if np.ndim(v) == 0 or v.shape[0] != total]
                if bad:
                    raise ValueError(f"outputs {bad} have no batch dimension of size {total}")
                bounds = np.cumsum([0] + [it.size for it in live])
                outs = [
                    {k: v[bounds[i] : bounds[i + 1]] for k, v in result.items()}
                    for i in range(len(live))
                ]
            self.batch_sizes.append(sum(it.size for it in live))
        except BaseException as exc:
            for it in live:
                it.future.set_exception(exc)
            return
        for it, out in zip(live, outs):
            it.future.set_result(out)
