"""PAF family: VGG-19 front end, OpenPose baseline, Feature Transfer Network, Multi-level Network.

Parameter counts are checked against the papers' figures and against closed-form counts written
out here layer by layer (independent of the builders); outputs against keras.applications.
"""

import h5py
import keras
import numpy as np
import pytest

import kerapose  # noqa: F401  (registers the custom objects for load_model)
from kerapose.backbones.vgg import vgg19_backbone
from kerapose.models.paf.networks import FeatureTransferNet, MultiLevelNet, PafBaseline, module_weight_counts

PAPER_FTN_WEIGHTS = 21_278_912
J, L = 19, 38  # openpose18: 18 parts + background, 19 limbs


# ---------------------------------------------------------------- closed-form counts

def conv(k, cin, cout, bias=True):
    return k * k * cin * cout + (cout if bias else 0)


def vgg_cpm(bias):
    chans = [3, 64, 64, 128, 128, 256, 256, 256, 256, 512, 512, 256, 128]
    return sum(conv(3, a, b, bias) for a, b in zip(chans[:-1], chans[1:]))


def blocks(cin, n, bias, width=128):
    """n blocks of three 3x3 convs, the first reading cin channels."""
    return conv(3, cin, width, bias) + conv(3, width, width, bias) * (3 * n - 1)


def ftn_expected(bias, transfer=True, refinement=True, k=4, tblocks=4, rblocks=7):
    total = vgg_cpm(bias)
    widths = {J: [128, 128, 128, 512, J], L: [128, 128, 128, 512, L]}
    kernels = [3, 3, 3, 3, 1]
    for out in (J, L):
        w = widths[out]
        cin = [128] + w[:4]
        if transfer and k < 5:
            cin[k] += 128  # transferred features concatenated to Conv-(k+1)'s input
        total += sum(conv(kernels[i], cin[i], w[i], bias) for i in range(5))
        if transfer:
            other = L if out == J else J
            total += blocks(widths[other][k - 1], tblocks, bias) + conv(1, 128 * tblocks, 128, bias)
        if refinement:
            rin = J + L + 128 + (128 if transfer and k == 5 else 0)
            total += blocks(rin, rblocks, bias) + conv(1, 128 * rblocks, 512, bias) + conv(1, 512, out, bias)
    return total


def mln_expected(bias, levels=("lower", "upper", "joint_limb", "global"), rblocks=7):
    total = vgg_cpm(bias)
    for out in (J, L):  # joint / limb branch: Conv-1..3 3x3 128, Conv-4 3x3 512, Conv-5 1x1
        total += 3 * conv(3, 128, 128, bias) + conv(3, 128, 512, bias) + conv(1, 512, out, bias)
    level_modules = {"lower": conv(3, 256, 128, bias), "upper": 0,
                     "joint_limb": conv(1, 512 + 512, 128, bias), "global": conv(1, 128, 128, bias)}
    total += sum(level_modules[lv] for lv in levels)
    rin = J + L + 128 * len(levels)
    for out in (J, L):
        total += blocks(rin, rblocks, bias) + conv(1, 128 * rblocks, 512, bias) + conv(1, 512, out, bias)
    return total


def counts(model):
    total = sum(int(np.prod(v.shape)) for v in model.weights)
    no_bias = sum(int(np.prod(v.shape)) for v in model.weights if not v.path.split("/")[-1].startswith("bias"))
    return total, no_bias


def sources(model, layer_name):
    """Names of the modules whose outputs feed ``layer_name`` (graph wiring)."""
    node = model.get_layer(layer_name)._inbound_nodes[0]
    return [t._keras_history.operation.name for t in node.input_tensors]


def image(h=64, w=64, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (1, h, w, 3)).astype("float32")


# ---------------------------------------------------------------- VGG-19 front end

