"""Foundation: backbones, FPN, MultiPoseNet heads, PRN, serialisation, bad input."""

import json

import h5py
import keras
import numpy as np
import pytest

from kerapose.backbones.resnet import resnet_backbone
from kerapose.weights.applications import load_applications_weights, read_h5_weights
from kerapose.cli import main as cli_main
from kerapose.heads.prn import pose_residual_network
from kerapose.layers import Preprocess
from kerapose.models import MultiPoseNet


def _write_applications_h5(model: keras.Model, path) -> None:
    """Write weights in the legacy keras.applications HDF5 layout (what the real files use)."""
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)


@pytest.mark.parametrize("depth,ref", [(50, "ResNet50"), (101, "ResNet101")])
def test_resnet_param_count_equals_keras_applications(depth, ref):
    ours = resnet_backbone(depth)
    theirs = getattr(keras.applications, ref)(include_top=False, weights=None)
    assert ours.count_params() == theirs.count_params()


def test_resnet18_matches_torchvision_architecture():
    m = resnet_backbone(18)
    trainable = sum(int(np.prod(v.shape)) for v in m.trainable_weights)
    assert trainable == 11_176_512  # torchvision resnet18 without its fc layer


def test_resnet_width_multiplier():
    """(And a MultiPoseNet's pose_score.) width scales every convolution's channels (multiples of 8), so a basic-block network's
    parameters scale with width squared (batch norms and the RGB stem are linear in it); width
    is saved with a MultiPoseNet, and ImageNet weight files, made for width 1, are refused."""
    half = resnet_backbone(18, width=0.5)
    assert [int(half.output[c].shape[-1]) for c in ("C2", "C3", "C4", "C5")] == [32, 64, 128, 256]
    ratio = half.count_params() / resnet_backbone(18).count_params()
    assert 0.25 <= ratio < 0.26
    assert int(resnet_backbone(18, width=0.3).output["C2"].shape[-1]) == 16  # 19.2 -> 16
    m = MultiPoseNet("resnet18", backbone_width=0.5, prn_hidden=8, input_shape=(64, 64, 3),
                     pose_score="box_keypoints")
    clone = MultiPoseNet.from_config(m.get_config())
    assert clone.get_config()["backbone_width"] == 0.5 and clone.count_params() == m.count_params()
    # the model's pose_score is what its end-to-end graph (export, serving) uses unless told otherwise
    assert clone.end_to_end((64, 64)).get_layer("decoder").pose_score == "box_keypoints"
    assert clone.end_to_end((64, 64), pose_score="box").get_layer("decoder").pose_score == "box"
    with pytest.raises(ValueError, match="pose_score: expected one of box, box_keypoints, got 'boxes'"):
        MultiPoseNet("resnet18", pose_score="boxes")
    with pytest.raises(ValueError, match="weights: the weight files are for width 1.0, got width=0.5"):
        resnet_backbone(18, width=0.5, weights="imagenet.h5")
    with pytest.raises(ValueError, match=r"width: expected a channel multiplier in \(0, 4\], got 0"):
        resnet_backbone(18, width=0)


def test_resnet_loads_applications_weight_file_and_matches(tmp_path):
    ref = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(64, 64, 3))
    rng = np.random.default_rng(0)
    ref.set_weights([rng.normal(0, 0.05, w.shape).astype("float32") if "moving_variance" not in v.path
                     else rng.uniform(0.5, 1.5, w.shape).astype("float32")
                     for v, w in zip(ref.weights, ref.get_weights())])
    path = tmp_path / "resnet50_notop.h5"
    _write_applications_h5(ref, path)
    assert "conv1_conv" in read_h5_weights(str(path))
    ours = resnet_backbone(50, input_shape=(64, 64, 3), weights=str(path))
    image = rng.uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    expected = ref(keras.applications.resnet.preprocess_input(image.copy()))
    np.testing.assert_allclose(ours(image)["C5"], expected, atol=1e-4, rtol=1e-4)


def test_weight_file_with_wrong_shapes_is_refused(tmp_path):
    other = resnet_backbone(18, input_shape=(64, 64, 3))
    path = tmp_path / "r18.h5"
    _write_applications_h5(other, path)
    with pytest.raises(ValueError, match="conv1_conv"):
        load_applications_weights(resnet_backbone(50, input_shape=(64, 64, 3)), str(path))


