"""HTTP client for kerapose's embedded server and for the real TensorFlow Serving REST API.

Binary inputs differ between the two servers. kerapose's server decodes ``{"b64": ...}`` sent to
the uint8 ``image`` input as an encoded JPEG/PNG, and has a ``:pose`` endpoint that takes the
encoded bytes directly. Real TF Serving only decodes ``b64`` into DT_STRING tensors, so for the
uint8 image input the client must send the decoded pixels as nested lists: ``PoseClient(...,
tf_serving=True)`` does that in :meth:`PoseClient.pose` (decoding with OpenCV on the client).
"""

from __future__ import annotations

import base64
from typing import Any

import httpx
import numpy as np


class ServingError(RuntimeError):
    """A non-200 reply; ``status_code`` and the server's ``error`` message are kept."""

    def __init__(self, status_code: int, message: str):
        super().__init__(f"HTTP {status_code}: {message}")
        self.status_code = status_code
        self.message = message


def people_from_outputs(outputs: dict, index: int = 0) -> list[dict]:
    """Turn one image's signature outputs into ``[{"keypoints", "score", "box"}]``.

    ``outputs`` holds ``keypoints [B, M, K, 3]``, ``scores [B, M]``, ``boxes [B, M, 4]`` and
    ``num_poses [B]`` (arrays or nested lists); only the first ``num_poses`` of the padded M count.
    """
    for key in ("keypoints", "scores", "boxes", "num_poses"):
        if key not in outputs:
            raise ValueError(f"outputs: expected key {key!r}, got {sorted(outputs)}")
    kps = np.asarray(outputs["keypoints"], dtype=np.float64)[index]
    scores = np.asarray(outputs["scores"], dtype=np.float64)[index]
    boxes = np.asarray(outputs["boxes"], dtype=np.float64)[index]
    n = int(np.asarray(outputs["num_poses"])[index])
    n = max(0, min(n, kps.shape[0]))
    return [
        {"keypoints": kps[i].tolist(), "score": float(scores[i]), "box": boxes[i].tolist()}
        for i in range(n)
    ]


def _to_jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (bytes, bytearray)):
        return {"b64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, dict):
        return {k: _to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


class PoseClient:
    """Talks to ``{base_url}`` = ``http://HOST:8501/v1/models/NAME`` (or pass ``model=NAME`` with
    ``base_url`` = ``http://HOST:8501``).

    Works against kerapose's server and real TF Serving; set ``tf_serving=True`` for the latter so
    :meth:`pose` sends decoded pixels instead of encoded image bytes (see the module docstring).
    """

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        timeout: float = 30.0,
        tf_serving: bool = False,
        client: httpx.Client | None = None,
    ):
        base = base_url.rstrip("/")
        if model is not None:
            base = f"{base}/v1/models/{model}"
        elif "/v1/models/" not in base:
            raise ValueError(f"base_url: expected '.../v1/models/NAME' or model=NAME, got {base_url!r}")
        self.url = base
        self.tf_serving = tf_serving
        self._client = client or httpx.Client(timeout=timeout)
        self._own_client = client is None

    def close(self) -> None:
        if self._own_client:
            self._client.close()

    def __enter__(self) -> "PoseClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _url(self, version: int | None, suffix: str = "") -> str:
        url = self.url if version is None else f"{self.url}/versions/{int(version)}"
        return url + suffix

    def _check(self, resp: httpx.Response) -> Any:
        try:
            body = resp.json()
        except ValueError:
            body = None
        if resp.status_code != 200:
            msg = body.get("error", resp.text) if isinstance(body, dict) else resp.text
            raise ServingError(resp.status_code, msg)
        return body

    def status(self, version: int | None = None) -> dict:
        """``GET /v1/models/NAME[/versions/V]``: ``{"model_version_status": [...]}``."""
        return self._check(self._client.get(self._url(version)))

    def metadata(self, version: int | None = None) -> dict:
        """``GET .../metadata``: model spec and the ``serving_default`` signature."""
        return self._check(self._client.get(self._url(version, "/metadata")))

    def predict(
        self,
        instances: Any = None,
        inputs: Any = None,
        version: int | None = None,
        signature_name: str | None = None,
    ) -> Any:
        """Row format (``instances``) returns ``predictions``; columnar (``inputs``) returns ``outputs``.

        Numpy arrays become nested lists and ``bytes`` become ``{"b64": ...}``.
        """
        if (instances is None) == (inputs is None):
            raise ValueError("predict: pass exactly one of instances= or inputs=")
        body: dict = {"instances": _to_jsonable(instances)} if inputs is None else {
            "inputs": _to_jsonable(inputs)
        }
        if signature_name:
            body["signature_name"] = signature_name
        result = self._check(self._client.post(self._url(version, ":predict"), json=body))
        return result["predictions"] if inputs is None else result["outputs"]

    def pose(self, image: bytes | np.ndarray, version: int | None = None) -> list[dict]:
        """People in one image (encoded JPEG/PNG bytes, or an RGB uint8 ``[H, W, 3]`` array)."""
        if not self.tf_serving and isinstance(image, (bytes, bytearray)):
            resp = self._client.post(
                self._url(version, ":pose"),
                content=bytes(image),
                headers={"content-type": "application/octet-stream"},
            )
            return self._check(resp)
        if isinstance(image, (bytes, bytearray)):
            import cv2  # only needed when the server cannot decode images

            bgr = cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR)
            if bgr is None:
                raise ValueError("image: bytes are not a decodable JPEG/PNG")
            image = bgr[:, :, ::-1]
        arr = np.asarray(image)
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"image: expected uint8 [H, W, 3], got {arr.dtype} {arr.shape}")
        outputs = self.predict(inputs={"image": arr[None]}, version=version)
        return people_from_outputs(outputs)
