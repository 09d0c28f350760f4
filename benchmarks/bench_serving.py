"""Embedded serving throughput and latency, with and without dynamic batching.

The server runs in a subprocess (``serve_main``, uvicorn, 127.0.0.1) on a SavedModel with
kerapose's end-to-end signature (uint8 ``image`` [B, H, W, 3] -> keypoints / scores / boxes /
num_poses). By default the model is a small synthetic conv net written here (3 strided convs + a
pose-shaped head) so the figures show the server's own cost; ``--model DIR`` benchmarks an existing
export (``DIR/VERSION/saved_model.pb``). Requests are JPEGs of the coco-mini val images resized to
one size (so they can share a batch), sent as ``{"instances": [{"b64": ...}]}`` to ``:predict``
and as raw bytes to ``:pose`` by an asyncio httpx client with ``--concurrency`` requests in flight.

Rows: one per (batching off / max_batch_size N, endpoint): requests, errors, throughput (req/s),
p50 / p99 / mean latency (ms), plus ``direct_ms``, the median in-process signature call on one image (no HTTP).
The client shares the machine's cores with the server; figures are for this machine only.

Usage: ``python benchmarks/bench_serving.py [--requests 500] [--concurrency 8]
[--out benchmarks/results/serving.json]``
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # noqa: E402
import httpx  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COCO_VAL = ROOT.parent / "shared" / "data" / "coco-mini" / "val2017"


def export_bench_model(path: str, size_hw: tuple) -> None:
    """A small conv net with the kerapose serving signature (random but fixed weights)."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    m, k = 10, 17
    inp = keras.Input((None, None, 3))
    x = inp
    for filters in (16, 32, 64):
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    kp = keras.layers.Dense(m * k * 3, activation="sigmoid")(x)
    sc = keras.layers.Dense(m, activation="sigmoid")(x)
    net = keras.Model(inp, [kp, sc])
    ops = keras.ops

    def serve(image):
        h = ops.cast(ops.shape(image)[1], "float32")
        w = ops.cast(ops.shape(image)[2], "float32")
        kp, scores = net(ops.cast(image, "float32") / 255.0)
        kp = ops.reshape(kp, (-1, m, k, 3))
        keypoints = ops.stack([kp[..., 0] * w, kp[..., 1] * h, kp[..., 2]], axis=-1)
        boxes = ops.concatenate(
            [ops.min(keypoints[..., :2], axis=2), ops.max(keypoints[..., :2], axis=2)], axis=-1
        )
        num_poses = ops.sum(ops.cast(scores > 0.5, "int32"), axis=1)
        return {"keypoints": keypoints, "scores": scores, "boxes": boxes, "num_poses": num_poses}

    archive = keras.export.ExportArchive()
    archive.track(net)
    archive.add_endpoint(
        "serving_default", serve, input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="image")]
    )
    archive.write_out(path, verbose=False)


