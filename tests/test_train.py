"""Multi-stage training: recipe checks, a full tiny run, and resuming an interrupted run."""

import csv
import json
import os
from pathlib import Path

import keras
import pytest

from kerapose.training.precision import precision_policy
from kerapose.training.recipe import load_recipe as load_config
from kerapose.training.runner import train

RECIPES = Path(__file__).resolve().parents[1] / "training" / "configs"


def test_recipes_load():
    paths = sorted(RECIPES.glob("*.yaml"))
    assert {"quickstart.yaml", "multiposenet-r50.yaml"} <= {p.name for p in paths}
    multiposenet = [p for p in paths if p.name.startswith(("multiposenet", "quickstart", "tiny"))]
    assert len(multiposenet) == 6  # the PAF family's recipes are checked in test_paf_training.py
    for path in multiposenet:
        cfg = load_config(str(path), {"data_root": "/data/coco"} if "multiposenet" in path.name else None)
        assert [s["name"] for s in cfg["stages"]] == ["keypoints", "persons", "prn"]
        assert cfg["model"]["name"] == "multiposenet"


_KP = "stages: [{name: keypoints, epochs: 1}]\ndata: {root: x}\n"
_BAD_RECIPES = [  # (recipe text, the error it must raise: the file, the section and key, what is accepted)
    ("model: {backbone: resnet18}\nstages: [{name: warmup, epochs: 1}]\ndata: {root: x}\n",
     r"bad.yaml: stages\[0\].name is 'warmup'; accepted: keypoints, persons, prn"),
    ("stages: [{name: keypoints, epochs: 1}]\nlearning_rate: 1\n",
     r"bad.yaml: unknown key learning_rate; accepted: augment, batch_size, data, evaluate"),
    ("stages: [{name: keypoints, epochs: 1, schedule: linear}]\ndata: {root: x}\n",
     r"stages\[0\].keypoints.schedule: Input should be 'plateau' or 'cosine'"),
    ("stages: [{name: keypoints, epochs: 1}]\n", "data.root"),
    ("stages: [{name: keypoints, epochs: 1, learning_rat: 1.0e-3}]\ndata: {root: x}\n",
     r"stages\[0\].keypoints: unknown key learning_rat; accepted: batch_size, .*epochs, .*learning_rate"),
    ("stages: [{name: keypoints, epochs: 1, inputs: network}]\ndata: {root: x}\n",
     r"stages\[0\].keypoints: unknown key inputs; accepted:"),
    ("stages: [{name: prn, epochs: 1, inputs: detections}]\ndata: {root: x}\n",
     r"stages\[0\].prn.inputs: Input should be 'annotations' or 'network'"),
    ("stages: [{name: prn, epochs: 1, boxes: detections}]\ndata: {root: x}\n",
     r"stages\[0\].prn: boxes: detections crops the network's heatmaps: it needs inputs: network"),
    ("stages: [{name: prn, epochs: 1, inputs: network, boxes: found}]\ndata: {root: x}\n",
     r"stages\[0\].prn.boxes: Input should be 'annotations' or 'detections'"),
    (_KP + "evaluate: {pose_score: mean}\n", r"evaluate.pose_score: Input should be 'box' or 'box_keypoints'"),
    (_KP + "model: {pose_score: 1}\n", r"model.pose_score: Input should be 'box' or 'box_keypoints'"),
    (_KP + "model: {backbone: resnet18, fpn_sise: 8}\n", r"model: unknown key fpn_sise; accepted: backbone, .*fpn_size"),
    (_KP + "model: {input_size: [100, 128]}\n", r"model.input_size: .*multiples of 32, got \[100, 128\]"),
    (_KP + "mixed_precision: half\n", "mixed_precision: expected false, 'float32', true, 'float16', 'bfloat16' or 'auto', got 'half'"),
    (_KP + "evaluate: {flip: true}\n", r"evaluate: unknown key flip; accepted: flip_test, max_people"),
    (_KP + "targets: {sigma: 0}\n", "targets.sigma: Input should be greater than 0"),
    (_KP + "augment: {rotation: 3}\n", "augment: unknown key rotation; accepted: .*rotation_deg"),
    (_KP + "data: {root: x, synthetic: {num_trian: 3}}\n", "data.synthetic: unknown key num_trian; accepted:"),
    ("stages: [{name: keypoints, epochs: 1, warmup_steps: 10}]\ndata: {root: x}\n",
     r"stages\[0\].keypoints: warmup_steps needs schedule: cosine, got schedule: plateau"),
    ("stages: [{name: keypoints, epochs: 1, schedule: cosine, warmup_steps: -1}]\ndata: {root: x}\n",
     r"stages\[0\].keypoints.warmup_steps: Input should be greater than or equal to 0"),
    ("model: {name: openpose}\nstages: [{name: paf, epochs: 1}]\ndata: {root: x}\n",
     "model.name: no training recipe for model 'openpose'; accepted: multiposenet, paf-baseline, ftn, mln"),
]


