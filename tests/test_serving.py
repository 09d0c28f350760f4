"""Embedded TF-Serving-compatible server over real HTTP (uvicorn in a thread, httpx client).

The served SavedModels are tiny Keras exports with kerapose's end-to-end signature (input
``image`` uint8 [B, H, W, 3]; outputs keypoints [B, M, K, 3], scores [B, M], boxes [B, M, 4],
num_poses [B]) whose outputs are deterministic functions of the image statistics, so a wrong
decode, a swapped channel, a mixed-up batch slice or the wrong version changes the numbers.
References: the SavedModel signature called directly on the same pixels (decoded by
``tf.io.decode_png`` / ``decode_jpeg``; images are encoded with OpenCV).
"""

from __future__ import annotations

import base64
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import httpx  # noqa: E402
import tensorflow as tf  # noqa: E402

from kerapose.serving.batching import BatchingOptions, load_batching_config  # noqa: E402
from kerapose.serving.client import PoseClient, ServingError  # noqa: E402
from kerapose.serving.models import is_complete_version_dir  # noqa: E402
from kerapose.serving.server import ServerOptions, create_app  # noqa: E402
from serving_helpers import K, M, RunningServer, b64, export_pose_model, jpeg_bytes, png_bytes  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Two exported versions kept aside; tests copy them into model directories."""
    root = tmp_path_factory.mktemp("exports")
    paths = {}
    for v, offset in ((1, 0.0), (2, 0.7)):
        paths[v] = str(root / f"v{v}")
        export_pose_model(paths[v], offset)
    return paths


def _copy(src: str, dst: str) -> None:
    import shutil

    shutil.copytree(src, dst)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory, exported):
    root = tmp_path_factory.mktemp("models")
    os.makedirs(root / "pose")
    _copy(exported[1], str(root / "pose" / "1"))
    return str(root)


@pytest.fixture(scope="module")
def server(models_dir):
    options = ServerOptions(
        poll_interval=0.2, max_body_bytes=2_000_000, max_image_pixels=300 * 300, request_timeout=20, threads=4
    )
    running = RunningServer(create_app(models_dir, options))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    a[:, :, 0] = np.clip(a[:, :, 0].astype(int) + 60, 0, 255)  # channels differ: catches BGR/RGB swaps
    b = rng.integers(0, 120, (48, 64, 3), dtype=np.uint8)
    c = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    return a, b, c


def reference(path: str, batch: np.ndarray) -> dict:
    fn = tf.saved_model.load(path).signatures["serving_default"]
    return {k: v.numpy() for k, v in fn(image=tf.constant(batch, tf.uint8)).items()}


# -- status and metadata -------------------------------------------------------------------------
def test_status_and_metadata(http):
    r = http.get("/v1/models/pose")
    assert r.status_code == 200
    assert r.json() == {
        "model_version_status": [
            {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]
    }
    assert http.get("/v1/models/pose/versions/1").json()["model_version_status"][0]["version"] == "1"
    meta = http.get("/v1/models/pose/metadata").json()
    assert meta["model_spec"] == {"name": "pose", "signature_name": "", "version": "1"}
    sig = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    image = sig["inputs"]["image"]
    assert image["dtype"] == "DT_UINT8" and image["name"] == "serving_default_image:0"  # graph tensor
    assert [d["size"] for d in image["tensor_shape"]["dim"]] == ["-1", "-1", "-1", "3"]
    outs = sig["outputs"]
    assert set(outs) == {"keypoints", "scores", "boxes", "num_poses"}
    assert outs["num_poses"]["dtype"] == "DT_INT32" and outs["scores"]["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in outs["keypoints"]["tensor_shape"]["dim"]] == ["-1", str(M), str(K), "3"]


# -- predict -------------------------------------------------------------------------------------
def test_predict_row_png_matches_signature(http, exported, images):
    a, b, _ = images
    r = http.post("/v1/models/pose:predict", json={"instances": [b64(png_bytes(a)), b64(png_bytes(b))]})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert len(preds) == 2 and set(preds[0]) == {"keypoints", "scores", "boxes", "num_poses"}
    # Independent decoder (TF's PNG decoder) -> same pixels -> same outputs as the signature.
    decoded = np.stack([tf.io.decode_png(png_bytes(x), channels=3).numpy() for x in (a, b)])
    np.testing.assert_array_equal(decoded, np.stack([a, b]))
    ref = reference(exported[1], decoded)
    for i in range(2):
        for k in ref:
            np.testing.assert_allclose(np.asarray(preds[i][k]), ref[k][i], rtol=1e-6, atol=1e-6)
    assert ref["scores"][0].tolist() != ref["scores"][1].tolist()  # the two instances differ


def test_predict_columnar_jpeg_and_raw_lists(http, exported, images):
    a, b, _ = images
    jpgs = [jpeg_bytes(a), jpeg_bytes(b)]
    r = http.post("/v1/models/pose/versions/1:predict", json={"inputs": {"image": [b64(j) for j in jpgs]}})
    assert r.status_code == 200, r.text
    outs = r.json()["outputs"]
    decoded = np.stack([tf.io.decode_jpeg(j, channels=3).numpy() for j in jpgs])
    ref = reference(exported[1], decoded)
    for k in ref:
        np.testing.assert_allclose(np.asarray(outs[k]), ref[k], rtol=1e-6, atol=1e-6)
    assert np.asarray(outs["keypoints"]).shape == (2, M, K, 3)

    # Raw nested-list uint8 pixels (what real TF Serving clients send), both formats.
    raw = http.post("/v1/models/pose:predict", json={"inputs": np.stack([a, b]).tolist()}).json()["outputs"]
    rows = http.post("/v1/models/pose:predict", json={"instances": [{"image": a.tolist()}, b.tolist()]}).json()
    ref = reference(exported[1], np.stack([a, b]))
    for k in ref:
        np.testing.assert_allclose(np.asarray(raw[k]), ref[k], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(np.asarray(rows["predictions"][1][k]), ref[k][1], rtol=1e-6, atol=1e-6)


def test_pose_endpoint(http, exported, images):
    a = images[0]
    ref = reference(exported[1], a[None])
    n = int(ref["num_poses"][0])
    assert 0 < n < M  # the fixture image exercises padding: some but not all poses count
    for kwargs in (
        {"content": png_bytes(a), "headers": {"content-type": "image/png"}},
        {"json": b64(png_bytes(a))},
        {"json": {"image": b64(png_bytes(a))}},
    ):
        r = http.post("/v1/models/pose:pose", **kwargs)
        assert r.status_code == 200, r.text
        people = r.json()
        assert len(people) == n
        for i, p in enumerate(people):
            np.testing.assert_allclose(p["keypoints"], ref["keypoints"][0, i], rtol=1e-6, atol=1e-5)
            np.testing.assert_allclose(p["box"], ref["boxes"][0, i], rtol=1e-6, atol=1e-5)
            assert p["score"] == pytest.approx(float(ref["scores"][0, i]), abs=1e-6)


def test_client(server, exported, images):
    a, b, _ = images
    with PoseClient(server.url, model="pose") as client:
        assert client.status()["model_version_status"][0]["state"] == "AVAILABLE"
        assert "serving_default" in client.metadata(version=1)["metadata"]["signature_def"]["signature_def"]
        ref = reference(exported[1], np.stack([a, b]))
        preds = client.predict(instances=[png_bytes(a), b])  # bytes -> b64, array -> lists
        np.testing.assert_allclose(preds[1]["scores"], ref["scores"][1], atol=1e-6)
        outs = client.predict(inputs={"image": np.stack([a, b])}, version=1)
        np.testing.assert_allclose(outs["boxes"], ref["boxes"], atol=1e-4)
        people = client.pose(png_bytes(a))
        assert len(people) == int(ref["num_poses"][0])
        with pytest.raises(ServingError) as err:
            client.predict(instances=[1, 2])
        assert err.value.status_code == 400
    # tf_serving=True: decode on the client and send pixels (what real TF Serving needs).
    with PoseClient(f"{server.url}/v1/models/pose", tf_serving=True) as client:
        people = client.pose(png_bytes(a))
        assert [p["score"] for p in people] == pytest.approx(
            ref["scores"][0, : int(ref["num_poses"][0])].tolist(), abs=1e-6
        )


# -- errors --------------------------------------------------------------------------------------
def _error(r: httpx.Response, status: int, *words: str) -> None:
    assert r.status_code == status, r.text
    msg = r.json()["error"]
    for w in words:
        assert w in msg, (w, msg)


def test_errors(http, images):
    a = images[0]
    big = np.zeros((400, 400, 3), np.uint8)  # 160000 px > the fixture's 90000 px limit
    _error(http.get("/v1/models/nope"), 404, "nope")
    _error(http.get("/v1/models/pose/versions/7"), 404, "7")
    _error(http.post("/v1/models/pose/versions/7:predict", json={"instances": [1]}), 404)
    _error(http.get("/v1/models/pose/versions/x"), 400, "version")
    _error(http.get("/v1/models/bad$name"), 400, "model name")
    _error(http.get("/v1/models/..%2F..%2Fetc"), 404)  # a slash in the name never matches a model
    _error(http.get("/v1/models/..."), 400, "model name")  # names may not start with a dot
    _error(http.get("/v1/models/.hidden/metadata"), 400, "model name")
    _error(http.post("/v1/models/pose:predict", content=b"{not json"), 400, "JSON")
    _error(http.post("/v1/models/pose:predict", json={"foo": 1}), 400, "instances")
    _error(http.post("/v1/models/pose:predict", json={"instances": []}), 400, "non-empty")
    _error(http.post("/v1/models/pose:predict", json={"instances": [b64(b"garbage")]}), 400, "decodable")
    _error(http.post("/v1/models/pose:predict", json={"instances": [{"b64": "@@@"}]}), 400, "base64")
    _error(http.post("/v1/models/pose:predict", json={"instances": [[[1, 2, 3]]]}), 400, "shape", "[?, ?, ?, 3]")
    _error(http.post("/v1/models/pose:predict", json={"inputs": [[[[1, 2]]]]}), 400, "shape")
    _error(http.post("/v1/models/pose:predict", json={"inputs": [[[[1, 2, 300]]]]}), 400, "out of range", "uint8")
    _error(http.post("/v1/models/pose:predict", json={"inputs": [[[[1, 2, 0.5]]]]}), 400, "integer")
    _error(http.post("/v1/models/pose:predict", json={"inputs": [[[["a", "b", "c"]]]]}), 400, "strings")
    _error(http.post("/v1/models/pose:predict", json={"inputs": [[[[1, 2, 3], [1, 2]]]]}), 400, "ragged")
    _error(http.post("/v1/models/pose:predict", json={"inputs": {"img": [[[[1, 2, 3]]]]}}), 400, "missing ['image']")
    _error(http.post("/v1/models/pose:predict", json={"signature_name": "x", "instances": [1]}), 400, "signature")
    _error(
        http.post("/v1/models/pose:predict", json={"instances": [a.tolist(), a[:10].tolist()]}),
        400,
        "same shape",
    )
    _error(http.post("/v1/models/pose:predict", content=b"[" + b"0," * 1_100_000 + b"0]"), 413, "body")
    _error(http.post("/v1/models/pose:pose", content=png_bytes(big)), 413, "400x400")
    _error(http.post("/v1/models/pose:predict", json={"instances": [b64(png_bytes(big))]}), 413, "pixels")
    _error(http.post("/v1/models/pose:pose", content=b"not an image"), 400, "decodable")
    _error(http.post("/v1/models/pose:classify", json={}), 400, "unsupported")
    _error(http.get("/v1/models/pose:predict"), 405)
    # ... and the server still serves afterwards.
    r = http.post("/v1/models/pose:pose", content=png_bytes(a))
    assert r.status_code == 200


def test_image_header_bomb_is_refused_before_decoding():
    from kerapose.serving.server import ApiError, decode_image

    png = bytearray(png_bytes(np.zeros((2, 2, 3), np.uint8)))
    png[16:24] = (60000).to_bytes(4, "big") * 2  # header claims 60000x60000
    with pytest.raises(ApiError) as err:
        decode_image(bytes(png), max_pixels=10_000_000)
    assert err.value.status == 413 and "60000x60000" in err.value.message
    jpg = jpeg_bytes(np.zeros((37, 53, 3), np.uint8))
    with pytest.raises(ApiError) as err:
        decode_image(jpg, max_pixels=37 * 53 - 1)
    assert "37x53" in err.value.message


def test_request_timeout(models_dir, images):
    running = RunningServer(create_app(models_dir, ServerOptions(poll_interval=0, request_timeout=1e-4)))
    try:
        r = httpx.post(f"{running.url}/v1/models/pose:pose", content=png_bytes(images[0]), timeout=30)
        _error(r, 504, "Deadline")
    finally:
        running.stop()


# -- hot loading ---------------------------------------------------------------------------------
def _wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_hot_loading(tmp_path, exported, images):
    a = images[0]
    root = tmp_path / "models"
    os.makedirs(root / "pose")
    _copy(exported[1], str(root / "pose" / "1"))
    running = RunningServer(create_app(str(root), ServerOptions(poll_interval=0.2)))
    try:
        with httpx.Client(base_url=running.url, timeout=30) as http:
            ref1 = reference(exported[1], a[None])
            ref2 = reference(exported[2], a[None])
            assert not np.allclose(ref1["scores"], ref2["scores"])

            def served_scores():
                r = http.post("/v1/models/pose:predict", json={"instances": [b64(png_bytes(a))]})
                return np.asarray(r.json()["predictions"][0]["scores"])

            np.testing.assert_allclose(served_scores(), ref1["scores"][0], atol=1e-6)
            # Half-written versions: hidden temp name, *.partial, and an integer dir without
            # saved_model.pb yet. None may be loaded.
            _copy(exported[2], str(root / "pose" / ".5.tmp-abc"))
            _copy(exported[2], str(root / "pose" / "6.partial"))
            os.makedirs(root / "pose" / "7" / "variables")
            os.makedirs(root / "pose" / "9")
            (root / "pose" / "9" / "saved_model.pb").write_bytes(b"corrupt")  # fails to load: skipped
            assert not is_complete_version_dir(str(root / "pose" / "7"))
            time.sleep(1.0)  # five poll intervals
            assert [s["version"] for s in http.get("/v1/models/pose").json()["model_version_status"]] == ["1"]
            _error(http.get("/v1/models/pose/versions/7"), 404)
            _error(http.get("/v1/models/pose/versions/9"), 404)
            # Atomic publish: write under a temp name, rename into place.
            os.rename(root / "pose" / ".5.tmp-abc", root / "pose" / "5")
            assert _wait_for(lambda: http.get("/v1/models/pose/versions/5").status_code == 200)
            np.testing.assert_allclose(served_scores(), ref2["scores"][0], atol=1e-6)  # latest wins
            r = http.post("/v1/models/pose/versions/1:predict", json={"instances": [b64(png_bytes(a))]})
            np.testing.assert_allclose(r.json()["predictions"][0]["scores"], ref1["scores"][0], atol=1e-6)
            versions = [s["version"] for s in http.get("/v1/models/pose").json()["model_version_status"]]
            assert sorted(versions) == ["1", "5"]
            # A new model appears too.
            _copy(exported[1], str(root / "other.tmp"))
            os.makedirs(root / "other")
            os.rename(root / "other.tmp", root / "other" / "3")
            assert _wait_for(lambda: http.get("/v1/models/other").status_code == 200)
    finally:
        running.stop()


# -- concurrency ---------------------------------------------------------------------------------
@pytest.mark.parametrize("batching", [False, True], ids=["pool", "batching"])
def test_load_200_requests_8_concurrent(models_dir, exported, images, batching):
    a, b, c = images
    bodies = [png_bytes(x) for x in (a, b, c)]
    refs = [reference(exported[1], x[None]) for x in (a, b, c)]
    opts = ServerOptions(
        poll_interval=0, batching=BatchingOptions(max_batch_size=8, batch_timeout_micros=5000) if batching else None
    )
    app = create_app(models_dir, opts)
    running = RunningServer(app)
    errors, mismatches = [], []

    def worker(i: int):
        k = i % 3
        try:
            with httpx.Client(base_url=running.url, timeout=60) as http:
                r = http.post("/v1/models/pose:predict", json={"instances": [b64(bodies[k])]})
            if r.status_code != 200:
                errors.append(r.text)
                return
            got = np.asarray(r.json()["predictions"][0]["scores"])
            if not np.allclose(got, refs[k]["scores"][0], atol=1e-6):
                mismatches.append(i)  # a batched reply sliced for the wrong request
        except Exception as exc:  # noqa: BLE001 - the test counts every failure
            errors.append(repr(exc))

    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(worker, range(200)))
    finally:
        running.stop()
    assert errors == [] and mismatches == []
    if batching:
        sizes = app.state.batcher.batch_sizes
        assert sum(sizes) == 200
        assert max(sizes) > 1  # concurrent same-shape requests were grouped
        assert max(sizes) <= 8


def test_batching_config_file_parses():
    opts = load_batching_config(os.path.join(REPO_ROOT, "serving", "batching.config"))
    assert opts.max_batch_size >= 1 and opts.batch_timeout_micros >= 0 and opts.num_batch_threads >= 1
    with pytest.raises(ValueError, match="max_batch_size"):
        BatchingOptions(max_batch_size=0)


def test_deployment_files_agree():
    """compose.yaml mounts the base path and configs that models.config / the flags refer to."""
    import re

    import yaml

    compose = yaml.safe_load(open(os.path.join(REPO_ROOT, "serving", "compose.yaml")))
    images = {s["image"] for s in compose["services"].values()}
    assert images == {"tensorflow/serving:latest", "tensorflow/serving:latest-gpu"}
    for svc in compose["services"].values():
        assert "--rest_api_port=8501" in svc["command"]
        assert any(p.endswith(":8501:8501") and p.startswith("127.0.0.1:") for p in svc["ports"])
        mounts = {v.rsplit(":", 2)[1] for v in svc["volumes"]}  # SRC:DST:ro, SRC may hold ":"
        flags = dict(f.split("=", 1) for f in svc["command"])
        assert flags["--model_config_file"] in mounts and flags["--batching_parameters_file"] in mounts
        assert "/models" in mounts
    config = open(os.path.join(REPO_ROOT, "serving", "models.config")).read()
    assert re.findall(r'base_path:\s*"([^"]+)"', config) == ["/models/kerapose"]


def test_cli_arguments():
    import argparse
    import inspect

    from kerapose.serving import add_serve_arguments
    from kerapose.serving.server import build_options

    args = add_serve_arguments(argparse.ArgumentParser()).parse_args(
        ["models", "--enable-batching", "--max-batch-size", "4", "--max-body-mb", "1"]
    )
    assert args.host == "127.0.0.1" and args.port == 8501  # local-only by default
    known = {k: v for k, v in vars(args).items() if k not in ("models_dir", "host", "port", "log_level")}
    # serve_main drops unknown keys (argparse's func/command): every parser option must be consumed.
    assert set(known) <= set(inspect.signature(build_options).parameters)
    opts = build_options(**known)
    assert opts.batching.max_batch_size == 4 and opts.max_body_bytes == 1024 * 1024
    with pytest.raises(ValueError, match="request_timeout"):
        build_options(request_timeout=0)


def test_serves_a_real_kerapose_end_to_end_export(tmp_path, coco_val):
    """export_model(..., end_to_end=True, version=1) -> kerapose serve -> :pose equals the SavedModel."""
    import keras

    from kerapose.export import export_model
    from kerapose.models import MultiPoseNet

    keras.utils.set_random_seed(11)
    model = MultiPoseNet("resnet18", fpn_size=32, keypoint_head_size=16, keypoint_fuse_size=32, prn_hidden=16)
    models = tmp_path / "models"
    export_model(model, "savedmodel", str(models / "mpn"), end_to_end=True, input_size=(128, 128), max_people=5,
                 version=1, score_threshold=0.0)
    rec = coco_val.record(coco_val.image_ids[0])
    with open(rec.path, "rb") as f:
        jpeg = f.read()
    running = RunningServer(create_app(str(models), ServerOptions(poll_interval=0.5, threads=2)))
    try:
        with httpx.Client(base_url=running.url, timeout=60) as c:
            assert c.get("/v1/models/mpn").json()["model_version_status"][0]["state"] == "AVAILABLE"
            people = c.post("/v1/models/mpn:pose", content=jpeg).json()
            pred = c.post("/v1/models/mpn:predict",
                          json={"instances": [{"b64": base64.b64encode(jpeg).decode()}]}).json()["predictions"][0]
    finally:
        running.stop()
    sig = tf.saved_model.load(str(models / "mpn" / "1")).signatures["serving_default"]
    ref = sig(image=tf.io.decode_jpeg(jpeg, channels=3)[None])
    n = int(ref["num_poses"][0])
    assert len(people) == n == pred["num_poses"] == 5
    np.testing.assert_allclose(np.array([p["keypoints"] for p in people]), ref["keypoints"][0, :n], atol=1e-3)
    np.testing.assert_allclose(pred["boxes"], ref["boxes"][0], atol=1e-3)
    # coordinates are in the original image's pixels, not the 128x128 network input
    assert np.array([p["box"] for p in people])[:, 2].max() > 128
