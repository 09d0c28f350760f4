"""Bad requests to the embedded TF-Serving-compatible server: always a 4xx with TF Serving's JSON
error body, never a 5xx, whatever the nesting, size, encoding or types; a real server fault is a
500 with a short message and a logged traceback; and the server keeps serving afterwards.

Two tiny SavedModels: ``pose`` (kerapose's end-to-end signature, uint8 ``image``
[B, H, W, 3], from tests/serving_helpers.py) and ``vec`` (float32 ``x`` [B, 3] and int32 ``k``
[B] -> ``y = 2 x + k``), so float and integer validation are both exercised.
"""

from __future__ import annotations

import base64
import json
import logging
import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import httpx  # noqa: E402
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from serving_helpers import RunningServer, export_pose_model, png_bytes  # noqa: E402

from kerapose.serving.models import ModelRepository  # noqa: E402
from kerapose.serving.server import ServerOptions, create_app  # noqa: E402


def export_vec_model(path: str) -> None:
    scale = keras.layers.Dense(1, kernel_initializer="ones", bias_initializer="zeros")  # tracked, unused by y
    scale.build((None, 1))

    def serve(x, k):
        return {"y": x * 2.0 + keras.ops.cast(k, "float32")[:, None]}

    archive = keras.export.ExportArchive()
    archive.track(scale)
    archive.add_endpoint("serving_default", serve, input_signature=[
        tf.TensorSpec([None, 3], tf.float32, name="x"), tf.TensorSpec([None], tf.int32, name="k")])
    archive.write_out(path, verbose=False)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    export_pose_model(str(root / "pose" / "1"), 0.0)
    export_vec_model(str(root / "vec" / "1"))
    repo = ModelRepository(str(root))
    options = ServerOptions(poll_interval=0, max_body_bytes=3_000_000, max_image_pixels=300 * 300,
                            request_timeout=20, threads=2)
    running = RunningServer(create_app(repo, options))
    with httpx.Client(base_url=running.url, timeout=30) as client:
        yield client, repo
    running.stop()


IMAGE = np.arange(8 * 10 * 3, dtype=np.uint8).reshape(8, 10, 3)
PNG = {"b64": base64.b64encode(png_bytes(IMAGE)).decode("ascii")}


def _j(obj) -> bytes:
    return json.dumps(obj).encode()


def _deep(n: int, inner: bytes = b"1") -> bytes:
    return b"[" * n + inner + b"]" * n