def test_preprocess_caffe_matches_keras_applications():
    x = np.random.default_rng(1).uniform(0, 255, (1, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(Preprocess("caffe")(x), keras.applications.resnet.preprocess_input(x.copy()), atol=1e-4)


@pytest.fixture(scope="module")
def r50_480():
    return MultiPoseNet("resnet50", input_shape=(480, 480, 3))


def test_backbone_strides(r50_480):
    out = r50_480.backbone.output
    assert [tuple(out[c].shape[1:3]) for c in ("C2", "C3", "C4", "C5")] == [(120, 120), (60, 60), (30, 30), (15, 15)]


def test_multiposenet_output_shapes_at_480(r50_480):
    out = r50_480.output
    assert tuple(out["heatmaps"].shape) == (None, 120, 120, 18)
    for lvl in (2, 3, 4, 5):
        assert tuple(out[f"heatmaps_k{lvl}"].shape) == (None, 120, 120, 18)
    # anchors on P3..P7 (strides 8..128), ceil-sized grids, 9 per location
    cells = sum(int(np.ceil(480 / s)) ** 2 for s in (8, 16, 32, 64, 128))
    assert tuple(out["person_logits"].shape) == (None, cells * 9, 1)
    assert tuple(out["person_boxes"].shape) == (None, cells * 9, 4)


def test_keypoint_subnet_structure(r50_480):
    ks = r50_480.get_layer("keypoint_subnet")
    k1 = 18
    per_level = (9 * 256 * 128 + 128) + (9 * 128 * 128 + 128) + (128 * k1 + k1)
    fuse = 9 * 512 * 512 + 512 + 512 * k1 + k1
    assert ks.count_params() == 4 * per_level + fuse
    assert ks.get_layer("keypoint_subnet_concat").output.shape[-1] == 512


def test_person_subnet_prior_and_structure(r50_480):
    ps = r50_480.get_layer("person_subnet")
    head = ps.get_layer("person_subnet_class")
    convs = [l for l in head.layers if isinstance(l, keras.layers.Conv2D)]
    assert len(convs) == 5 and all(c.kernel_size == (3, 3) for c in convs)
    assert convs[-1].filters == 9
    bias = convs[-1].bias.numpy()
    np.testing.assert_allclose(1 / (1 + np.exp(-bias)), 0.01, rtol=1e-5)
    assert ps.get_layer("person_subnet_box").layers[-1].filters == 36


def test_freeze_backbone(r50_480):
    n_all = len(r50_480.trainable_weights)
    n_backbone = len(r50_480.backbone.trainable_weights)
    r50_480.freeze_backbone(True)
    try:
        assert len(r50_480.trainable_weights) == n_all - n_backbone
        assert not any(v.path.startswith("backbone/") for v in r50_480.trainable_weights)
        assert r50_480.get_config()["freeze_backbone"] is True
    finally:
        r50_480.freeze_backbone(False)


def test_prn_is_the_released_size_and_softmax_is_per_channel():
    prn = pose_residual_network(17)
    assert prn.count_params() == 70_224_352
    small = pose_residual_network(3, hidden=4)
    for layer in (small.get_layer("prn_fc2"),):
        layer.set_weights([np.zeros_like(w) for w in layer.get_weights()])
    x = np.random.default_rng(2).normal(size=(2, 56, 36, 3)).astype("float32")
    y = small(x, training=False).numpy()
    flat = x.reshape(2, -1, 3)
    ref = np.exp(flat - flat.max(1, keepdims=True))
    ref = (ref / ref.sum(1, keepdims=True)).reshape(x.shape)
    np.testing.assert_allclose(y, ref, atol=1e-6)  # zero residual branch -> softmax of the input
    np.testing.assert_allclose(y.sum(axis=(1, 2)), 1.0, atol=1e-5)


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    m = MultiPoseNet("resnet18", input_shape=(None, None, 3), prn_hidden=16)
    x = np.random.default_rng(3).uniform(0, 255, (1, 64, 96, 3)).astype("float32")
    roi = np.random.default_rng(4).uniform(0, 1, (2, 56, 36, 17)).astype("float32")
    before, prn_before = m(x), m.prn(roi)
    path = tmp_path / "mpn.keras"
    m.save(path)
    loaded = keras.saving.load_model(path)  # safe_mode stays on
    assert isinstance(loaded, MultiPoseNet) and loaded.get_config() == m.get_config()
    after = loaded(x)
    for key in before:
        np.testing.assert_array_equal(before[key], after[key])
    np.testing.assert_array_equal(prn_before, loaded.prn(roi))


def test_import_kerapose_alone_registers_every_saved_class(tmp_path):
    """A fresh interpreter that only runs `import kerapose` loads a saved model (the documented
    contract); the in-process test above cannot see this, its imports register everything."""
    import subprocess
    import sys

    m = MultiPoseNet("resnet18", input_shape=(64, 64, 3), prn_hidden=8)
    x = np.random.default_rng(6).uniform(0, 255, (1, 64, 64, 3)).astype("float32")
    path = tmp_path / "mpn.keras"
    m.save(path)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "ref.npy", np.asarray(m(x)["heatmaps"]))
    code = (
        "import sys, numpy as np, keras, kerapose\n"
        "d = sys.argv[1]\n"
        "m = keras.saving.load_model(d + '/mpn.keras')\n"
        "out = np.asarray(m(np.load(d + '/x.npy'))['heatmaps'])\n"
        "assert np.array_equal(out, np.load(d + '/ref.npy')), 'outputs differ'\n"
        "print('loaded', type(m).__name__)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "loaded MultiPoseNet" in proc.stdout


def test_prn_residual_scale(tmp_path):
    """residual_scale weights the input heatmaps in the logits: with the dense branch at zero the
    output is softmax(scale * x) (numpy reference); the model config carries it through save/load."""
    prn = pose_residual_network(3, hidden=4, residual_scale=10.0)
    fc2 = prn.get_layer("prn_fc2")
    fc2.set_weights([np.zeros_like(w) for w in fc2.get_weights()])
    x = np.random.default_rng(3).uniform(size=(2, 56, 36, 3)).astype("float32")
    flat = 10.0 * x.reshape(2, -1, 3)
    ref = np.exp(flat - flat.max(1, keepdims=True))
    ref = (ref / ref.sum(1, keepdims=True)).reshape(x.shape)
    np.testing.assert_allclose(prn(x, training=False).numpy(), ref, rtol=1e-4, atol=1e-7)
    assert pose_residual_network(3, hidden=4).count_params() == prn.count_params()
    with pytest.raises(ValueError, match="residual_scale"):
        pose_residual_network(3, hidden=4, residual_scale=0)
    m = MultiPoseNet("resnet18", fpn_size=16, keypoint_head_size=8, keypoint_fuse_size=16, prn_hidden=4,
                     prn_residual_scale=10.0)
    assert m.get_config()["prn_residual_scale"] == 10.0
    assert m.prn.get_layer("prn_residual_scale").scale == 10.0
    m.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(loaded.prn(x[..., :1].repeat(17, -1)), m.prn(x[..., :1].repeat(17, -1)), atol=1e-6)
    assert loaded.prn_residual_scale == 10.0


def test_prn_save_load(tmp_path):
    prn = pose_residual_network(5, hidden=8)
    path = tmp_path / "prn.keras"
    prn.save(path)
    x = np.random.default_rng(5).uniform(size=(1, 56, 36, 5)).astype("float32")
    np.testing.assert_array_equal(prn(x), keras.saving.load_model(path)(x))


@pytest.mark.parametrize("backbone", ["resnet50", "resnet101"])
def test_config_round_trip(backbone):
    m = MultiPoseNet(backbone, freeze_backbone=True, prn_hidden=8)
    clone = MultiPoseNet.from_config(m.get_config())
    assert clone.get_config() == m.get_config()
    assert clone.count_params() == m.count_params()
    assert [l.name for l in clone.layers] == [l.name for l in m.layers]
    assert not clone.backbone.trainable


def test_bad_input_errors():
    with pytest.raises(ValueError, match="unknown MultiPoseNet backbone 'resnet34'.*resnet18, resnet50, resnet101"):
        MultiPoseNet("resnet34")
    with pytest.raises(ValueError, match="expected 3 input channels.*got 1"):
        MultiPoseNet("resnet18", input_shape=(64, 64, 1))
    with pytest.raises(ValueError, match="height 100 .*multiple of 32"):
        MultiPoseNet("resnet18", input_shape=(100, 64, 3))
    with pytest.raises(ValueError, match="num_keypoints=14.*coco17"):
        MultiPoseNet("resnet18", num_keypoints=14)
    m = MultiPoseNet("resnet18", prn_hidden=8)
    with pytest.raises(ValueError, match="width 70 .*multiple of 32"):
        m(np.zeros((1, 64, 70, 3), "float32"))
    with pytest.raises(ValueError):
        m(np.zeros((1, 64, 64, 4), "float32"))
    with pytest.raises(ValueError, match="unknown ResNet depth 34"):
        resnet_backbone(34)


def test_info_cli_reports_prn_params(capsys):
    assert cli_main(["info", "prn", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params"] == 70_224_352
    assert info["weights_without_bias"] == 70_224_352 - 1024 - 56 * 36 * 17
    # two FLOPs per multiply-add of the two dense layers, plus element-wise ops
    assert info["macs"] == 56 * 36 * 17 * 1024 * 2
    assert cli_main(["info", "no-such-model"]) == 2


def test_info_module_table_sums(r50_480):
    from kerapose.info import model_info

    info = model_info(r50_480)
    mods = {m["name"]: m for m in info["modules"]}
    assert {"backbone", "keypoint_fpn", "person_fpn", "keypoint_subnet", "person_subnet", "prn"} <= set(mods)
    assert sum(m["params"] for m in info["modules"]) == info["params"]
    assert mods["backbone"]["params"] == 23_587_712
    # the backbone's MACs: the conv1 7x7 stride-2 layer alone is 240*240*64*147 multiply-adds
    assert mods["backbone"]["macs"] > 240 * 240 * 64 * 147
    assert info["macs"] == sum(m["macs"] for m in info["modules"] if m["name"] != "prn")