def test_cosine_schedule_with_warmup():
    from kerapose.training.optimizers import stage_optimizer as _optimizer

    opt = _optimizer({"learning_rate": 2e-3, "schedule": "cosine", "warmup_steps": 10}, total_steps=110)
    # a linear ramp from 1 % to the peak over 10 steps, then a cosine down to 1 % at step 110
    rates = [float(opt._learning_rate(s)) for s in (0, 5, 10, 60, 110)]
    assert rates[0] == pytest.approx(2e-5) and rates[1] == pytest.approx((2e-5 + 2e-3) / 2)
    assert rates[2] == pytest.approx(2e-3) and rates[3] == pytest.approx(2e-3 * (0.01 + 0.99 * 0.5))
    assert rates[4] == pytest.approx(2e-5)
    assert float(opt.learning_rate) == pytest.approx(2e-5)  # what the optimizer uses at its step 0
    with pytest.raises(ValueError, match="warmup_steps \\(110\\) must be below the stage's 110 steps"):
        _optimizer({"learning_rate": 1e-3, "schedule": "cosine", "warmup_steps": 110}, total_steps=110)


@pytest.mark.parametrize("text,match", _BAD_RECIPES)
def test_config_errors(tmp_path, text, match):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_config(str(bad))


def test_config_missing_file_and_precision_policies(tmp_path):
    assert precision_policy("bfloat16") == "mixed_bfloat16" and precision_policy(True) == "mixed_float16"
    assert precision_policy(False) is None and precision_policy("float32") is None


def test_auto_precision_is_bfloat16_only_on_cpus_with_bfloat16_instructions(tmp_path, monkeypatch):
    from kerapose.training import precision

    with_bf16, without = tmp_path / "with", tmp_path / "without"
    with_bf16.write_text("flags\t\t: fpu avx2 avx512f avx512_vnni avx512_bf16 amx_tile\n")
    without.write_text("flags\t\t: fpu avx2 avx512f avx512_vnni\nmodel name\t: not_avx512_bf16\n")
    assert precision.cpu_has_bfloat16(str(with_bf16)) and not precision.cpu_has_bfloat16(str(without))
    assert not precision.cpu_has_bfloat16(str(tmp_path / "missing"))
    for cpuinfo, policy, says in ((with_bf16, "mixed_bfloat16", "auto: bfloat16"),
                                  (without, None, "auto: float32 (this CPU has no bfloat16 instructions")):
        monkeypatch.setattr(precision, "CPUINFO", str(cpuinfo))
        assert precision.precision_policy("auto") == policy
        assert says in precision.describe_auto_precision()
    with pytest.raises(FileNotFoundError):
        load_config(str(tmp_path / "missing.yaml"))


# The first run, in its own process, SIGKILLs itself in the middle of the keypoint stage's second
# epoch (after its second batch): no exception, no cleanup, as when a machine is pre-empted.
_KILLED_RUN = """
import os, signal, sys
import keras
from kerapose.training.recipe import load_recipe as load_config
from kerapose.training.runner import train

class Kill(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == 1 and batch == 1:
            os.kill(os.getpid(), signal.SIGKILL)

cfg = load_config(sys.argv[1], {"epochs": 3})
train(cfg, sys.argv[2], verbose=0, extra_callbacks=[Kill()])
"""


class _Steps(keras.callbacks.Callback):
    """Records each stage's optimizer step counter when its fit ends."""

    def __init__(self):
        super().__init__()
        self.iterations: list[int] = []

    def on_train_end(self, logs=None):
        self.iterations.append(int(self.model.optimizer.iterations.numpy()))


