"""Shared by the serving tests (test_serving, test_serving_errors, test_first_hour,
test_strongpose_training): a tiny end-to-end-signature SavedModel, a uvicorn server in a thread,
image encoders. A module of its own so that no test module imports another."""

from __future__ import annotations

import base64
import socket
import threading
import time

import cv2
import keras
import numpy as np
import tensorflow as tf
import uvicorn

M, K = 3, 4  # padded poses, keypoints per pose


def export_pose_model(path: str, offset: float) -> None:
    """A Keras export whose outputs depend on per-channel means, image size and ``offset``."""
    dense = keras.layers.Dense(
        M,
        kernel_initializer=keras.initializers.Constant(np.arange(3 * M, dtype="float32").reshape(3, M) / 4 - 1),
        bias_initializer=keras.initializers.Constant(offset),
    )
    dense.build((None, 3))
    ops = keras.ops

    def serve(image):
        x = ops.cast(image, "float32") / 255.0
        mean = ops.mean(x, axis=(1, 2))  # [B, 3]
        scores = ops.sigmoid(dense(mean))  # [B, M]
        h = ops.cast(ops.shape(image)[1], "float32")
        w = ops.cast(ops.shape(image)[2], "float32")
        j = ops.arange(M * K, dtype="float32") / (M * K)  # [M*K]
        kx = ops.reshape(mean[:, :1] * w * (0.5 + j), (-1, M, K))  # uses the red mean
        ky = ops.reshape(mean[:, 2:3] * h * (1.0 - j / 2), (-1, M, K))  # uses the blue mean
        ks = ops.repeat(scores[:, :, None], K, axis=2)
        keypoints = ops.stack([kx, ky, ks], axis=-1)
        boxes = ops.stack(
            [ops.min(kx, axis=2), ops.min(ky, axis=2), ops.max(kx, axis=2), ops.max(ky, axis=2)], axis=-1
        )
        num_poses = ops.sum(ops.cast(scores > 0.5, "int32"), axis=1)
        return {"keypoints": keypoints, "scores": scores, "boxes": boxes, "num_poses": num_poses}

    archive = keras.export.ExportArchive()
    archive.track(dense)
    archive.add_endpoint(
        "serving_default", serve, input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="image")]
    )
    archive.write_out(path, verbose=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningServer:
    def __init__(self, app):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=10)



def png_bytes(rgb: np.ndarray) -> bytes:
    return cv2.imencode(".png", rgb[:, :, ::-1])[1].tobytes()


def jpeg_bytes(rgb: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode("ascii")}