POSE = "/v1/models/pose:predict"
VEC = "/v1/models/vec:predict"
BAD = {
    # nesting
    "deep arrays 100000": (POSE, b'{"instances": ' + _deep(100_000) + b"}"),
    "deep objects 100000": (POSE, b'{"a":' * 100_000 + b"1" + b"}" * 100_000),
    "deep top-level array": (POSE, _deep(100_000)),
    "deep arrays 900": (POSE, b'{"inputs": ' + _deep(900) + b"}"),
    "deeper than numpy's 64 dims": (POSE, b'{"inputs": ' + _deep(70) + b"}"),
    "deep inside a row object": (POSE, b'{"instances": [{"image": ' + _deep(100_000) + b"}]}"),
    # encoding
    "non-UTF-8 bytes": (POSE, b'{"instances": [\xff\xfe\xfd]}'),
    "latin-1 string": (POSE, b'{"signature_name": "caf\xe9", "instances": [1]}'),
    "binary junk": (POSE, bytes(range(256)) * 4),
    "empty body": (POSE, b""),
    "UTF-16 JSON of wrong types": (POSE, json.dumps({"instances": "x"}).encode("utf-16")),
    "lone surrogate in b64": (POSE, b'{"instances": [{"b64": "\\ud800"}]}'),
    "non-ASCII b64": (POSE, _j({"instances": [{"b64": "caf\u00e9"}]})),
    # huge numbers, NaN, Infinity
    "1e400 pixel": (POSE, b'{"inputs": [[[[1e400, 0, 0]]]]}'),
    "-1e400 pixel": (POSE, b'{"inputs": [[[[-1e400, 0, 0]]]]}'),
    "10**400 pixel": (POSE, b'{"inputs": [[[[' + str(10**400).encode() + b', 0, 0]]]]}'),
    "10**5000 pixel": (POSE, b'{"inputs": [[[[' + b"9" * 5000 + b', 0, 0]]]]}'),
    "NaN pixel": (POSE, b'{"inputs": [[[[NaN, 0, 0]]]]}'),
    "Infinity pixel": (POSE, b'{"instances": [[[[Infinity, 0, 0]]]]}'),
    "NaN float": (VEC, b'{"inputs": {"x": [[NaN, 0, 0]], "k": [1]}}'),
    "-Infinity float": (VEC, b'{"instances": [{"x": [-Infinity, 0, 0], "k": 1}]}'),
    "1e400 float": (VEC, b'{"inputs": {"x": [[1e400, 0, 0]], "k": [1]}}'),
    "1e39 beyond float32": (VEC, b'{"inputs": {"x": [[1e39, 0, 0]], "k": [1]}}'),
    "10**400 float": (VEC, b'{"inputs": {"x": [[' + str(10**400).encode() + b', 0, 0]], "k": [1]}}'),
    "2**40 beyond int32": (VEC, _j({"inputs": {"x": [[0, 0, 0]], "k": [2**40]}})),
    "10**30 int": (VEC, _j({"inputs": {"x": [[0, 0, 0]], "k": [10**30]}})),
    "NaN int": (VEC, b'{"inputs": {"x": [[0, 0, 0]], "k": [NaN]}}'),
    "NaN signature name": (POSE, b'{"signature_name": NaN, "instances": [1]}'),
    # wrong types at the top level
    "body list": (POSE, _j([PNG])),
    "body number": (POSE, b"1e400"),
    "body string": (POSE, _j("x")),
    "body null": (POSE, b"null"),
    "both instances and inputs": (POSE, _j({"instances": [PNG], "inputs": [PNG]})),
    "signature_name list": (POSE, _j({"signature_name": [1], "instances": [PNG]})),
    "signature_name object": (POSE, _j({"signature_name": {"a": 1}, "instances": [PNG]})),
    # ... of instances
    "instances null": (POSE, _j({"instances": None})),
    "instances number": (POSE, _j({"instances": 3})),
    "instances string": (POSE, _j({"instances": "abc"})),
    "instances object": (POSE, _j({"instances": {"image": 1}})),
    "instances b64 object": (POSE, _j({"instances": PNG})),
    "instances true": (POSE, _j({"instances": True})),
    # ... of an instance
    "instance null": (POSE, _j({"instances": [None]})),
    "instance string": (POSE, _j({"instances": ["abc"]})),
    "instance bool": (POSE, _j({"instances": [True]})),
    "instance float": (POSE, _j({"instances": [1.5]})),
    "instance empty object": (POSE, _j({"instances": [{}]})),
    "instance unknown input": (POSE, _j({"instances": [{"img": PNG}]})),
    "instance b64 plus key": (POSE, _j({"instances": [{"b64": PNG["b64"], "x": 1}]})),
    "instance input null": (POSE, _j({"instances": [{"image": None}]})),
    "instance input object": (POSE, _j({"instances": [{"image": {"a": 1}}]})),
    "instance list for 2 inputs": (VEC, _j({"instances": [[1, 2, 3]]})),
    "instance missing input": (VEC, _j({"instances": [{"x": [1, 2, 3]}]})),
    "instance fractional int": (VEC, _j({"instances": [{"x": [1, 2, 3], "k": 1.5}]})),
    "instance string int": (VEC, _j({"instances": [{"x": [1, 2, 3], "k": "1"}]})),
    "instance bool float": (VEC, _j({"instances": [{"x": [True, False, True], "k": 1}]})),
    "instances of mixed shapes": (VEC, _j({"instances": [{"x": [1, 2, 3], "k": 1}, {"x": [1, 2], "k": 1}]})),
    # ... deeper inside the pixels
    "null pixel": (POSE, _j({"instances": [[[[None, 0, 0]]]]})),
    "string pixels": (POSE, _j({"instances": [[[["a", "b", "c"]]]]})),
    "object pixel": (POSE, _j({"instances": [[[[{"x": 1}, 0, 0]]]]})),
    "bool pixels": (POSE, _j({"inputs": [[[[True, False, True]]]]})),
    "ragged rows": (POSE, _j({"inputs": [[[[1, 2, 3], [1, 2]]]]})),
    "list beside number": (POSE, _j({"inputs": [[[[1, 2, 3], 4]]]})),
    "empty pixels": (POSE, _j({"inputs": [[[[]]]]})),
    "negative pixel": (POSE, _j({"inputs": [[[[-1, 0, 0]]]]})),
    # ... of inputs
    "inputs null": (POSE, _j({"inputs": None})),
    "inputs string": (POSE, _j({"inputs": "abc"})),
    "inputs true": (POSE, _j({"inputs": True})),
    "inputs input null": (POSE, _j({"inputs": {"image": None}})),
    "inputs unknown name": (POSE, _j({"inputs": {"img": [PNG]}})),
    "inputs float for 2 inputs": (VEC, _j({"inputs": 1.0})),
    "inputs k string": (VEC, _j({"inputs": {"x": [[1, 2, 3]], "k": "abc"}})),
    "inputs x nested object": (VEC, _j({"inputs": {"x": [[{"b64": "AAAA"}, 2, 3]], "k": [1]}})),
    # b64 of the wrong kind
    "b64 number": (POSE, _j({"instances": [{"b64": 5}]})),
    "b64 list": (POSE, _j({"inputs": {"image": {"b64": ["AAAA"]}}})),
    "b64 invalid": (POSE, _j({"instances": [{"b64": "@@@"}]})),
    "b64 not an image": (POSE, _j({"instances": [{"b64": base64.b64encode(b"hello").decode()}]})),
    "b64 for a float input": (VEC, _j({"inputs": {"x": PNG, "k": [1]}})),
    "b64 for an int input": (VEC, _j({"instances": [{"x": [1, 2, 3], "k": PNG}]})),
    "b64 list beside pixels": (POSE, _j({"instances": [PNG, [[[1, 2, 3]]]]})),
    # the :pose endpoint
    "pose deep JSON": ("/v1/models/pose:pose", b'{"image": ' + _deep(100_000) + b"}"),
    "pose deep JSON list": ("/v1/models/pose:pose", _deep(100_000)),
    "pose non-UTF-8 JSON": ("/v1/models/pose:pose", b'{"image": "\xff"}'),
    "pose image number": ("/v1/models/pose:pose", _j({"image": 5})),
    "pose image b64 number": ("/v1/models/pose:pose", _j({"image": {"b64": 5}})),
    "pose NaN": ("/v1/models/pose:pose", b'{"image": NaN}'),
    "pose on a non-image model": ("/v1/models/vec:pose", png_bytes(IMAGE)),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_request_is_4xx_json(served, name):
    http, _ = served
    path, body = BAD[name]
    headers = {"content-type": "application/json"} if not name.startswith("pose on") else {}
    r = http.post(path, content=body, headers=headers)
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()
    assert set(err) == {"error"} and isinstance(err["error"], str) and err["error"], err
    assert len(err["error"]) < 500


def test_messages_say_what_is_wrong(served):
    http, _ = served
    expect = {
        "deep arrays 100000": "nested too deeply",
        "deeper than numpy's 64 dims": "nested deeper than",
        "non-UTF-8 bytes": "JSON Parse error",
        "1e400 pixel": "NaN and Infinity",
        "10**400 pixel": "out of range",
        "NaN float": "finite",
        "1e39 beyond float32": "out of range for float32",
        "2**40 beyond int32": "out of range for int32",
        "null pixel": "null",
        "ragged rows": "ragged",
        "b64 for a float input": "'b64' values are only accepted",
    }
    for name, words in expect.items():
        path, body = BAD[name]
        msg = http.post(path, content=body).json()["error"]
        assert words in msg, (name, msg)


def test_server_keeps_serving_after_bad_requests(served):
    http, _ = served
    for path, body in (BAD["deep arrays 100000"], BAD["non-UTF-8 bytes"], BAD["NaN float"]):
        assert 400 <= http.post(path, content=body).status_code < 500
    r = http.post(POSE, json={"instances": [PNG]})
    assert r.status_code == 200, r.text
    assert set(r.json()["predictions"][0]) == {"keypoints", "scores", "boxes", "num_poses"}
    r = http.post(VEC, json={"instances": [{"x": [1, 2, 3], "k": 4}, {"x": [0.5, 0, -1], "k": -2}]})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose([p for p in r.json()["predictions"]], [[6, 8, 10], [-1, -2, -4]])
    r = http.post("/v1/models/pose:pose", content=png_bytes(IMAGE))
    assert r.status_code == 200 and isinstance(r.json(), list)


def test_server_fault_is_500_short_and_logged(served, caplog):
    http, repo = served
    model = repo.get("vec")
    original = model.function

    def broken(**tensors):
        raise RuntimeError("secret internal detail at /srv/models/vec")

    model.function = broken
    try:
        with caplog.at_level(logging.ERROR, logger="kerapose.serving"):
            r = http.post(VEC, json={"instances": [{"x": [1, 2, 3], "k": 4}]})
    finally:
        model.function = original
    assert r.status_code == 500
    msg = r.json()["error"]
    assert "RuntimeError" in msg and "secret" not in msg and len(msg) < 120
    logged = [rec for rec in caplog.records if rec.name == "kerapose.serving" and rec.exc_info]
    assert logged and "secret internal detail" in str(logged[0].exc_info[1])
    r = http.post(VEC, json={"instances": [{"x": [1, 2, 3], "k": 4}]})
    assert r.status_code == 200 and r.json()["predictions"] == [[6.0, 8.0, 10.0]]
