"""Multi-scale (and flip) test-time augmentation for the PAF family, inside the TF graph.

OpenPose's best results average the network's maps over 4 scales 0.25 apart (its
``--scale_number 4 --scale_gap 0.25``: scales 1, 0.75, 0.5, 0.25 of the base input). Here:

* For each scale ``s`` the image ``[B, H, W, 3]`` is resized (bilinear, no antialias: a
  TFLite builtin) to ``max(m, round(H * s / m) * m)`` x the same for W, ``m`` = 8 (the
  network's size multiple), and the network runs on it.
* Its ``heatmaps`` and ``pafs`` are resized (bilinear) to the base grid ``H/8 x W/8``. Both
  resizes use half-pixel centres, so a cell and the image region it covers stay aligned at
  every scale (cell edges are proportional to image edges).
* With ``flip``, every scale also runs on the mirrored image (in the same network call, as a
  second half of the batch); its maps are mirrored back, heatmap channels are swapped with the
  keypoint set's ``flip_index`` (the background channel stays), and PAF channels of limb
  ``(a, b)`` are taken from the limb ``(flip(a), flip(b))`` with x negated
  (:func:`paf_flip_permutation`; a limb listed in the other direction also negates y).
* All passes are averaged with equal weight.

API: :func:`multiscale_maps` (a function on tensors, for graphs and eager code) and the
registered layer :class:`PafMultiScale` (``image -> {"heatmaps", "pafs"}``), which owns the
network: build an end-to-end graph as ``maps = PafMultiScale(net, scales, flip)(image)`` and
feed ``maps`` to :class:`kerapose.codecs.paf_graph.PafGrouping`; the network is then stored
once in a saved ``.keras`` file.
"""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from kerapose.skeleton import KeypointSet, get_keypoint_set

__all__ = ["DEFAULT_SCALES", "paf_flip_permutation", "heatmap_flip_permutation", "multiscale_maps", "PafMultiScale"]

DEFAULT_SCALES: tuple[float, ...] = (1.0, 0.75, 0.5, 0.25)


def heatmap_flip_permutation(keypoint_set: str | KeypointSet, channels: int | None = None) -> np.ndarray:
    """Channel index ``p`` with ``unflipped[..., c] = mirrored_back[..., p[c]]`` for heatmaps
    (the keypoint set's ``flip_index``; extra channels such as the background stay)."""
    ks = get_keypoint_set(keypoint_set)
    channels = ks.num_heatmap_channels if channels is None else int(channels)
    if channels < ks.num_keypoints:
        raise ValueError(f"heatmaps: expected at least {ks.num_keypoints} channels for {ks.name!r}, got {channels}")
    return np.concatenate([ks.flip_index, np.arange(ks.num_keypoints, channels)]).astype(np.int64)


def paf_flip_permutation(keypoint_set: str | KeypointSet) -> tuple[np.ndarray, np.ndarray]:
    """``(index [2L], sign [2L])`` with ``unflipped[..., c] = sign[c] * mirrored_back[..., index[c]]``.

    Limb ``i = (a, b)`` of the original image is limb ``(f(a), f(b))`` in the mirrored one
    (``f`` = ``flip_index``); mirroring negates x. A limb whose mirror is listed as
    ``(f(b), f(a))`` points the other way, which negates both components. A keypoint set whose
    limb list is not closed under the flip is refused (no channel could be unflipped).
    """
    ks = get_keypoint_set(keypoint_set)
    f = ks.flip_index
    where = {(int(a), int(b)): i for i, (a, b) in enumerate(ks.limbs)}
    index = np.zeros(2 * ks.num_limbs, np.int64)
    sign = np.zeros(2 * ks.num_limbs, np.float32)
    for i, (a, b) in enumerate(ks.limbs):
        fa, fb = int(f[a]), int(f[b])
        if (fa, fb) in where:
            j, direction = where[(fa, fb)], 1.0
        elif (fb, fa) in where:
            j, direction = where[(fb, fa)], -1.0
        else:
            raise ValueError(
                f"keypoint set {ks.name!r}: limb {i} ({ks.keypoints[a]} -> {ks.keypoints[b]}) has no mirrored "
                f"limb ({ks.keypoints[fa]} -> {ks.keypoints[fb]}) in its limb list; flip test needs one"
            )
        index[2 * i], index[2 * i + 1] = 2 * j, 2 * j + 1
        sign[2 * i], sign[2 * i + 1] = -direction, direction
    return index, sign


def _check_scales(scales) -> tuple[float, ...]:
    try:
        out = tuple(float(s) for s in scales)
    except (TypeError, ValueError):
        raise ValueError(f"scales: expected a sequence of positive numbers, got {scales!r}") from None
    if not out or any(not (s > 0 and np.isfinite(s)) for s in out):
        raise ValueError(f"scales: expected at least one positive finite factor, got {scales!r}")
    return out


def _scaled_size(hw, scale: float, multiple: int):
    size = tf.cast(tf.round(tf.cast(hw, tf.float32) * scale / multiple), tf.int32) * multiple
    return tf.maximum(size, multiple)