def test_sigkilled_training_resumes_and_finishes_the_planned_steps(tmp_path):
    import signal
    import subprocess
    import sys

    recipe = str(RECIPES / "tiny-test.yaml")
    out = tmp_path / "run"
    killed = subprocess.run([sys.executable, "-c", _KILLED_RUN, recipe, str(out)], capture_output=True, text=True,
                            timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (out / "progress.json").exists()
    assert (out / "1-keypoints" / "last.keras").is_file()  # epoch 1 was checkpointed before the kill
    assert [int(r["epoch"]) for r in csv.DictReader(open(out / "1-keypoints" / "log.csv"))] == [0]

    cfg = load_config(recipe, {"epochs": 3})
    planned = [int(st["steps_per_epoch"]) * 3 for st in cfg["stages"]]
    steps = _Steps()
    metrics = train(cfg, str(out), verbose=0, extra_callbacks=[steps])
    rows = list(csv.DictReader(open(out / "1-keypoints" / "log.csv")))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]  # resumed at epoch 2, not restarted
    # the optimizer state came back with the backup: every stage ends on its planned step count
    assert steps.iterations == planned
    assert json.load(open(out / "progress.json"))["stages"] == ["1-keypoints", "2-persons", "3-prn"]
    for key in ("AP", "AP50", "AR"):
        assert 0.0 <= metrics[key] <= 1.0
    model = keras.saving.load_model(out / "model.keras")
    assert model.count_params() > 0 and not os.path.exists(str(out / "model.keras.tmp.keras"))
    # a third run finds every stage done and only evaluates
    again = train(load_config(recipe, {"epochs": 3}), str(out), verbose=0)
    assert again["history"] == {} and again["AP"] == metrics["AP"]
    # a bfloat16 run's global dtype policy does not outlive it
    train(load_config(recipe, {"epochs": 3, "mixed_precision": "bfloat16"}), str(out), verbose=0)
    assert keras.mixed_precision.global_policy().name == "float32"


@pytest.mark.parametrize("precision", ["float16", "bfloat16"])
def test_mixed_precision_outputs_float32_and_trains(precision):
    import numpy as np

    from kerapose.losses import MaskedL2
    from kerapose.models import MultiPoseNet

    keras.mixed_precision.set_global_policy(precision_policy(precision))
    try:
        model = MultiPoseNet("resnet18", fpn_size=16, keypoint_head_size=8, keypoint_fuse_size=16, prn_hidden=8)
        assert model.get_layer("keypoint_subnet").compute_dtype == precision
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
        # float16 wraps the optimizer in dynamic loss scaling: the first steps overflow float16
        # gradients, are skipped and halve the scale, then training proceeds; bfloat16 has
        # float32's exponent range and needs none
        assert isinstance(sub.optimizer, keras.optimizers.LossScaleOptimizer) == (precision == "float16")
        for _ in range(20):
            last = sub.train_on_batch(x, y, return_dict=True)["loss"]
        assert np.isfinite(first) and np.isfinite(last) and last < first
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_multiposenet_overfits_a_few_coco_images(coco_mini_root, tmp_path):
    """A small MultiPoseNet (ResNet-18, narrow heads) trained on real coco-mini train images with
    a fixed view finds those people again, scored end to end (boxes -> PRN -> keypoints ->
    pycocotools). A shorter run than the recipe's (three one-person images at 192x192 with the
    quickstart's half-width ResNet-18, fewer steps: 337 s against 712 s for the recipe's 256x256
    full width, both measured under load); the recipe's own figure is in the README (Training)."""
    cfg = load_config(str(RECIPES / "multiposenet-overfit.yaml"), {"data_root": str(coco_mini_root)})
    assert cfg["model"]["backbone"] == "resnet18" and cfg["model"]["input_size"] == [256, 256]
    cfg["model"].update(input_size=[192, 192], backbone_width=0.5)
    cfg["data"]["image_ids"] = ids = [30752, 37666, 84533]
    cfg["batch_size"] = 3
    for stage, epochs in zip(cfg["stages"], (4, 4, 6)):
        stage["epochs"] = epochs
    # RetinaNet's own inference threshold: a person the short detector stage scores below the
    # recipe's 0.3 still counts (one of three people is a third of the AP; at 0.3 this run
    # scored 0.711, 0.455 and 0.350 in three runs, the spread of CPU thread nondeterminism)
    cfg["evaluate"]["score_threshold"] = 0.05
    metrics = train(cfg, str(tmp_path / "overfit"), verbose=0)
    hist = metrics["history"]
    print(f"\nMultiPoseNet-R18 overfit on {ids}: AP {metrics['AP']:.3f} (AP50 {metrics['AP50']:.3f}, "
          f"{metrics['people']} people); fit " + ", ".join(f"{k} {v['seconds']:.0f} s" for k, v in hist.items()))
    assert hist["1-keypoints"]["heatmaps_loss"][-1] < 0.1 * hist["1-keypoints"]["heatmaps_loss"][0]
    assert metrics["images"] == len(ids)
    # The recipe's longer run reaches 0.685. This short one varies from run to run with CPU thread
    # nondeterminism, and with three people AP moves in large steps: at 256x256 full width it
    # scored 0.670, 0.366, 0.560 (and 0.335 with cosine-decayed stages), at 192x192 half width
    # 0.673 (10 person epochs, 10 PRN epochs) and 0.664 (5, 10), so the bar is set below the
    # lowest of those; 4 and 6, as here, cut the test's time and passed it.
    assert metrics["AP"] >= 0.25
