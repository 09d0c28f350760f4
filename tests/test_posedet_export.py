"""PoseDet end to end through kerapose.export (SavedModel, TFLite fp32 / fp16, ONNX), then through
`kerapose predict` (PosePredictor) and `kerapose serve` (the embedded server): the same people as
Keras on a real coco-mini image. The tiny configuration at 128x128 keeps it fast; its classification
kernel is spread so that the scores rank far above float noise (random weights score every
candidate near the prior)."""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest

SIZE = (128, 128)
M = 6


def _same_people(got: dict, ref: dict, name: str, xy_tol: float = 0.05, score_tol: float = 1e-5) -> None:
    from scipy.optimize import linear_sum_assignment

    n = int(np.asarray(ref["num_poses"]).reshape(-1)[0])
    assert int(np.asarray(got["num_poses"]).reshape(-1)[0]) == n, name
    gk, rk = np.asarray(got["keypoints"])[0, :n], np.asarray(ref["keypoints"])[0, :n]
    # people whose scores tie within float noise may swap places: match them by position
    rows, cols = linear_sum_assignment(np.abs(gk[:, None, :, :2] - rk[None, :, :, :2]).sum((-1, -2)))
    xy = float(np.abs(gk[rows, :, :2] - rk[cols, :, :2]).max())
    sc = float(np.abs(np.asarray(got["scores"])[0, :n][rows] - np.asarray(ref["scores"])[0, :n][cols]).max())
    print(f"posedet end to end, {name} vs keras: {n} people, keypoints {xy:.4f} px, scores {sc:.2e}")
    assert xy <= xy_tol and sc <= score_tol, (name, xy, sc)
    np.testing.assert_allclose(np.asarray(got["boxes"])[0, :n][rows], np.asarray(ref["boxes"])[0, :n][cols],
                               atol=xy_tol)


@pytest.fixture(scope="module")
def tiny():
    import keras

    from kerapose.models.registry import build_model

    keras.utils.set_random_seed(5)
    model = build_model("posedet-tiny")
    layer = model.get_layer("head").get_layer("head_cls_out")
    kernel, bias = layer.get_weights()
    layer.set_weights([np.random.default_rng(3).normal(0, 1, kernel.shape).astype("float32"), bias])
    return model


@pytest.fixture(scope="module")
def image(coco_val) -> np.ndarray:
    from kerapose.data.pipeline import read_image

    return read_image(coco_val.record(coco_val.image_ids[0]).path)


@pytest.fixture(scope="module")
def ref(tiny, image) -> dict:
    e2e = tiny.end_to_end(SIZE, max_people=M, score_threshold=0.0)
    out = {k: np.asarray(v) for k, v in e2e(image[None]).items()}
    assert int(out["num_poses"][0]) == M
    return out


@pytest.fixture(scope="module")
def savedmodel(tiny, tmp_path_factory) -> str:
    from kerapose.export import export_model

    root = tmp_path_factory.mktemp("posedet_export")
    return export_model(tiny, "savedmodel", str(root / "models" / "posedet"), end_to_end=True, input_size=SIZE,
                        max_people=M, score_threshold=0.0, version=1)


@pytest.fixture(scope="module")
def tflite_fp32(savedmodel) -> str:
    from kerapose.export import export_model

    return export_model(savedmodel, "tflite", savedmodel.rsplit("/", 3)[0] + "/posedet.tflite")


def test_savedmodel_tflite_and_onnx_give_the_keras_people(savedmodel, tflite_fp32, ref, image, tmp_path):
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    from kerapose.export import OnnxRunner, TFLiteRunner, export_model

    sig = tf.saved_model.load(savedmodel).signatures["serving_default"]
    spec = sig.structured_input_signature[1]["image"]
    assert spec.dtype == tf.uint8 and spec.shape.as_list() == [None, None, None, 3]
    _same_people({k: v.numpy() for k, v in sig(image=tf.constant(image[None])).items()}, ref, "savedmodel")

    ops = {d["op_name"] for d in Interpreter(model_path=tflite_fp32)._get_ops_details()}
    assert {"WHILE", "GATHER", "TOPK_V2"} <= ops and not any(o.startswith("Flex") for o in ops)  # builtins only
    _same_people(TFLiteRunner(tflite_fp32, num_threads=2)(image=image[None]), ref, "tflite fp32")
    _same_people(OnnxRunner(export_model(savedmodel, "onnx", str(tmp_path / "posedet.onnx")))(image=image[None]),
                 ref, "onnx")
    # fp16 weights: the scores move by float16 rounding, the people stay where they were
    fp16 = TFLiteRunner(export_model(savedmodel, "tflite", str(tmp_path / "posedet16.tflite"), quantize="fp16"))
    _same_people(fp16(image=image[None]), ref, "tflite fp16", xy_tol=1.0, score_tol=5e-3)


def test_predict_reads_the_exports(tiny, savedmodel, tflite_fp32, ref, image, coco_val, tmp_path, capsys):
    import json

    from kerapose.cli import main
    from kerapose.predict import PosePredictor

    n = int(ref["num_poses"][0])
    path = str(tmp_path / "tiny.keras")
    tiny.save(path)
    keras_pred = PosePredictor.load(path, input_size=SIZE, max_people=M, score_threshold=0.0)
    lite = PosePredictor.load(tflite_fp32, score_threshold=0.0)
    for pred in (keras_pred, PosePredictor.load(savedmodel, score_threshold=0.0), lite):
        got = pred(image)
        assert pred.keypoint_set == "coco17" and got["keypoints"].shape == (n, 17, 3), pred.kind
        _same_people({"num_poses": [n], **{k: v[None] for k, v in got.items()}}, ref, f"predict {pred.kind}")
    # `kerapose predict` on the TFLite file writes those people as COCO results, in image pixels
    path = coco_val.record(coco_val.image_ids[0]).path
    capsys.readouterr()
    assert main(["predict", tflite_fp32, path, "--out", str(tmp_path / "out"), "--score-threshold", "0",
                 "--no-draw", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["people"] == n
    rows = json.load(open(tmp_path / "out" / "predictions.json"))
    got = np.array([r["keypoints"] for r in rows]).reshape(n, 17, 3)
    assert np.abs(np.sort(got[..., 0].ravel()) - np.sort(ref["keypoints"][0, :n, :, 0].ravel())).max() < 0.05


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_returns_the_savedmodel_people(savedmodel, coco_val):
    import httpx
    import uvicorn

    from kerapose.serving.server import ServerOptions, create_app

    models = savedmodel.rsplit("/", 2)[0]  # MODELS/posedet/1
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(models, ServerOptions(poll_interval=0.5, threads=2)),
                                           host="127.0.0.1", port=port, log_level="error", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.05)
    try:
        with open(coco_val.record(coco_val.image_ids[0]).path, "rb") as f:
            jpeg = f.read()
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            people = client.post("/v1/models/posedet:pose", content=jpeg).json()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    import tensorflow as tf

    sig = tf.saved_model.load(savedmodel).signatures["serving_default"]
    direct = sig(image=tf.io.decode_jpeg(jpeg, channels=3)[None])
    n = int(direct["num_poses"][0])
    assert len(people) == n >= 2
    np.testing.assert_allclose(np.array([p["keypoints"] for p in people]), direct["keypoints"][0, :n], atol=1e-3)