def multiscale_maps(
    network: keras.Model,
    image,
    scales: Sequence[float] = DEFAULT_SCALES,
    flip: bool = False,
    keypoint_set: str | KeypointSet | None = None,
    stride: int = 8,
    size_multiple: int = 8,
):
    """``(heatmaps, pafs)`` float32 on the ``H/stride x W/stride`` grid of ``image``, averaged
    over ``scales`` (and the mirrored image when ``flip``); see the module docstring.

    Args:
        network: a PAF-family model (outputs ``heatmaps`` and ``pafs``) accepting any input size
            that is a multiple of ``size_multiple``.
        image: ``[B, H, W, 3]`` float (RGB 0..255), H and W multiples of ``stride``.
        scales: image scale factors (default OpenPose's 1, 0.75, 0.5, 0.25).
        flip: also average the horizontally mirrored image at every scale.
        keypoint_set: for the flip's channel swaps; default ``network.keypoint_set``.
    """
    scales = _check_scales(scales)
    image = tf.cast(image, tf.float32)
    grid = tf.shape(image)[1:3] // stride
    hw = tf.shape(image)[1:3]
    if flip:
        ks = get_keypoint_set(keypoint_set if keypoint_set is not None else network.keypoint_set)
        paf_index, paf_sign = paf_flip_permutation(ks)
    hm_sum = paf_sum = None
    for s in scales:
        x = image if s == 1.0 else tf.image.resize(image, _scaled_size(hw, s, size_multiple), method="bilinear")
        batch = tf.shape(x)[0]
        if flip:  # one call on [x; mirrored x]: one graph, better batching than two calls
            x = tf.concat([x, tf.reverse(x, axis=[2])], axis=0)
        out = network(x, training=False)
        hm = tf.image.resize(tf.cast(out["heatmaps"], tf.float32), grid, method="bilinear")
        pf = tf.image.resize(tf.cast(out["pafs"], tf.float32), grid, method="bilinear")
        if flip:
            hm_m, pf_m = tf.reverse(hm[batch:], axis=[2]), tf.reverse(pf[batch:], axis=[2])
            hm_m = tf.gather(hm_m, heatmap_flip_permutation(ks, int(hm.shape[-1])), axis=-1)
            pf_m = tf.gather(pf_m, paf_index, axis=-1) * tf.constant(paf_sign)
            hm, pf = hm[:batch] + hm_m, pf[:batch] + pf_m
        hm_sum = hm if hm_sum is None else hm_sum + hm
        paf_sum = pf if paf_sum is None else paf_sum + pf
    n = float(len(scales) * (2 if flip else 1))
    return hm_sum / n, paf_sum / n


@keras.saving.register_keras_serializable(package="kerapose")
class PafMultiScale(keras.layers.Layer):
    """``image [B, H, W, 3]`` -> ``{"heatmaps", "pafs"}`` averaged over scales and flips.

    Wraps :func:`multiscale_maps` around a PAF-family ``network`` (built with input_shape
    ``(None, None, 3)`` when any scale differs from 1). The layer owns the network and
    serialises it in ``get_config``, so a graph that runs the network only through this layer
    saves and loads it once.

    Args:
        network: the PAF model.
        scales: scale factors (default :data:`DEFAULT_SCALES`); ``(1.0,)`` with ``flip`` is a
            flip-only test.
        flip: average the mirrored image too.
        stride, size_multiple: output stride and input size multiple of the network (8, 8).
    """

    def __init__(self, network: keras.Model, scales: Sequence[float] = DEFAULT_SCALES, flip: bool = False,
                 stride: int = 8, size_multiple: int = 8, **kwargs):
        super().__init__(**kwargs)
        self.scales = _check_scales(scales)
        if any(s != 1.0 for s in self.scales) and any(d is not None for d in network.input_shape[1:3]):
            raise ValueError(
                f"network {network.name!r}: multi-scale inference needs input_shape (None, None, 3), "
                f"got {tuple(network.input_shape[1:])}"
            )
        for key, value in (("stride", stride), ("size_multiple", size_multiple)):
            if int(value) != value or value < 1:
                raise ValueError(f"{key}: expected a positive integer, got {value!r}")
        if not hasattr(network, "keypoint_set"):
            raise ValueError(f"network {network.name!r}: expected a PAF-family model with a keypoint_set")
        self.network = network
        self.flip = bool(flip)
        self.stride = int(stride)
        self.size_multiple = int(size_multiple)
        if self.flip:
            paf_flip_permutation(network.keypoint_set)  # refuses a set whose limbs cannot be mirrored, now

    def call(self, image):
        hm, pf = multiscale_maps(self.network, image, self.scales, self.flip, self.network.keypoint_set,
                                 self.stride, self.size_multiple)
        return {"heatmaps": hm, "pafs": pf}

    def compute_output_spec(self, image):
        b, h, w = image.shape[0], image.shape[1], image.shape[2]
        grid = tuple(None if d is None else d // self.stride for d in (h, w))
        ks = self.network.keypoint_set
        return {"heatmaps": keras.KerasTensor((b, *grid, ks.num_heatmap_channels), "float32"),
                "pafs": keras.KerasTensor((b, *grid, ks.num_paf_channels), "float32")}

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "network": keras.saving.serialize_keras_object(self.network),
            "scales": list(self.scales),
            "flip": self.flip,
            "stride": self.stride,
            "size_multiple": self.size_multiple,
        }

    @classmethod
    def from_config(cls, config: dict):
        config = dict(config)
        config["network"] = keras.saving.deserialize_keras_object(config["network"])
        return cls(**config)
