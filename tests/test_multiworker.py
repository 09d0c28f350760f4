"""Distributed training: two MultiWorkerMirroredStrategy workers on 127.0.0.1 (TF_CONFIG) end with
identical weights; MirroredStrategy on the one CPU device still trains."""

from __future__ import annotations

import json
import math
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from kerapose.training.recipe import load_recipe as load_config
from kerapose.training.runner import train

# The smallest MultiPoseNet the recipes accept; the keypoint stage has dict targets (the case that
# broke Keras 3's multi-worker fit) and batch norm, the PRN stage dropout and a partial last
# validation batch.
MINI = {
    "model": {"name": "multiposenet", "backbone": "resnet18", "keypoint_set": "coco17", "input_size": [32, 32],
              "fpn_size": 8, "keypoint_head_size": 8, "keypoint_fuse_size": 8, "prn_hidden": 8},
    "data": {"synthetic": {"num_train": 4, "num_val": 2, "image_size": [32, 32], "seed": 0}},
    "augment": {"rotation_deg": 10, "center": "image", "fit_image": True},
    "batch_size": 2,
    "stages": [
        {"name": "keypoints", "epochs": 1, "steps_per_epoch": 2, "learning_rate": 1.0e-3},
        {"name": "prn", "epochs": 1, "steps_per_epoch": 2, "learning_rate": 1.0e-3, "batch_size": 4},
    ],
    "evaluate": {"max_people": 2, "score_threshold": 0.05},
}


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _arrays(path: Path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def test_two_workers_finish_with_identical_weights(tmp_path):
    out = tmp_path / "run"  # one output folder shared by both workers, as on a shared file system
    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}
    procs, logs = [], []
    for index in range(2):
        # Worker 1 gets another seed (other initial weights, other shuffling): equal final weights
        # then come from the strategy (initial values broadcast from worker 0, all-reduced
        # gradients, synchronised batch norm), not from two identical runs.
        cfg = tmp_path / f"worker{index}.yaml"
        cfg.write_text(yaml.safe_dump({**MINI, "seed": index}))
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "",
               "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        log = open(tmp_path / f"worker{index}.log", "w")
        logs.append(log)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "kerapose.cli", "train", str(cfg), "--strategy", "multi-worker",
             "--output", str(out), "--verbose", "0"], stdout=log, stderr=subprocess.STDOUT, env=env))
    try:
        codes = [p.wait(timeout=420) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for log in logs:
            log.close()
    tails = "\n".join(f"--- worker {i}\n" + (tmp_path / f"worker{i}.log").read_text()[-3000:] for i in range(2))
    assert codes == [0, 0], tails
    for index in range(2):
        assert re.search(r"^AP \d\.\d{4} ", (tmp_path / f"worker{index}.log").read_text(), re.M), tails

    w0, w1 = _arrays(out / "weights-worker-0.weights.h5"), _arrays(out / "weights-worker-1.weights.h5")
    assert sorted(w0) == sorted(w1) and len(w0) > 100
    different = [k for k in w0 if not np.array_equal(w0[k], w1[k])]
    assert different == []
    # they trained: batch-norm moving means left their zero initial value, the PRN took 2 steps
    moving_means = [k for k in w0 if re.search(r"batch_normalization(_\d+)?/vars/2$", k)]
    assert moving_means and all(np.abs(w0[k]).max() > 0 for k in moving_means)
    assert int(w0["prn/optimizer/vars/0"]) == 2
    # the chief writes the checkpoints and logs; worker 1 keeps its own state beside them
    assert (out / "model.keras").is_file() and (out / "1-keypoints" / "last.keras").is_file()
    for state in (out, out / "worker-1"):
        assert json.loads((state / "progress.json").read_text())["stages"] == ["1-keypoints", "2-prn"]
    assert not (out / "worker-0").exists()


def test_mirrored_strategy_on_one_cpu(tmp_path):
    cfg_path = tmp_path / "mini.yaml"
    cfg_path.write_text(yaml.safe_dump({**MINI, "seed": 0, "stages": [
        {"name": "keypoints", "epochs": 1, "steps_per_epoch": 1, "learning_rate": 1.0e-3}]}))
    metrics = train(load_config(str(cfg_path)), str(tmp_path / "run"), strategy="mirrored", verbose=0)
    losses = metrics["history"]["1-keypoints"]["loss"]
    assert len(losses) == 1 and math.isfinite(losses[0])
    assert 0.0 <= metrics["AP"] <= 1.0
    assert (tmp_path / "run" / "1-keypoints" / "weights.weights.h5").is_file()


def test_more_workers_than_images_is_a_clear_error(tmp_path):
    from kerapose.data.coco import CocoKeypoints
    from kerapose.data.pipeline import MultiPoseNetTargets, keypoint_dataset
    from kerapose.data.synthetic import generate_synthetic_coco

    generate_synthetic_coco(str(tmp_path), num_train=2, num_val=1, image_size=(32, 32), seed=0)
    train_set = CocoKeypoints(str(tmp_path), "train")
    targets = MultiPoseNetTargets("coco17", (32, 32))
    with pytest.raises(ValueError, match="cannot be split into 3 shards"):
        keypoint_dataset(train_set, targets, batch_size=1, shard=(3, 2))
    with pytest.raises(ValueError, match="0 <= index < num_shards"):
        keypoint_dataset(train_set, targets, batch_size=1, shard=(2, 2))
