"""PoseDet as a family: registry and builders, `kerapose info`, the recipes and their errors, the
step-at-epochs schedule, and the training targets of a real augmented crop."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kerapose.cli import main as cli_main
from kerapose.models.registry import build_model, family_named, family_of, family_for_recipe
from kerapose.training.recipe import load_recipe

RECIPES = Path(__file__).resolve().parents[1] / "training" / "configs"
NAMES = ("posedet-r50", "posedet-r18", "posedet-r101", "posedet-mnv2", "posedet-tiny")


def test_family_builds_every_name_and_owns_loaded_models(tmp_path):
    import keras

    from kerapose.models import PoseDet

    fam = family_named("posedet-r50")
    assert fam.name == "posedet" and set(NAMES) <= set(fam.builders)
    assert fam.default_input_size == fam.info_input_size == (512, 512) and fam.size_multiple == 32
    assert family_for_recipe("posedet") is fam and {"posedet", "posedet-box-center"} <= set(fam.oracles)
    model = build_model("posedet-tiny", input_shape=(128, 128, 3))
    assert isinstance(model, PoseDet) and model.name == "posedet_tiny" and model.fpn_size == 16
    path = str(tmp_path / "tiny.keras")
    model.save(path)
    assert family_of(keras.saving.load_model(path)) is fam
    with pytest.raises(ValueError, match="unknown PoseDet backbone 'vgg16'; accepted: resnet18"):
        build_model("posedet-tiny", backbone="vgg16")
    with pytest.raises(ValueError, match="input height 100 is not accepted: it must be a positive multiple of 32"):
        build_model("posedet-tiny", input_shape=(100, 128, 3))


def test_info_of_the_light_configuration(capsys):
    """The README's figures for posedet-mnv2 at 512x512 (posedet-r50's: the package-structure test
    runs `info` on every built-in name)."""
    assert cli_main(["info", "posedet-mnv2", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["input_size"] == [512, 512] and info["class"] == "PoseDet"
    assert info["params"] == 2_608_086
    assert info["macs"] / 1e9 == pytest.approx(4.08, abs=0.01)
    assert [m["name"] for m in info["modules"]][:3] == ["backbone", "fpn", "head"]


def test_recipes_load_with_the_papers_settings():
    r50 = load_recipe(str(RECIPES / "posedet-r50.yaml"), {"data_root": "/data/coco"})
    stage = r50["stages"][0]
    assert r50["model"]["backbone"] == "resnet50" and r50["model"]["input_size"] == [512, 512]
    assert r50["augment"] == {"center": "person", "scale_range": [0.5, 1.5], "rotation_deg": 0, "flip_prob": 0.5,
                              "pad_value": 0}
    assert (stage["optimizer"], stage["learning_rate"], stage["epochs"]) == ("adam", 1e-4, 210)
    assert stage["lr_steps"] == {"epochs": [180, 200], "factor": 0.1} and stage["global_clipnorm"] == 35.0
    mnv2 = load_recipe(str(RECIPES / "posedet-mnv2.yaml"), {"data_root": "/data/coco"})
    assert mnv2["model"]["backbone"] == "mobilenetv2" and mnv2["model"]["fpn_size"] == 64
    overfit = load_recipe(str(RECIPES / "posedet-overfit.yaml"))
    assert overfit["data"]["val_split"] == overfit["data"]["train_split"] == "train2017"
    # --epochs shortens a recipe: steps past the end never apply
    short = load_recipe(str(RECIPES / "posedet-r50.yaml"), {"data_root": "/d", "epochs": 2})
    assert short["stages"][0]["epochs"] == 2


def test_step_schedule_lowers_the_rate_after_the_given_epochs():
    from kerapose.training.optimizers import stage_optimizer, step_schedule

    # Keras passes the 0-based update index: updates 0..19 are epochs 1-2, 20..39 epochs 3-4
    schedule = step_schedule(1e-3, [2, 4], 0.1, steps_per_epoch=10)
    got = [float(schedule(i)) for i in (0, 19, 20, 39, 40, 59)]
    np.testing.assert_allclose(got, [1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5], rtol=1e-6)
    stage = {"learning_rate": 1e-3, "epochs": 6, "optimizer": "adam", "lr_steps": {"epochs": [2, 4], "factor": 0.1},
             "global_clipnorm": 35.0}
    opt = stage_optimizer(stage, total_steps=6 * 10)
    config = opt.get_config()
    assert config["global_clipnorm"] == 35.0
    assert config["learning_rate"]["config"]["boundaries"] == [19, 39]
    np.testing.assert_allclose(config["learning_rate"]["config"]["values"], [1e-3, 1e-4, 1e-5], rtol=1e-6)
    with pytest.raises(ValueError, match="lr_steps needs the stage's total_steps"):
        stage_optimizer(stage, total_steps=None)


_PD = "model: {name: posedet}\ndata: {root: x}\n"
_BAD_RECIPES = [  # (recipe text, the error it must raise)
    (_PD + "stages: [{name: keypoints, epochs: 1}]\n", r"stages\[0\].name is 'keypoints'; accepted: posedet"),
    ("model: {name: posedet, fpn_sise: 8}\ndata: {root: x}\nstages: [{name: posedet, epochs: 1}]\n",
     r"model: unknown key fpn_sise; accepted: backbone, .*fpn_size"),
    ("model: {name: posedet, backbone: vgg16}\ndata: {root: x}\nstages: [{name: posedet, epochs: 1}]\n",
     r"model: backbone: expected one of resnet18, resnet50, resnet101, mobilenetv2, got 'vgg16'"),
    ("model: {name: posedet, input_size: [500, 512]}\ndata: {root: x}\nstages: [{name: posedet, epochs: 1}]\n",
     r"model.input_size: .*multiples of 32, got \[500, 512\]"),
    (_PD + "stages: [{name: posedet, epochs: 3, lr_stepz: {epochs: [2]}}]\n",
     r"stages\[0\]: unknown key lr_stepz; accepted: .*lr_steps"),
    (_PD + "stages: [{name: posedet, epochs: 3, lr_steps: {epochs: [2, 2]}}]\n",
     r"stages\[0\].lr_steps.epochs: expected increasing positive epoch numbers, got \[2, 2\]"),
    (_PD + "stages: [{name: posedet, epochs: 3, lr_steps: {epochs: [2]}, schedule: cosine}]\n",
     r"stages\[0\]: lr_steps is a schedule of its own"),
    (_PD + "stages: [{name: posedet, epochs: 3, lr_steps: {epochs: [2]}, lr_decay: {factor: 0.5, every_steps: 9}}]\n",
     r"stages\[0\]: lr_decay and lr_steps are two schedules: give one"),
    (_PD + "stages: [{name: posedet, epochs: 1, positive_oks: 0.4}]\n",
     r"stages\[0\]: negative_oks \(0.5\) must not exceed positive_oks \(0.4\)"),
    (_PD + "stages: [{name: posedet, epochs: 1, global_clipnorm: 0}]\n",
     r"stages\[0\].global_clipnorm: Input should be greater than 0"),
    (_PD + "stages: [{name: posedet, epochs: 1}]\ntargets: {assign: middle}\n",
     r"targets.assign: Input should be 'centroid' or 'box_center'"),
    (_PD + "stages: [{name: posedet, epochs: 1}]\nevaluate: {nms: soft}\n",
     r"evaluate.nms: Input should be 'oks' or 'iou'"),
    (_PD + "stages: [{name: posedet, epochs: 1}]\nevaluate: {flip: true}\n",
     r"evaluate: unknown key flip; accepted: input_size, max_people"),
    (_PD + "stages: [{name: posedet, epochs: 1}]\nevaluate: {input_size: [64, 100]}\n",
     r"evaluate.input_size: .*multiples of 32, got \[64, 100\]"),
    (_PD + "stages: [{name: posedet, epochs: 1}]\naugment: {rotation: 3}\n",
     "augment: unknown key rotation; accepted: .*rotation_deg"),
    ("model: {name: posedet}\ndata: {root: x, keypoint_set: openpose18}\nstages: [{name: posedet, epochs: 1}]\n",
     "data.keypoint_set 'openpose18' differs from model.keypoint_set 'coco17'"),
]


@pytest.mark.parametrize("text, message", _BAD_RECIPES)
def test_bad_recipes_name_the_key(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as err:
        load_recipe(str(path))
    assert str(err.value).startswith(str(path))


def test_targets_of_a_real_crop(coco_train):
    """keypoint_dataset + PoseDetTargets on a crowded coco-mini image (a crowd region and people
    without keypoints): shapes as declared, each person read back from its candidate, the people
    list in the crop's pixels, heatmap weights 0 over the ignored regions only."""
    from kerapose.codecs.posedet import PoseDetCodec
    from kerapose.data.augment import AugmentConfig, augment
    from kerapose.data.pipeline import keypoint_dataset, read_image
    from kerapose.models.posedet.targets import PoseDetTargets

    size = (256, 320)
    ds = coco_train.restrict([129648])
    rec = ds.record(129648)
    assert rec.iscrowd.any() and (rec.num_keypoints_labelled == 0).any()
    targets = PoseDetTargets("coco17", size, max_people=16)
    cfg = AugmentConfig(output_size=size, rotation_deg=0.0, scale_range=(1.0, 1.0), flip_prob=0.0, center="image",
                        fit_image=True)
    image, y = next(iter(keypoint_dataset(ds, targets, cfg, batch_size=1, shuffle=False, repeat=False)))
    assert image.shape == (1, *size, 3)
    assert {k: tuple(v.shape[1:]) for k, v in y.items()} == targets.output_shapes
    codec = PoseDetCodec("coco17", max_people=16)
    a = codec.num_candidates(size)
    crop = augment(rec, read_image(rec.path), cfg, np.random.default_rng(0), "coco17")["record"]
    rows = y["candidates"].numpy()[0]
    people = rows[a:, :51].reshape(-1, 17, 3)
    keep = (crop.keypoints[..., 2] > 0).any(-1) & ~crop.iscrowd
    np.testing.assert_allclose(people[: keep.sum()], crop.keypoints[keep], atol=1e-3)
    np.testing.assert_allclose(rows[a: a + keep.sum(), 51], crop.areas[keep], rtol=1e-5)
    assert not people[keep.sum():].any()
    assigned = np.flatnonzero(rows[:a, 0] >= 0)
    assert len(assigned) == keep.sum()  # nobody lost on this image
    weights = [y[f"heatmaps_p{lv}"].numpy()[0, ..., -1] for lv in (3, 4, 5, 6)]
    for w in weights:
        assert 0.0 <= w.min() < 1.0 and w.max() == 1.0
    # the ignored region: crowd and keypoint-less boxes; the weights are 1 well away from them
    ignored = crop.iscrowd | (crop.num_keypoints_labelled == 0)
    x1, y1, x2, y2 = crop.boxes[ignored].min(0)[0], crop.boxes[ignored].min(0)[1], *crop.boxes[ignored].max(0)[2:]
    rows_p3, cols_p3 = np.nonzero(weights[0] < 1.0)
    assert (cols_p3 * 8 >= x1 - 8).all() and (cols_p3 * 8 <= x2 + 8).all()
    assert (rows_p3 * 8 >= y1 - 8).all() and (rows_p3 * 8 <= y2 + 8).all()
    with pytest.raises(ValueError, match=r"crop of image 129648 is \(256, 320\), targets expect input_size"):
        PoseDetTargets("coco17", (128, 128)).encode({"record": crop})
