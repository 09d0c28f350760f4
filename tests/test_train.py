"""Multi-stage training: recipe checks, a full tiny run, and resuming an interrupted run."""

import csv
import json
import os
from pathlib import Path

import keras
import pytest

from kerapose.train import load_config, train

RECIPES = Path(__file__).resolve().parents[1] / "training" / "configs"


def test_recipes_load():
    paths = sorted(RECIPES.glob("*.yaml"))
    assert {"quickstart.yaml", "multiposenet-r50.yaml"} <= {p.name for p in paths}
    multiposenet = [p for p in paths if p.name.startswith(("multiposenet", "quickstart", "tiny"))]
    assert len(multiposenet) == 5  # the PAF family's recipes are checked in test_paf_training.py
    for path in multiposenet:
        cfg = load_config(str(path), {"data_root": "/data/coco"} if "multiposenet" in path.name else None)
        assert [s["name"] for s in cfg["stages"]] == ["keypoints", "persons", "prn"]
        assert cfg["model"]["name"] == "multiposenet"


def test_config_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {backbone: resnet18}\nstages: [{name: warmup, epochs: 1}]\ndata: {root: x}\n")
    with pytest.raises(ValueError, match=r"stages\[0\].name is 'warmup'"):
        load_config(str(bad))
    bad.write_text("stages: [{name: keypoints, epochs: 1}]\nlearning_rate: 1\n")
    with pytest.raises(ValueError, match="unknown keys \\['learning_rate'\\]"):
        load_config(str(bad))
    bad.write_text("stages: [{name: keypoints, epochs: 1}]\n")
    with pytest.raises(ValueError, match="data.root"):
        load_config(str(bad))
    with pytest.raises(FileNotFoundError):
        load_config(str(tmp_path / "missing.yaml"))


class _Interrupt(keras.callbacks.Callback):
    """Kill the run at the start of the second epoch of the first stage."""

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt("simulated kill")


def test_interrupted_training_resumes(tmp_path):
    cfg = load_config(str(RECIPES / "tiny-test.yaml"))
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(cfg, str(out), verbose=0, extra_callbacks=[_Interrupt()])
    assert not (out / "progress.json").exists()
    assert (out / "1-keypoints" / "last.keras").is_file()  # epoch 1 was checkpointed
    metrics = train(load_config(str(RECIPES / "tiny-test.yaml")), str(out), verbose=0)
    rows = list(csv.DictReader(open(out / "1-keypoints" / "log.csv")))
    assert [int(r["epoch"]) for r in rows] == [0, 1]  # resumed at epoch 2, not restarted
    assert json.load(open(out / "progress.json"))["stages"] == ["1-keypoints", "2-persons", "3-prn"]
    for key in ("AP", "AP50", "AR"):
        assert 0.0 <= metrics[key] <= 1.0
    model = keras.saving.load_model(out / "model.keras")
    assert model.count_params() > 0 and not os.path.exists(str(out / "model.keras.tmp.keras"))
    # a third run finds every stage done and only evaluates
    again = train(load_config(str(RECIPES / "tiny-test.yaml")), str(out), verbose=0)
    assert again["history"] == {}


def test_mixed_precision_outputs_float32_and_trains():
    import numpy as np

    from kerapose.losses import MaskedL2
    from kerapose.models import MultiPoseNet

    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = MultiPoseNet("resnet18", fpn_size=16, keypoint_head_size=8, keypoint_fuse_size=16, prn_hidden=8)
        assert model.get_layer("keypoint_subnet").compute_dtype == "float16"
        x = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
        out = model(x)
        assert all(v.dtype == "float32" for v in out.values())
        people = model.predict_poses([x[0].astype("uint8")], input_size=(64, 64), max_people=3, score_threshold=0.0)
        assert people[0]["keypoints"].dtype == np.float32 and len(people[0]["scores"]) == 3
        sub = model.keypoint_model
        sub.compile(optimizer=keras.optimizers.Adam(1e-3), loss={k: MaskedL2() for k in sub.output})
        y = {k: np.concatenate([np.zeros((2, 16, 16, 18)), np.ones((2, 16, 16, 1))], -1).astype("float32")
             for k in sub.output}
        first = sub.train_on_batch(x, y, return_dict=True)["loss"]
        # mixed precision wraps the optimizer in dynamic loss scaling: the first steps overflow
        # float16 gradients, are skipped and halve the scale, then training proceeds
        assert isinstance(sub.optimizer, keras.optimizers.LossScaleOptimizer)
        for _ in range(20):
            last = sub.train_on_batch(x, y, return_dict=True)["loss"]
        assert np.isfinite(first) and np.isfinite(last) and last < first
    finally:
        keras.mixed_precision.set_global_policy("float32")