def test_vgg_backbone_loads_applications_weights_by_name(tmp_path):
    from keras.src.legacy.saving import legacy_h5_format

    ref = keras.applications.VGG19(weights=None, include_top=False)
    rng = np.random.default_rng(0)
    ref.set_weights([rng.normal(0, 0.05, w.shape).astype("float32") for w in ref.get_weights()])
    path = tmp_path / "vgg19_notop.h5"
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, ref)
    ours = vgg19_backbone(weights=str(path))
    x = image(48, 40)
    ref_b42 = keras.Model(ref.input, ref.get_layer("block4_conv2").output)
    expected = np.asarray(ref_b42(keras.applications.vgg19.preprocess_input(x.copy())))
    got = ours(x)
    assert expected.std() > 0
    np.testing.assert_allclose(np.asarray(got["block4_conv2"]), expected, rtol=1e-4, atol=1e-4)
    assert tuple(got["features"].shape) == (1, 6, 5, 128)
    assert tuple(got["block3_pool"].shape) == (1, 6, 5, 256)
    # the VGG part has exactly the applications model's parameters up to block4_conv2
    names = [f"block{b}_conv{i}" for b, n in ((1, 2), (2, 2), (3, 4), (4, 2)) for i in range(1, n + 1)]
    assert sum(ref.get_layer(n).count_params() for n in names) == vgg_cpm(True) - conv(3, 512, 256) - conv(3, 256, 128)


def test_vgg_weight_file_missing_layers_is_refused(tmp_path):
    from keras.src.legacy.saving import legacy_h5_format

    tiny = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(64, 3, name="block1_conv1")])
    path = tmp_path / "partial.h5"
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, tiny)
    with pytest.raises(ValueError, match="block1_conv2"):
        vgg19_backbone(weights=str(path))


# ---------------------------------------------------------------- OpenPose baseline

@pytest.fixture(scope="module")
def baseline_368():
    return PafBaseline(input_shape=(368, 368, 3))


def test_baseline_parameter_count_matches_paper(baseline_368):
    total, no_bias = counts(baseline_368)
    assert no_bias == 52_298_816
    assert total == 52_311_446
    mods = module_weight_counts(baseline_368)
    assert list(mods) == ["backbone"] + [f"stage{t}" for t in range(1, 7)]
    stage1 = 2 * (3 * conv(3, 128, 128) + conv(1, 128, 512)) + conv(1, 512, J) + conv(1, 512, L)
    stage_t = 2 * (conv(7, 185, 128) + 4 * conv(7, 128, 128) + conv(1, 128, 128)) + conv(1, 128, J) + conv(1, 128, L)
    assert mods["stage1"][0] == stage1 and mods["stage4"][0] == stage_t


def test_baseline_output_shapes_at_368(baseline_368):
    out = baseline_368.output
    expected = {f"{kind}_stage{t}" for kind in ("pafs", "heatmaps") for t in range(1, 7)} | {"pafs", "heatmaps"}
    assert set(out) == expected
    for key, t in out.items():
        assert tuple(t.shape) == (None, 46, 46, L if key.startswith("pafs") else J), key
    # Caffe concatenation order of a refinement stage: PAFs, heatmaps, features
    assert tuple(baseline_368.get_layer("stage2").get_layer("Mconv1_stage2_L1").kernel.shape) == (7, 7, 185, 128)


def test_baseline_other_keypoint_set_and_nonsquare_input():
    m = PafBaseline(stages=1, keypoint_set="coco17", input_shape=(368, 432, 3))
    assert tuple(m.output["heatmaps"].shape) == (None, 46, 54, 17)
    assert tuple(m.output["pafs"].shape) == (None, 46, 54, 38)
    assert set(m.output) == {"pafs", "heatmaps", "pafs_stage1", "heatmaps_stage1"}


@pytest.fixture(scope="module")
def baseline_small():
    return PafBaseline(stages=2)


