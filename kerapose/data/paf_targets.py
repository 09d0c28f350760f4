"""Training targets of the PAF family (OpenPose baseline, FTN, MLN) for one augmented crop.

Every supervised stage output of a PAF network gets the same targets, packed with the loss
weight W for :class:`kerapose.losses.MaskedL2` (one shared W channel appended, OpenPose's
``mask_miss``):

* ``heatmaps_stage{t}``: ``[h, w, K (+1) + 1]``: a Gaussian per keypoint (max over people,
  :class:`~kerapose.codecs.heatmap.HeatmapCodec`), then, for a keypoint set with a background
  channel (``openpose18``), the background ``max(0, 1 - max_k heatmap_k)`` (OpenPose's Caffe
  data layer; with max-combined Gaussians in [0, 1] the clip never acts), then W.
* ``pafs_stage{t}``: ``[h, w, 2L + 1]``: part affinity fields
  (:class:`~kerapose.codecs.paf.PafCodec`), then W.

W (:func:`kerapose.codecs.segmentation.ignore_mask`) is 0 over crowd regions and over people
without any labelled keypoint in the crop, 1 elsewhere (the padding outside the source image
included: the network must predict nothing there).

The records come from the dataset in their own keypoint set (COCO-17 for COCO files) and are
augmented, flipped included, in that set; :meth:`PafTargets.encode` then converts them to the
network's set (COCO-17 -> OpenPose-18 adds the neck as the shoulders' midpoint,
:func:`kerapose.skeleton.coco17_to_openpose18`). So ``targets.keypoint_set``, the attribute
:func:`kerapose.data.pipeline.keypoint_dataset` augments with, is the *records'* set and
``targets.output_keypoint_set`` the network's.
"""

from __future__ import annotations

import re

import numpy as np

from kerapose.codecs.heatmap import HeatmapCodec
from kerapose.codecs.paf import PafCodec
from kerapose.codecs.segmentation import ignore_mask
from kerapose.skeleton import KeypointSet, coco17_to_openpose18, get_keypoint_set

__all__ = ["PafTargets", "supervised_outputs", "convert_keypoints", "OPENPOSE_SIGMA_CELLS"]

# OpenPose's Caffe data layer draws part Gaussians with sigma 7 input pixels at stride 8.
OPENPOSE_SIGMA_CELLS = 7.0 / 8.0
_STAGE_OUTPUT = re.compile(r"^(pafs|heatmaps)_stage(\d+)$")


def supervised_outputs(model) -> list[str]:
    """Names of a PAF network's supervised stage outputs (``pafs_stage1``, ``heatmaps_stage1``,
    ...), by stage. The final ``pafs`` / ``heatmaps`` repeat the last stage and get no loss of
    their own (that would count the last stage twice)."""
    names = list(model.output) if isinstance(model.output, dict) else list(model.output_names)
    found = [(int(m.group(2)), m.group(1), n) for n in names if (m := _STAGE_OUTPUT.match(n))]
    if not found:
        raise ValueError(
            f"model {getattr(model, 'name', model)!r}: no outputs named pafs_stage<t> / heatmaps_stage<t> "
            f"(got {names}); not a PAF-family network"
        )
    return [n for _, _, n in sorted(found, key=lambda t: (t[0], t[1] != "pafs"))]


def convert_keypoints(keypoints: np.ndarray, source: KeypointSet, target: KeypointSet) -> np.ndarray:
    """``[N, K_source, 3]`` keypoints in ``source``'s order -> ``[N, K_target, 3]`` in ``target``'s.

    Identity for one set; COCO-17 -> OpenPose-18 adds the neck; any other pair is refused.
    """
    kp = np.asarray(keypoints, np.float64)
    if kp.size == 0:
        kp = kp.reshape(0, source.num_keypoints, 3)
    if kp.ndim != 3 or kp.shape[1:] != (source.num_keypoints, 3):
        raise ValueError(f"keypoints: expected [N, {source.num_keypoints}, 3] ({source.name}), got {kp.shape}")
    if source.name == target.name:
        return kp
    if (source.name, target.name) == ("coco17", "openpose18"):
        return coco17_to_openpose18(kp)
    raise ValueError(
        f"no keypoint conversion from {source.name!r} to {target.name!r}; accepted: the same set, "
        f"or coco17 -> openpose18"
    )


