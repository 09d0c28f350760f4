"""PAF-family training: targets, multi-scale / flip inference, recipes, resume, FTN overfit.

References are independent of the code under test: the flip channel maps are rebuilt from the
keypoint *names* (left <-> right), the multi-scale average from OpenCV resizes and the network
run image by image, the optimizer step from Caffe's update written out by hand, AP from
pycocotools. Real coco-mini images throughout.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import keras
import numpy as np
import pytest
from pycocotools import mask as mask_utils

import kerapose  # noqa: F401  (registers the custom objects for load_model)
from kerapose.codecs.heatmap import HeatmapCodec
from kerapose.codecs.paf import PafCodec
from kerapose.data.augment import augment
from kerapose.data.coco import ImageRecord
from kerapose.data.paf_targets import PafTargets, supervised_outputs
from kerapose.data.pipeline import read_image
from kerapose.models import FeatureTransferNet
from kerapose.models.paf.tta import PafMultiScale, multiscale_maps, paf_flip_permutation
from kerapose.skeleton import COCO17, OPENPOSE18, coco17_to_openpose18
from kerapose.models.paf.recipe import build_paf_model, evaluate_paf_model, val_augment
from kerapose.training.optimizers import CaffeSGD
from kerapose.training.recipe import load_recipe as load_config
from kerapose.training.runner import train

RECIPES = Path(__file__).resolve().parents[1] / "training" / "configs"
# Two coco-mini train images with one clearly visible person each (the GT round trip through
# the 128x128 evaluation view gives AP 1.0 on both).
OVERFIT_IDS = [30752, 535506]


# ----------------------------------------------------------------------------- name-based flips


def mirror_name(name: str) -> str:
    for a, b in (("left", "right"), ("right", "left")):
        if name.startswith(a + "_"):
            return b + name[len(a):]
    return name


def reference_flip(ks):
    """Heatmap channel map and PAF (index, sign) from the keypoint names alone."""
    hm = [ks.keypoints.index(mirror_name(n)) for n in ks.keypoints] + list(range(ks.num_keypoints,
                                                                                 ks.num_heatmap_channels))
    index, sign = [], []
    for a, b in ks.limbs:
        fa, fb = (ks.keypoints.index(mirror_name(ks.keypoints[i])) for i in (a, b))
        if (fa, fb) in ks.limbs:
            j, d = ks.limbs.index((fa, fb)), 1.0
        else:
            j, d = ks.limbs.index((fb, fa)), -1.0
        index += [2 * j, 2 * j + 1]
        sign += [-d, d]  # mirroring negates x
    return np.array(hm), np.array(index), np.array(sign, np.float32)


def test_paf_flip_permutation_matches_names():
    _, index, sign = reference_flip(OPENPOSE18)
    got_index, got_sign = paf_flip_permutation(OPENPOSE18)
    np.testing.assert_array_equal(got_index, index)
    np.testing.assert_array_equal(got_sign, sign)
    # COCO-17's limb list lists the eyes' limb (1, 2) whose mirror is itself reversed: sign -1 on y
    index17, sign17 = paf_flip_permutation(COCO17)
    eyes = COCO17.limbs.index((1, 2))
    assert index17[2 * eyes] == 2 * eyes and sign17[2 * eyes + 1] == -1.0
    from kerapose.skeleton import KeypointSet

    lopsided = KeypointSet("lopsided", ("l_a", "r_a", "c"), ((0, 1),), ((0, 2),), (0.1, 0.1, 0.1))
    with pytest.raises(ValueError, match="no mirrored limb"):
        paf_flip_permutation(lopsided)


# ----------------------------------------------------------------------------- targets


def crop_of(record, image, size=(128, 160)):
    return augment(record, image, val_augment(size, 128), np.random.default_rng(0), "coco17")


@pytest.fixture(scope="module")
def busy_crop(coco_train):
    """A real crop with several people, crowd regions and unlabelled people (image 174375)."""
    rec = coco_train.record(174375)
    assert rec.iscrowd.any() and (rec.num_keypoints_labelled[~rec.iscrowd] == 0).any()
    return crop_of(rec, read_image(rec.path))


def test_target_shapes_packing_and_background(busy_crop):
    t = PafTargets("openpose18", (128, 160), stages=2)
    out = t.encode(busy_crop)
    assert list(out) == ["pafs_stage1", "heatmaps_stage1", "pafs_stage2", "heatmaps_stage2"]
    assert {k: v.shape for k, v in out.items()} == t.output_shapes
    assert t.output_shapes["heatmaps_stage1"] == (16, 20, 18 + 1 + 1)  # parts, background, W
    assert t.output_shapes["pafs_stage1"] == (16, 20, 38 + 1)
    rec = busy_crop["record"]
    kp18 = coco17_to_openpose18(rec.keypoints[~rec.iscrowd])
    parts = HeatmapCodec("openpose18", stride=8, sigma=7 / 8).encode(kp18, (128, 160))
    heat, paf = out["heatmaps_stage1"], out["pafs_stage1"]
    np.testing.assert_array_equal(heat[..., :18], parts)
    np.testing.assert_array_equal(paf[..., :38], PafCodec("openpose18", stride=8).encode(kp18, (128, 160)))
    np.testing.assert_allclose(heat[..., 18], 1.0 - parts.max(-1), atol=1e-7)  # background
    assert parts.max() > 0.9 and heat[..., 18].min() < 0.1
    np.testing.assert_array_equal(heat[..., 19], paf[..., 38])  # one W for both
    for name in ("pafs_stage2", "heatmaps_stage2"):  # every stage: the same targets
        np.testing.assert_array_equal(out[name], out[name.replace("2", "1")])


def test_target_neck_is_shoulders_midpoint():
    t = PafTargets("openpose18", (64, 64), stages=1)
    kp = np.zeros((1, 17, 3))
    kp[0, 5] = (20.0, 30.0, 2)  # left shoulder
    kp[0, 6] = (44.0, 30.0, 2)  # right shoulder
    heat, pafs = t.maps(kp)
    neck = heat[..., OPENPOSE18.index("neck")]
    y, x = np.unravel_index(np.argmax(neck), neck.shape)
    assert (8 * x + 3.5, 8 * y + 3.5) == (35.5, 27.5)  # the cell nearest (32, 30)
    assert neck.max() > 0.8
    # both neck -> shoulder limbs have fields; no other limb does
    drawn = {i for i in range(OPENPOSE18.num_limbs) if np.abs(pafs[..., 2 * i:2 * i + 2]).max() > 0}
    assert drawn == {OPENPOSE18.limbs.index((1, 2)), OPENPOSE18.limbs.index((1, 5))}


def box_rle(box, hw):
    m = np.zeros(hw, np.uint8)
    x1, y1, x2, y2 = box
    m[y1:y2, x1:x2] = 1
    return mask_utils.encode(np.asfortranarray(m))


def test_ignore_mask_w():
    """W is 0 over crowds and over people without keypoints, 1 on labelled people and elsewhere."""
    hw = (64, 96)
    kp = np.zeros((3, 17, 3), np.float32)
    kp[0, 0] = (10, 10, 2)
    kp[0, 5] = (10, 20, 2)
    boxes = np.array([[0, 0, 24, 40], [40, 0, 64, 32], [72, 32, 96, 64]], np.float32)
    rec = ImageRecord(1, "x.jpg", "x.jpg", *hw, keypoints=kp, boxes=boxes,
                      iscrowd=np.array([False, False, True]), areas=np.ones(3, np.float32),
                      ann_ids=np.arange(3), segmentations=[box_rle(b.astype(int), hw) for b in boxes])
    w = PafTargets("openpose18", hw, stages=1).encode({"record": rec})["pafs_stage1"][..., -1]
    assert w.shape == (8, 12)
    assert np.all(w[0:5, 0:3] == 1)  # labelled person
    assert np.all(w[0:4, 5:8] == 0)  # person without keypoints
    assert np.all(w[4:8, 9:12] == 0)  # crowd
    assert np.all(w[5:8, 0:8] == 1)  # background


def mirror_crop(crop):
    """The same crop mirrored: keypoints x -> W-1-x with the COCO left/right swap, masks mirrored."""
    rec = crop["record"]
    w = rec.width
    kp = rec.keypoints.copy()
    kp[..., 0] = np.where(kp[..., 2] > 0, w - 1 - kp[..., 0], 0)
    kp = kp[:, COCO17.flip_index]
    segs = [mask_utils.encode(np.asfortranarray(mask_utils.decode(s)[:, ::-1])) for s in rec.segmentations]
    from dataclasses import replace

    return {"record": replace(rec, keypoints=kp, segmentations=segs)}


def test_targets_flip_consistency(busy_crop):
    """Targets of the mirrored crop = mirrored targets with heatmap channels swapped and PAF limbs
    swapped with x negated (the map the flip test of inference inverts)."""
    t = PafTargets("openpose18", (128, 160), stages=1)
    hm_perm, paf_index, paf_sign = reference_flip(OPENPOSE18)
    plain, flipped = t.encode(busy_crop), t.encode(mirror_crop(busy_crop))
    heat, paf = plain["heatmaps_stage1"], plain["pafs_stage1"]
    f_heat, f_paf = flipped["heatmaps_stage1"][:, ::-1], flipped["pafs_stage1"][:, ::-1]
    np.testing.assert_allclose(f_heat[..., hm_perm], heat[..., :19], atol=1e-6)
    np.testing.assert_allclose(f_paf[..., paf_index] * paf_sign, paf[..., :38], atol=1e-6)
    np.testing.assert_array_equal(f_heat[..., 19], heat[..., 19])  # W
    assert np.abs(paf[..., :38]).max() > 0.9


# ----------------------------------------------------------------------------- multi-scale / flip


def tiny_paf_net(seed: int = 0) -> keras.Model:
    """A random stride-8 network with PAF-family outputs (19 heatmaps, 38 PAFs)."""
    keras.utils.set_random_seed(seed)
    x = inp = keras.Input((None, None, 3))
    x = keras.layers.Rescaling(1 / 128.0, -1.0)(x)
    for f in (8, 8, 8):
        x = keras.layers.Conv2D(f, 3, padding="same", activation="tanh")(x)
        x = keras.layers.AveragePooling2D(2)(x)
    out = {"heatmaps": keras.layers.Conv2D(19, 3, padding="same")(x),
           "pafs": keras.layers.Conv2D(38, 3, padding="same")(x)}
    net = keras.Model(inp, out)
    net.keypoint_set = OPENPOSE18
    return net


def reference_tta(net, image, scales, flip):
    """numpy / OpenCV: resize, run per image, resize back, mirror, swap by names, average."""
    hm_perm, paf_index, paf_sign = reference_flip(OPENPOSE18)
    h, w = image.shape[:2]
    grid = (w // 8, h // 8)
    acc_h, acc_p, n = 0.0, 0.0, 0
    for s in scales:
        size = (max(8, int(round(w * s / 8)) * 8), max(8, int(round(h * s / 8)) * 8))
        scaled = image if s == 1.0 else cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
        for mirrored in ([False, True] if flip else [False]):
            x = scaled[:, ::-1] if mirrored else scaled
            out = net.predict_on_batch(np.ascontiguousarray(x)[None])
            hm = cv2.resize(np.asarray(out["heatmaps"][0]), grid, interpolation=cv2.INTER_LINEAR)
            pf = cv2.resize(np.asarray(out["pafs"][0]), grid, interpolation=cv2.INTER_LINEAR)
            if mirrored:
                hm, pf = hm[:, ::-1][..., hm_perm], pf[:, ::-1][..., paf_index] * paf_sign
            acc_h, acc_p, n = acc_h + hm, acc_p + pf, n + 1
    return acc_h / n, acc_p / n


@pytest.mark.parametrize("scales,flip", [((1.0, 0.75, 0.5, 0.25), False), ((1.0, 0.75), True), ((1.0,), True)])
def test_multiscale_flip_matches_numpy_reference(coco_train, scales, flip):
    net = tiny_paf_net()
    rec = coco_train.record(OVERFIT_IDS[0])
    image = cv2.resize(read_image(rec.path), (200, 136)).astype(np.float32)  # 136x200: 17x25 cells
    want_h, want_p = reference_tta(net, image, scales, flip)
    layer = PafMultiScale(net, scales=scales, flip=flip)
    got = layer(image[None])
    assert got["heatmaps"].shape == (1, 17, 25, 19) and got["pafs"].shape == (1, 17, 25, 38)
    np.testing.assert_allclose(np.asarray(got["heatmaps"][0]), want_h, atol=2e-5)
    np.testing.assert_allclose(np.asarray(got["pafs"][0]), want_p, atol=2e-5)
    plain = net.predict_on_batch(image[None])
    assert np.abs(np.asarray(got["pafs"]) - plain["pafs"]).max() > 1e-3  # the passes do change the maps
    hm_fn, _ = multiscale_maps(net, image[None], scales, flip)  # the function API is the layer's
    np.testing.assert_array_equal(np.asarray(hm_fn), np.asarray(got["heatmaps"]))


def test_multiscale_layer_saves_and_loads_inside_a_model(tmp_path):
    net = FeatureTransferNet(input_shape=(None, None, 3), width_multiplier=0.0625, transfer_blocks=1,
                             refine_blocks=1, name="ftn_tiny")
    image = keras.Input((None, None, 3), name="image")
    maps = PafMultiScale(net, scales=(1.0, 0.5), flip=True, name="tta")(image)
    wrapper = keras.Model(image, maps)
    x = np.random.default_rng(1).uniform(0, 255, (1, 64, 80, 3)).astype(np.float32)
    want = wrapper(x)
    wrapper.save(tmp_path / "tta.keras")
    loaded = keras.saving.load_model(tmp_path / "tta.keras")
    got = loaded(x)
    np.testing.assert_allclose(np.asarray(got["pafs"]), np.asarray(want["pafs"]), atol=1e-6)
    cfg = loaded.get_layer("tta").get_config()
    assert cfg["scales"] == [1.0, 0.5] and cfg["flip"] is True
    assert len(loaded.weights) == len(net.weights)  # the network is stored once
    fixed = FeatureTransferNet(input_shape=(64, 64, 3), width_multiplier=0.0625, transfer_blocks=1, refine_blocks=1)
    with pytest.raises(ValueError, match=r"needs input_shape \(None, None, 3\)"):
        PafMultiScale(fixed, scales=(1.0, 0.5))
    with pytest.raises(ValueError, match="scales"):
        PafMultiScale(net, scales=(1.0, -0.5))


# ----------------------------------------------------------------------------- optimizer, recipes


def test_caffe_sgd_step_is_caffes_update():
    """v = mu v + lr (g + wd w) on kernels (not biases); w -= v."""
    layer = keras.layers.Dense(3)
    layer.build((None, 4))
    w0, b0 = (np.asarray(v).copy() for v in layer.weights)
    g = [np.full_like(w0, 0.5), np.full_like(b0, 0.25)]
    opt = CaffeSGD(0.1, momentum=0.9, l2=0.01)
    v_w, v_b = np.zeros_like(w0), np.zeros_like(b0)
    w, b = w0.copy(), b0.copy()
    for _ in range(2):
        opt.apply(g, layer.weights)
        v_w = 0.9 * v_w + 0.1 * (g[0] + 0.01 * w)
        v_b = 0.9 * v_b + 0.1 * g[1]
        w, b = w - v_w, b - v_b
    np.testing.assert_allclose(np.asarray(layer.kernel), w, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(layer.bias), b, rtol=1e-6)
    assert CaffeSGD.from_config(opt.get_config()).l2 == 0.01


def test_paf_recipes_load_with_the_papers_settings():
    for name, cls, stages in (("paf-baseline", "PafBaseline", 6), ("ftn", "FeatureTransferNet", 2),
                              ("mln", "MultiLevelNet", 2)):
        cfg = load_config(str(RECIPES / f"{name}.yaml"), {"data_root": "/data/coco"})
        assert cfg["model"]["name"] == name and cfg["model"]["input_size"] == [368, 368]
        assert cfg["model"]["preprocessing"] == "openpose"
        st = cfg["stages"][0]
        assert (st["optimizer"], st["learning_rate"], st["momentum"], st["weight_decay"]) == ("sgd", 4e-5, 0.9, 5e-4)
        aug = cfg["augment"]
        assert (aug["target_height"], aug["pad_value"], aug["center"]) == (220, 128, "person")
        t = PafTargets("openpose18", tuple(cfg["model"]["input_size"]), stages=stages)
        assert t.output_shapes["heatmaps_stage1"][:2] == (46, 46)
    ov = load_config(str(RECIPES / "ftn-overfit.yaml"))
    assert ov["data"]["train_split"] == ov["data"]["val_split"] and ov["data"]["image_ids"]
    model = build_paf_model({**load_config(str(RECIPES / "paf-baseline.yaml"),
                                           {"data_root": "x"})["model"]})
    assert supervised_outputs(model)[-2:] == ["pafs_stage6", "heatmaps_stage6"]
    assert model.get_layer("backbone").get_layer("preprocess").mode == "openpose"  # pixels / 256 - 0.5


def test_paf_recipe_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {name: ftn}\ndata: {root: x}\nstages: [{name: keypoints, epochs: 1}]\n")
    with pytest.raises(ValueError, match=r"stages\[0\].name is 'keypoints'; accepted: paf"):
        load_config(str(bad))
    bad.write_text("model: {name: ftn, input_size: [100, 100]}\ndata: {root: x}\nstages: [{name: paf, epochs: 1}]\n")
    with pytest.raises(ValueError, match="model: input_size: expected \\[H, W\\], positive multiples of 8"):
        load_config(str(bad))
    bad.write_text("model: {name: ftn}\ndata: {root: x}\nstages: [{name: paf, epochs: 1, lr: 1}]\n")
    with pytest.raises(ValueError, match=r"stages\[0\]: unknown key lr; accepted: batch_size"):
        load_config(str(bad))
    bad.write_text("model: {name: ftn}\ndata: {root: x}\nstages: [{name: paf, epochs: 1}]\nevaluate: {scale: [1]}\n")
    with pytest.raises(ValueError, match=r"evaluate: unknown key scale; accepted: .*scales"):
        load_config(str(bad))
    bad.write_text("model: {name: ftn}\ndata: {root: x}\nstages: [{name: paf, epochs: 1}]\naugment: {center: x}\n")
    with pytest.raises(ValueError, match="augment: center: expected one of"):
        load_config(str(bad))


# ----------------------------------------------------------------------------- training


def recipe(root, out_ids, **stage) -> dict:
    cfg = load_config(str(RECIPES / "ftn-overfit.yaml"), {"data_root": str(root)})
    cfg["data"]["image_ids"] = out_ids
    cfg["stages"][0].update(stage)
    return cfg


class _Interrupt(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt("simulated kill")


def test_interrupted_training_resumes(coco_mini_root, tmp_path):
    cfg = recipe(coco_mini_root, OVERFIT_IDS[:1], epochs=2, steps_per_epoch=1)
    # the smallest FTN (no transfer, no refinement: stage 1 only) keeps the two traces short
    cfg["model"].update(width_multiplier=0.0625, transfer=False, refinement=False)
    cfg["model"]["input_size"] = [64, 64]
    cfg["evaluate"].update(per_keypoint=False)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(cfg, str(out), verbose=0, extra_callbacks=[_Interrupt()])
    assert not (out / "progress.json").exists()
    assert (out / "1-paf" / "last.keras").is_file()  # epoch 1 was checkpointed
    metrics = train(cfg, str(out), verbose=0)
    rows = list(csv.DictReader(open(out / "1-paf" / "log.csv")))
    assert [int(r["epoch"]) for r in rows] == [0, 1]  # resumed at epoch 2, not restarted
    assert all({"loss", "val_loss", "pafs_stage1_loss", "heatmaps_stage1_loss"} <= set(r) for r in rows)
    assert all(float(r["val_loss"]) > 0 for r in rows)
    assert json.load(open(out / "progress.json"))["stages"] == ["1-paf"]
    assert 0.0 <= metrics["AP"] <= 1.0 and metrics["images"] == 1
    model = keras.saving.load_model(out / "model.keras")
    assert type(model) is FeatureTransferNet and model.get_config()["width_multiplier"] == 0.0625
    again = train(cfg, str(out), verbose=0)  # every stage done: only evaluates
    assert again["history"] == {} and again["AP"] == metrics["AP"]


class _BatchLoss(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.first = None

    def on_train_batch_end(self, batch, logs=None):
        if self.first is None:
            self.first = float(logs["loss"])


def test_ftn_overfits_a_few_coco_images(coco_mini_root, coco_train, tmp_path):
    """A narrow FTN (every module of the paper's topology, widths x 0.125: 0.36 M parameters),
    trained by `train_paf` on two coco-mini train images at 128x128 with a fixed view, finds the
    people on those images again (numpy decoder + pycocotools)."""
    cfg = recipe(coco_mini_root, OVERFIT_IDS, epochs=2, steps_per_epoch=125)
    cfg["batch_size"] = 2
    cfg["evaluate"].update(per_keypoint=False)
    assert cfg["model"]["width_multiplier"] == 0.125 and cfg["model"]["input_size"] == [128, 128]
    keras.utils.set_random_seed(cfg["seed"])  # train_paf builds its model right after this call
    untrained = build_paf_model(cfg["model"])
    ap0 = evaluate_paf_model(untrained, coco_train, (128, 128), image_ids=OVERFIT_IDS, per_keypoint=False,
                             progress=False)["AP"]
    losses = _BatchLoss()
    metrics = train(cfg, str(tmp_path / "overfit"), verbose=0, extra_callbacks=[losses])
    last = metrics["history"]["1-paf"]["loss"][-1]
    print(f"\nFTN x0.125 overfit on {OVERFIT_IDS}: loss {losses.first:.1f} -> {last:.1f}, "
          f"AP {ap0:.3f} -> {metrics['AP']:.3f} ({metrics['people']} people found); fit "
          f"{metrics['history']['1-paf']['seconds']:.0f} s, evaluation {metrics['eval_seconds']:.0f} s")
    assert last < 0.3 * losses.first
    assert metrics["AP"] > ap0 + 0.2
