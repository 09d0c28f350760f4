"""What every task model shares: ``predict_poses`` (one traced end-to-end graph per setting, run
image by image) and the constructor arguments of its saved config."""

from __future__ import annotations

from typing import Callable

import numpy as np


def predict_with_graph(cache: dict, key: tuple, build: Callable, images) -> list[dict]:
    """Poses for a list of RGB uint8 images through the end-to-end graph ``build()`` returns.

    The graph is wrapped once per ``key`` in ``cache`` as a ``tf.function`` whose input signature
    takes any image size (one trace for every size; eager calls of the graph are several times
    slower). Returns one dict per image with ``keypoints`` [N, K, 3], ``scores`` [N], ``boxes``
    [N, 4], unpadded to the image's ``num_poses``.
    """
    import tensorflow as tf

    if key not in cache:
        graph = build()
        cache[key] = tf.function(lambda x: graph(x, training=False), reduce_retracing=True,
                                 input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
    e2e = cache[key]
    results = []
    for img in images:
        arr = np.asarray(img)
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise ValueError(f"expected an RGB image [H, W, 3], got shape {arr.shape}")
        if arr.dtype != np.uint8:
            raise ValueError(f"expected a uint8 image, got dtype {arr.dtype}")
        out = {k: np.asarray(v) for k, v in e2e(arr[None]).items()}
        n = int(out["num_poses"][0])
        results.append({"keypoints": out["keypoints"][0, :n], "scores": out["scores"][0, :n],
                        "boxes": out["boxes"][0, :n]})
    return results


def constructor_kwargs(config: dict) -> dict:
    """A task model's ``get_config`` -> its constructor's keyword arguments: Keras' own
    ``trainable`` / ``dtype`` dropped, the JSON list ``input_shape`` back to a tuple."""
    config = dict(config)
    config.pop("trainable", None)
    config.pop("dtype", None)
    config["input_shape"] = tuple(config.get("input_shape", (None, None, 3)))
    return config
