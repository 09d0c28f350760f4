"""Shared data and peer models of the benchmark scripts: the ``shared/`` folder beside the
checkout, and MoveNet MultiPose Lightning's LiteRT files (``shared/peers/movenet-multipose-lightning``)
to time and score beside kerapose's exports in the same process."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

MOVENET = "peers/movenet-multipose-lightning/movenet_multipose_lightning_fp16_{h}x{w}.tflite"
MOVENET_SIZES = ((256, 256), (256, 384))


def find_shared(rel: str) -> Path:
    """``rel`` under ``$KERAPOSE_SHARED`` or the first ``shared/`` folder above this file."""
    env = os.environ.get("KERAPOSE_SHARED")
    roots = [Path(env)] if env else [p / "shared" for p in Path(__file__).resolve().parents]
    for root in roots:
        if (root / rel).exists():
            return root / rel
    raise SystemExit(f"{rel} not found under ../shared; set KERAPOSE_SHARED")


class MoveNet:
    """MoveNet MultiPose Lightning at one of :data:`MOVENET_SIZES` on LiteRT.

    ``movenet(rgb_uint8)`` letterboxes the image into the input (as kerapose's end-to-end graphs
    do: top-left, zero padding), runs the model and returns ``{"keypoints" [N, 17, 3] (x, y, score)
    in the image's pixels, "scores" [N]}`` for its people scoring at least ``score_threshold``;
    ``movenet.invoke(frame)`` runs an already letterboxed int32 frame, for timing.
    """

    def __init__(self, size: tuple[int, int], threads: int = 2, score_threshold: float = 0.1):
        from ai_edge_litert.interpreter import Interpreter

        self.size = tuple(size)
        self.path = str(find_shared(MOVENET.format(h=size[0], w=size[1])))
        self.interpreter = Interpreter(model_path=self.path, num_threads=threads)
        self.interpreter.allocate_tensors()
        self._input = self.interpreter.get_input_details()[0]["index"]
        self._output = self.interpreter.get_output_details()[0]["index"]
        self.score_threshold = float(score_threshold)

    def invoke(self, frame: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self._input, frame)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self._output)

    def frame(self, rgb_uint8: np.ndarray) -> tuple[np.ndarray, float]:
        """The letterboxed int32 input ``[1, h, w, 3]`` and the image -> input scale."""
        from kerapose.export.tflite import letterbox_uint8

        h, w = rgb_uint8.shape[:2]
        scale = min(self.size[0] / h, self.size[1] / w)
        return letterbox_uint8(rgb_uint8, self.size)[None].astype(np.int32), scale

    def __call__(self, rgb_uint8: np.ndarray) -> dict:
        frame, scale = self.frame(rgb_uint8)
        out = self.invoke(frame)[0]  # [6, 56]: 17 x (y, x, score), box, person score
        keep = out[:, 55] >= self.score_threshold
        kp = out[keep, :51].reshape(-1, 17, 3)
        xy = np.stack([kp[..., 1] * self.size[1], kp[..., 0] * self.size[0]], -1) / scale
        return {"keypoints": np.concatenate([xy, kp[..., 2:3]], -1).astype(np.float32),
                "scores": out[keep, 55].astype(np.float32)}