def load_images(size_hw: tuple, n: int = 16) -> list[bytes]:
    files = sorted(glob.glob(str(COCO_VAL / "*.jpg")))[:n]
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        bgr = cv2.imread(files[i]) if i < len(files) else None
        if bgr is None:  # no shared data: smooth random images
            bgr = cv2.GaussianBlur(rng.integers(0, 256, (*size_hw, 3), dtype=np.uint8), (9, 9), 3)
        bgr = cv2.resize(bgr, (size_hw[1], size_hw[0]))
        out.append(cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    return out


def direct_ms(model_dir: str, image_jpg: bytes, runs: int = 30) -> float:
    import tensorflow as tf

    fn = tf.saved_model.load(model_dir).signatures["serving_default"]
    img = tf.io.decode_jpeg(image_jpg, channels=3)[None]
    for _ in range(3):
        fn(image=img)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn(image=img)
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(models_dir: str, port: int, max_batch_size: int | None, args) -> subprocess.Popen:
    opts = dict(poll_interval=0, threads=args.threads, log_level="warning")
    if max_batch_size:
        opts.update(enable_batching=True, max_batch_size=max_batch_size,
                    batch_timeout_micros=args.batch_timeout_micros, num_batch_threads=2)
    code = (
        "from kerapose.serving.server import serve_main; "
        f"serve_main({models_dir!r}, host='127.0.0.1', port={port}, **{opts!r})"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=str(ROOT))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models/bench", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError("server exited during start-up")
        time.sleep(0.25)
    proc.terminate()
    raise RuntimeError("server did not start in 120 s")


async def load(url: str, endpoint: str, images: list[bytes], n: int, concurrency: int) -> dict:
    import base64

    bodies = [{"instances": [{"b64": base64.b64encode(b).decode()}]} for b in images]
    latencies, errors = [], 0
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def one(i: int):
            nonlocal errors
            async with sem:
                t = time.perf_counter()
                if endpoint == "predict":
                    r = await client.post("/v1/models/bench:predict", json=bodies[i % len(bodies)])
                else:
                    r = await client.post("/v1/models/bench:pose", content=images[i % len(images)],
                                          headers={"content-type": "image/jpeg"})
                latencies.append(time.perf_counter() - t)
                errors += r.status_code != 200

        await asyncio.gather(*(one(i) for i in range(min(16, n))))  # warm-up
        latencies.clear()
        errors = 0
        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        wall = time.perf_counter() - t0
    lat = np.asarray(latencies) * 1e3
    return {
        "requests": n,
        "errors": errors,
        "throughput_rps": round(n / wall, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 2),
        "p99_ms": round(float(np.percentile(lat, 99)), 2),
        "mean_ms": round(float(lat.mean()), 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--size", type=int, nargs=2, default=(256, 320), metavar=("H", "W"))
    ap.add_argument("--model", default=None, help="existing model dir (VERSION subdirs); default: synthetic")
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--max-batch-sizes", type=int, nargs="+", default=[8, 4],
                    help="one batching run per value (plus one run without batching)")
    ap.add_argument("--batch-timeout-micros", type=int, default=2000)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serving.json"))
    args = ap.parse_args()

    size = tuple(args.size)
    images = load_images(size)
    tmp = tempfile.mkdtemp(prefix="kerapose-bench-serving-")
    try:
        models = os.path.join(tmp, "models")
        if args.model:
            shutil.copytree(args.model, os.path.join(models, "bench"))
        else:
            export_bench_model(os.path.join(models, "bench", "1"), size)
        version_dirs = sorted(
            glob.glob(os.path.join(models, "bench", "[0-9]*")), key=lambda p: int(os.path.basename(p))
        )
        direct = direct_ms(version_dirs[-1], images[0])
        rows = []
        for max_batch in [None, *args.max_batch_sizes]:
            batching = f"max {max_batch}" if max_batch else "off"
            port = _free_port()
            proc = start_server(models, port, max_batch, args)
            try:
                for endpoint in ("predict", "pose"):
                    url = f"http://127.0.0.1:{port}"
                    res = asyncio.run(load(url, endpoint, images, args.requests, args.concurrency))
                    rows.append({"batching": batching, "endpoint": endpoint, **res})
            finally:
                proc.terminate()
                proc.wait(timeout=30)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    header = (
        f"{'batching':>8} {'endpoint':>8} {'reqs':>5} {'errors':>6} {'req/s':>7} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'mean ms':>8}"
    )
    print(f"image {size[0]}x{size[1]} JPEG, concurrency {args.concurrency}, direct signature call {direct:.2f} ms")
    print(header)
    for r in rows:
        print(f"{r['batching']:>8} {r['endpoint']:>8} {r['requests']:>5} {r['errors']:>6} "
              f"{r['throughput_rps']:>7} {r['p50_ms']:>7} {r['p99_ms']:>7} {r['mean_ms']:>8}")
    result = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "model": args.model or "synthetic conv net (3 strided convs, 10 poses x 17 keypoints)",
        "image_hw": list(size),
        "concurrency": args.concurrency,
        "threads": args.threads,
        "batching": {"max_batch_sizes": args.max_batch_sizes, "batch_timeout_micros": args.batch_timeout_micros},
        "direct_ms": round(direct, 2),
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