class PafTargets:
    """Targets of a PAF network's supervised stage outputs for one crop (see module docstring).

    Args:
        keypoint_set: the network's keypoint set (PAF limbs, heatmap channels, background).
        input_size: (H, W) of the crops; targets are ``ceil(H / stride) x ceil(W / stride)``.
        stages: number of supervised stages; outputs ``pafs_stage1`` .. ``heatmaps_stage{stages}``.
        stride: output stride (8 for the VGG front end).
        sigma: heatmap Gaussian sigma in output cells (default: OpenPose's 7 px at stride 8).
        limb_width: PAF half-width in output cells (OpenPose: 1 cell at stride 8).
        record_keypoint_set: the keypoint set of the dataset records (default ``"coco17"``).
    """

    def __init__(
        self,
        keypoint_set: str | KeypointSet = "openpose18",
        input_size: tuple[int, int] = (368, 368),
        stages: int = 2,
        stride: int = 8,
        sigma: float = OPENPOSE_SIGMA_CELLS,
        limb_width: float = 1.0,
        record_keypoint_set: str | KeypointSet = "coco17",
    ) -> None:
        self.output_keypoint_set = get_keypoint_set(keypoint_set)
        self.keypoint_set = get_keypoint_set(record_keypoint_set)
        convert_keypoints(np.zeros((0, self.keypoint_set.num_keypoints, 3)), self.keypoint_set,
                          self.output_keypoint_set)  # refuses an unsupported pair now, not per sample
        try:
            h, w = (int(v) for v in input_size)
        except (TypeError, ValueError):
            raise ValueError(f"input_size: expected (H, W), got {input_size!r}") from None
        if h < 1 or w < 1 or (h, w) != tuple(input_size):
            raise ValueError(f"input_size: expected positive integers (H, W), got {input_size!r}")
        self.input_size = (h, w)
        if not isinstance(stages, int) or isinstance(stages, bool) or stages < 1:
            raise ValueError(f"stages: expected an integer >= 1, got {stages!r}")
        self.stages = stages
        self.heatmap_codec = HeatmapCodec(self.output_keypoint_set, stride=stride, sigma=sigma)
        self.paf_codec = PafCodec(self.output_keypoint_set, stride=stride, limb_width=limb_width, sigma=sigma)
        self.stride = self.heatmap_codec.stride

    @classmethod
    def for_model(cls, model, input_size: tuple[int, int], **kwargs) -> "PafTargets":
        """Targets matching a PAF-family model: its keypoint set and its number of stages."""
        stages = max(int(_STAGE_OUTPUT.match(n).group(2)) for n in supervised_outputs(model))
        return cls(model.keypoint_set, input_size, stages=stages, **kwargs)

    @property
    def output_names(self) -> list[str]:
        return [f"{kind}_stage{t}" for t in range(1, self.stages + 1) for kind in ("pafs", "heatmaps")]

    @property
    def output_shapes(self) -> dict:
        h, w = self.heatmap_codec.output_size(self.input_size)
        ks = self.output_keypoint_set
        shape = {"pafs": (h, w, ks.num_paf_channels + 1), "heatmaps": (h, w, ks.num_heatmap_channels + 1)}
        return {n: shape[n.split("_stage")[0]] for n in self.output_names}

    def maps(self, keypoints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Records' keypoints ``[N, K, 3]`` (crop pixels, crowds removed) -> unpacked
        ``(heatmaps [h, w, K (+1)], pafs [h, w, 2L])`` float32 in the network's keypoint set."""
        kp = convert_keypoints(keypoints, self.keypoint_set, self.output_keypoint_set)
        heat = self.heatmap_codec.encode(kp, self.input_size)
        if self.output_keypoint_set.background_channel:
            background = np.maximum(1.0 - (heat.max(-1) if heat.shape[-1] else 0.0), 0.0)
            heat = np.concatenate([heat, background[..., None].astype(np.float32)], -1)
        return heat, self.paf_codec.encode(kp, self.input_size)

    def encode(self, crop: dict) -> dict:
        """An :func:`kerapose.data.augment.augment` crop -> ``{output name: packed target}``."""
        rec = crop["record"]
        if (int(rec.height), int(rec.width)) != self.input_size:
            raise ValueError(f"crop of image {rec.image_id} is {(rec.height, rec.width)}, targets expect "
                             f"input_size {self.input_size}")
        crowd = np.asarray(rec.iscrowd, bool)
        heat, pafs = self.maps(np.asarray(rec.keypoints)[~crowd])
        weight = ignore_mask(rec, self.stride)[..., None]
        packed = {"heatmaps": np.concatenate([heat, weight], -1).astype(np.float32),
                  "pafs": np.concatenate([pafs, weight], -1).astype(np.float32)}
        return {n: packed[n.split("_stage")[0]] for n in self.output_names}
