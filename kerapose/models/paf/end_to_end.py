"""End-to-end PAF models: uint8 image of any size in, people out, all in one TF graph.

For every PAF-family model (:class:`~kerapose.models.paf.networks.PafBaseline`, FTN, MLN,
:class:`~kerapose.models.paf.mobilenet.PafMobileNetV2`). Follows DESIGN.md's serving contract:
input ``image`` uint8 [B, H, W, 3] RGB; outputs ``keypoints`` [B, M, K, 3] (x, y, score),
``scores`` [B, M], ``boxes`` [B, M, 4] and ``num_poses`` [B], in the original image's pixels,
padded to M people (K and the keypoint order are the model's keypoint set, e.g. OpenPose-18).

1. :class:`PafFrame`: the network input. ``input_size=None`` (native resolution): the image as
   it is, padded bottom/right with zeros to the model's size multiple (8 for the VGG models,
   16 for MobileNetV2, whose stride-2 convolutions must see even sizes as in training).
   ``input_size=(H, W)``: letterboxed into H x W
   (:class:`~kerapose.models.multiposenet.end_to_end.Letterbox`, bilinear, aspect ratio kept).
2. The network, told which part of its input is image (``extent``): models that normalise with
   per-image statistics (tf-pose's MobileNetV2) ignore the padding.
3. :class:`~kerapose.codecs.paf_graph.PafGrouping`: peaks on the stride-8 maps with sub-pixel
   refinement and OpenPose's greedy grouping (TFLite builtins, ONNX), with the model's grouping
   defaults (:attr:`grouping_defaults`); the distance prior uses the image's height in
   network pixels.
4. :class:`PafPosesToImage`: keypoints back to image pixels and boxes around each person's parts.
   The network pixel ``p`` of a half-pixel-centre resize by ``s = new/old`` (per axis) is image
   pixel ``(p + 0.5) / s - 0.5``; at native resolution the mapping is the identity, so the
   cell-to-pixel convention is :mod:`kerapose.codecs.grid`'s (cell ``j`` at ``8j + 3.5``).

:func:`to_image_pixels` is step 4 in numpy, for pipelines that group with
:class:`~kerapose.codecs.paf.PafCodec` outside the graph.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from kerapose.codecs.paf_graph import PafGrouping
from kerapose.layers import Letterbox

__all__ = [
    "PafFrame",
    "PafPosesToImage",
    "paf_end_to_end",
    "paf_predict_poses",
    "to_image_pixels",
]


@keras.saving.register_keras_serializable(package="kerapose")
class PafFrame(keras.layers.Layer):
    """Image batch -> the network input and where the image lies in it.

    Returns ``(frame [B, H', W', 3] float32, scale [B, 2] (x, y) network pixels per image pixel,
    extent [B, 2] fraction of (H', W') holding the image, image_hw [B, 2] the image's (h, w)
    in network pixels)``.

    Args:
        size: ``None`` for native resolution (padding only), or the letterbox size (H, W).
        multiple: with ``size=None``, pad H and W up to multiples of this.
    """

    keeps_float = True  # int8 export keeps it float32: coordinates and scores are never int8

    def __init__(self, size: tuple[int, int] | None = None, multiple: int = 8, **kwargs):
        super().__init__(**kwargs)
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.multiple = int(multiple)
        if self.multiple < 1:
            raise ValueError(f"multiple must be >= 1, got {multiple!r}")
        self._letterbox = None if self.size is None else Letterbox(self.size, dtype="float32")

    def build(self, input_shape):
        if self._letterbox is not None:  # weightless; built here so that loading a saved graph is quiet
            self._letterbox.build(input_shape)

    def call(self, image):
        img = tf.cast(image, tf.float32)
        batch = tf.shape(img)[0]
        hw = tf.cast(tf.shape(img)[1:3], tf.float32)
        if self.size is None:
            new_hw = hw
            m = float(self.multiple)
            target = tf.math.ceil(hw / m) * m
            pad = tf.cast(target - hw, tf.int32)
            frame = tf.pad(img, [[0, 0], [0, pad[0]], [0, pad[1]], [0, 0]]) if self.multiple > 1 else img
        else:
            frame, scale = self._letterbox(img)
            target = tf.constant(self.size, tf.float32)
            # Letterbox's own rounding, so that the extent is exactly the resized image
            new_hw = tf.minimum(tf.maximum(tf.round(hw * scale[0]), 1.0), target)
        ratio = new_hw / hw  # per axis (y, x): what the resize really did
        scale_xy = tf.tile(tf.reverse(ratio, [0])[None], [batch, 1])
        extent = tf.tile((new_hw / target)[None], [batch, 1])
        image_hw = tf.tile(new_hw[None], [batch, 1])
        return frame, scale_xy, extent, image_hw

    def compute_output_spec(self, image):
        b = image.shape[0]
        hw = self.size if self.size is not None else (None, None)
        return (keras.KerasTensor((b, *hw, 3), "float32"), keras.KerasTensor((b, 2), "float32"),
                keras.KerasTensor((b, 2), "float32"), keras.KerasTensor((b, 2), "float32"))

    def get_config(self) -> dict:
        return {**super().get_config(), "size": None if self.size is None else list(self.size),
                "multiple": self.multiple}


@keras.saving.register_keras_serializable(package="kerapose")
class PafPosesToImage(keras.layers.Layer):
    """Grouped people in network pixels -> the serving contract in image pixels.

    ``(keypoints [B, M, K, 3], scores [B, M], num_poses [B], scale [B, 2])`` -> dict of
    ``keypoints``, ``scores``, ``boxes`` (x1, y1, x2, y2 around the person's found parts) and
    ``num_poses``. Missing parts (score 0) stay (0, 0, 0); rows past ``num_poses`` are zeros.
    """

    keeps_float = True  # int8 export keeps it float32: coordinates and scores are never int8

    def call(self, keypoints, scores, num_poses, scale):
        kp = tf.cast(keypoints, tf.float32)
        present = kp[..., 2] > 0.0  # grouped peaks score above the peak threshold (>= 0)
        pf = tf.cast(present, tf.float32)[..., None]
        s = tf.reshape(tf.cast(scale, tf.float32), [-1, 1, 1, 2])
        xy = ((kp[..., :2] + 0.5) / s - 0.5) * pf
        big = tf.constant(3.0e38, tf.float32)
        lo = tf.reduce_min(tf.where(present[..., None], xy, big), axis=2)  # [B, M, 2]
        hi = tf.reduce_max(tf.where(present[..., None], xy, -big), axis=2)
        person = tf.cast(tf.reduce_any(present, axis=2), tf.float32)[..., None]
        boxes = tf.concat([lo, hi], axis=-1) * person
        return {
            "keypoints": tf.concat([xy, kp[..., 2:]], axis=-1),
            "scores": tf.cast(scores, tf.float32),
            "boxes": boxes,
            "num_poses": tf.cast(num_poses, tf.int32),
        }

    def compute_output_spec(self, keypoints, scores, num_poses, scale):
        b, m, k = keypoints.shape[0], keypoints.shape[1], keypoints.shape[2]
        return {
            "keypoints": keras.KerasTensor((b, m, k, 3), "float32"),
            "scores": keras.KerasTensor((b, m), "float32"),
            "boxes": keras.KerasTensor((b, m, 4), "float32"),
            "num_poses": keras.KerasTensor((b,), "int32"),
        }


def paf_end_to_end(
    model,
    input_size: tuple[int, int] | None = None,
    max_people: int = 20,
    score_threshold: float | None = None,
    **grouping,
) -> keras.Model:
    """Wrap a PAF-family model into the end-to-end serving model (see the module docstring).

    Args:
        model: a PAF-family model (``paf_outputs``, ``size_multiple``, ``grouping_defaults``).
        input_size: ``None`` for native resolution, or the letterbox size (H, W), multiples of
            the model's ``size_multiple``.
        max_people: M, the padded number of people.
        score_threshold: people scoring below are dropped (the grouping's ``min_person_score``);
            ``None`` keeps the model's default.
        grouping: other :class:`PafGrouping` settings (``peak_threshold``, ``max_peaks``, ...),
            over the model's ``grouping_defaults``.
    """
    multiple = int(model.size_multiple)
    if input_size is not None:
        try:
            h, w = (int(v) for v in input_size)
        except (TypeError, ValueError):
            raise ValueError(f"input_size must be None (native resolution) or (H, W), got {input_size!r}") from None
        if h <= 0 or w <= 0 or h % multiple or w % multiple:
            raise ValueError(f"input_size {(h, w)} is not accepted by {model.name}: both sides must be positive "
                             f"multiples of {multiple}")
        input_size = (h, w)
    static = tuple(model.input_shape[1:3])
    if input_size is None and any(d is not None for d in static):
        raise ValueError(f"native-resolution inference needs a model built with input_shape (None, None, 3); "
                         f"{model.name} has {tuple(model.input_shape[1:])}: pass input_size={static}")
    if input_size is not None and any(d is not None and d != v for d, v in zip(static, input_size)):
        raise ValueError(f"input_size {input_size} differs from {model.name}'s fixed input size {static}")
    if int(max_people) < 1:
        raise ValueError(f"max_people must be >= 1, got {max_people}")
    settings = {**model.grouping_defaults, **grouping}
    if score_threshold is not None:
        settings["min_person_score"] = float(score_threshold)
    image = keras.Input(shape=(None, None, 3), dtype="uint8", name="image")
    # float32 whatever the global policy: decoding under mixed_float16 would lose pixel precision
    frame, scale, extent, image_hw = PafFrame(input_size, multiple, name="frame", dtype="float32")(image)
    heatmaps, pafs = model.paf_outputs(frame, extent)
    people = PafGrouping(model.keypoint_set.name, stride=8, max_people=int(max_people), name="grouping",
                         dtype="float32", **settings)(heatmaps, pafs, image_hw)
    out = PafPosesToImage(name="to_image", dtype="float32")(people["keypoints"], people["scores"],
                                                            people["num_poses"], scale)
    out = {k: keras.layers.Identity(name=k, dtype=v.dtype)(v) for k, v in out.items()}
    return keras.Model(image, out, name=f"{model.name}_end_to_end")


def paf_predict_poses(model, images, input_size: tuple[int, int] | None = None, max_people: int = 20,
                      score_threshold: float | None = None) -> list[dict]:
    """Poses for a list of RGB uint8 images ([H, W, 3], any sizes) with ``model.end_to_end``.

    Returns one dict per image: ``keypoints`` [N, K, 3] (x, y, score), ``scores`` [N] and
    ``boxes`` [N, 4] in that image's pixels (N = people found, unpadded). The graph is traced
    once per setting and cached on the model.
    """
    from kerapose.models.poses import predict_with_graph

    key = (None if input_size is None else tuple(int(v) for v in input_size), int(max_people), score_threshold)
    return predict_with_graph(
        model.__dict__.setdefault("_paf_end_to_end_cache", {}), key,
        lambda: paf_end_to_end(model, key[0], max_people=key[1], score_threshold=score_threshold), images)


def to_image_pixels(keypoints, scale_xy=(1.0, 1.0), offset=(0.0, 0.0)) -> "np.ndarray":  # noqa: F821
    """Numpy :class:`PafPosesToImage` for one image: ``keypoints [N, K, 3]`` in network pixels
    -> image pixels (found parts only; missing parts stay 0, 0, 0). ``offset`` (dx, dy) network
    pixels is added first, e.g. ``same_padding_shift`` for outputs computed at sizes that are
    not multiples of 16."""
    import numpy as np

    kp = np.array(keypoints, dtype=np.float32, copy=True).reshape(-1, np.shape(keypoints)[-2], 3)
    found = kp[..., 2] > 0
    s = np.asarray(scale_xy, np.float32)
    xy = (kp[..., :2] + np.asarray(offset, np.float32) + 0.5) / s - 0.5
    kp[..., :2] = np.where(found[..., None], xy, 0.0)
    return kp