def test_baseline_save_load_round_trip(baseline_small, tmp_path):
    x = image()
    y = baseline_small(x)
    path = tmp_path / "paf_baseline.keras"
    baseline_small.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is PafBaseline and loaded.get_config() == baseline_small.get_config()
    y2 = loaded(x)
    assert set(y2) == set(y) and tuple(y["pafs"].shape) == (1, 8, 8, L)
    for key in y:
        assert np.std(np.asarray(y[key])) > 0, key
        np.testing.assert_allclose(np.asarray(y2[key]), np.asarray(y[key]), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(y["pafs"]), np.asarray(y["pafs_stage2"]))
    # a fresh model with the same config has other (random) weights: the file carried them
    fresh = PafBaseline.from_config(baseline_small.get_config())
    assert counts(fresh) == counts(baseline_small)
    assert not np.allclose(np.asarray(fresh(x)["pafs"]), np.asarray(y["pafs"]))


# ---------------------------------------------------------------- Feature Transfer Network

@pytest.fixture(scope="module")
def ftn_368():
    return FeatureTransferNet(input_shape=(368, 368, 3))


def test_ftn_weights_within_two_percent_of_paper(ftn_368):
    total, no_bias = counts(ftn_368)
    assert abs(no_bias - PAPER_FTN_WEIGHTS) / PAPER_FTN_WEIGHTS <= 0.02
    assert no_bias == ftn_expected(bias=False) == 21_264_448
    assert total == ftn_expected(bias=True)
    assert list(module_weight_counts(ftn_368)) == [
        "backbone", "joint_branch", "limb_branch", "transfer_l2j", "transfer_j2l",
        "joint_head", "limb_head", "refine_joint", "refine_limb"]


def test_ftn_output_shapes_at_368(ftn_368):
    out = ftn_368.output
    assert set(out) == {"pafs", "heatmaps", "pafs_stage1", "heatmaps_stage1", "pafs_stage2", "heatmaps_stage2"}
    for key, t in out.items():
        assert tuple(t.shape) == (None, 46, 46, L if key.startswith("pafs") else J), key


def test_ftn_transfer_wiring(ftn_368):
    # Conv-4 of the joint branch feeds the limb branch's Conv-5 and vice versa
    assert sources(ftn_368, "transfer_j2l") == ["joint_branch"]
    assert sources(ftn_368, "transfer_l2j") == ["limb_branch"]
    assert sources(ftn_368, "limb_head") == ["limb_branch", "transfer_j2l"]
    assert sources(ftn_368, "joint_head") == ["joint_branch", "transfer_l2j"]
    assert sources(ftn_368, "refine_limb") == ["joint_head", "limb_head", "backbone"]
    assert tuple(ftn_368.get_layer("limb_head").get_layer("limb_head_conv5").kernel.shape) == (1, 1, 512 + 128, L)


@pytest.mark.parametrize("kwargs", [
    {"transfer": False},
    {"refinement": False},
    {"transfer_from": 1},
    {"transfer_from": 3},
    {"transfer_from": 5},
])
def test_ftn_ablation_switches_change_parameters_as_designed(ftn_368, kwargs):
    m = FeatureTransferNet(**kwargs)
    k = kwargs.get("transfer_from", 4)
    t, r = kwargs.get("transfer", True), kwargs.get("refinement", True)
    assert counts(m) == (ftn_expected(True, t, r, k), ftn_expected(False, t, r, k))
    assert counts(m) != counts(ftn_368)
    mods = module_weight_counts(m)
    assert ("transfer_j2l" in mods) == t and ("refine_limb" in mods) == r
    assert ("joint_head" in mods) == (t and k < 5)
    if t and k == 5:  # features transferred from the predictions enter the other refinement
        assert sources(m, "refine_limb") == ["joint_branch", "limb_branch", "backbone", "transfer_j2l"]
    stages = 2 if r else 1
    assert set(m.output) == {f"{a}_stage{s}" for a in ("pafs", "heatmaps") for s in range(1, stages + 1)} | {
        "pafs", "heatmaps"}


def test_ftn_save_load_round_trip(tmp_path):
    m = FeatureTransferNet(transfer_from=5, transfer_blocks=2, refine_blocks=2)
    x = image(seed=1)
    y = m(x)
    path = tmp_path / "ftn.keras"
    m.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is FeatureTransferNet and loaded.get_config() == m.get_config()
    y2 = loaded(x)
    for key in y:
        assert np.std(np.asarray(y[key])) > 0, key
        np.testing.assert_allclose(np.asarray(y2[key]), np.asarray(y[key]), rtol=1e-5, atol=1e-6)


def test_ftn_config_round_trip():
    cfg = FeatureTransferNet(transfer=False, refinement=False, refine_blocks=3, keypoint_set="coco17",
                             input_shape=(64, 96, 3), name="ftn_small").get_config()
    assert "backbone_weights" not in cfg
    again = FeatureTransferNet.from_config(cfg)
    assert again.get_config() == cfg
    assert tuple(again.output["heatmaps"].shape) == (None, 8, 12, 17)


# ---------------------------------------------------------------- Multi-level Network

def test_mln_parameters_shapes_and_round_trip(tmp_path):
    m = MultiLevelNet(input_shape=(368, 368, 3))
    assert counts(m) == (mln_expected(True), mln_expected(False))
    assert list(module_weight_counts(m)) == [
        "backbone", "joint_branch", "limb_branch", "lower_level", "joint_limb", "global_context",
        "refine_joint", "refine_limb"]
    for key, t in m.output.items():
        assert tuple(t.shape) == (None, 46, 46, L if key.startswith("pafs") else J), key
    assert sources(m, "joint_limb") == ["joint_branch", "limb_branch"]
    assert sources(m, "refine_joint") == ["joint_branch", "limb_branch", "lower_level", "backbone", "joint_limb",
                                          "global_context"]
    small = MultiLevelNet(refine_blocks=1)
    x = image(seed=2)
    y = small(x)
    path = tmp_path / "mln.keras"
    small.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is MultiLevelNet and loaded.get_config() == small.get_config()
    y2 = loaded(x)
    for key in y:
        assert np.std(np.asarray(y[key])) > 0, key
        np.testing.assert_allclose(np.asarray(y2[key]), np.asarray(y[key]), rtol=1e-5, atol=1e-6)


def test_mln_levels_ablation():
    m = MultiLevelNet(levels=("upper", "joint_limb"), refine_blocks=2)
    levels = ("upper", "joint_limb")
    assert counts(m) == (mln_expected(True, levels, 2), mln_expected(False, levels, 2))
    assert "global_context" not in module_weight_counts(m)
    assert MultiLevelNet.from_config(m.get_config()).get_config()["levels"] == list(levels)


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("build,match", [
    (lambda: PafBaseline(input_shape=(368, 368, 4)), "3 input channels"),
    (lambda: PafBaseline(input_shape=(365, 368, 3)), "height 365.*multiple of 8"),
    (lambda: FeatureTransferNet(input_shape=(368, 100, 3)), "width 100.*multiple of 8"),
    (lambda: MultiLevelNet(input_shape=(368, 3)), r"\(H, W, 3\)"),
    (lambda: PafBaseline(stages=0), "stages"),
    (lambda: FeatureTransferNet(transfer_from=6), "transfer_from.*1..5"),
    (lambda: FeatureTransferNet(transfer_from=5, refinement=False), "transfer_from=5 needs refinement"),
    (lambda: FeatureTransferNet(keypoint_set="nope"), "unknown keypoint set"),
    (lambda: MultiLevelNet(levels=("lower", "middle")), "levels"),
    (lambda: PafBaseline(preprocessing="bgr"), "preprocessing mode"),
])
def test_bad_configuration_is_refused(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_bad_image_size_at_call_time_is_refused(baseline_small):
    with pytest.raises(ValueError, match="multiple of 8"):
        baseline_small(image(60, 64))
