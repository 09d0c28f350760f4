"""The PAF family: OpenPose baseline, Feature Transfer Network and Multi-level Network.

All three share the VGG-19 front end (:func:`kerapose.backbones.vgg.vgg19_backbone`) and predict,
at stride 8, part affinity fields (2 channels per limb) and heatmaps (one per keypoint, plus the
background channel for ``openpose18``). Outputs are a dict:

- ``pafs_stage{t}`` / ``heatmaps_stage{t}`` for every supervised stage t (intermediate
  supervision), and
- ``pafs`` / ``heatmaps``: the final prediction (the last stage's).

Each model is composed of named sub-models (``backbone``, ``stage1``.., ``joint_branch``,
``transfer_j2l``, ``refine_joint``, ...) so that per-module parameter and FLOP tables can be read
off its top-level layers. Design decisions and parameter tables: docs/paf_family.md.
"""

from __future__ import annotations

import keras
import numpy as np

from kerapose.backbones.vgg import VGG_STRIDE, scaled_width, vgg19_backbone
from kerapose.heads.paf_stages import branch_widths, openpose_stage, openpose_stage1, paf_branch, refinement_branch
from kerapose.heads.transfer import (
    global_context_module,
    joint_limb_module,
    lower_level_module,
    transfer_subnetwork,
)
from kerapose.layers import SizeCheck
from kerapose.skeleton import KeypointSet, get_keypoint_set
from kerapose.models.poses import constructor_kwargs

__all__ = [
    "PafBaseline",
    "FeatureTransferNet",
    "MultiLevelNet",
    "MLN_LEVELS",
    "PAF_STRIDE",
    "module_weight_counts",
    "PafModel",
    "check_int",
    "named_outputs",
]

PAF_STRIDE = VGG_STRIDE
FEATURE_CHANNELS = 128  # conv4_4_CPM
LOWER_CHANNELS = 256  # block3_pool
MLN_LEVELS = ("lower", "upper", "joint_limb", "global")


def module_weight_counts(model: keras.Model) -> dict[str, tuple[int, int]]:
    """``{module name: (parameters, parameters without biases)}`` for every top-level sub-model."""
    out = {}
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total = sum(int(np.prod(v.shape)) for v in layer.weights)
            bias = sum(int(np.prod(v.shape)) for v in layer.weights if v.path.split("/")[-1].startswith("bias"))
            out[layer.name] = (total, total - bias)
    return out


def check_int(name: str, value, lo: int, hi: int | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < lo or (hi is not None and value > hi):
        accepted = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be an integer in {accepted}, got {value!r}")
    return value


def _keypoint_set_name(kps: KeypointSet) -> str:
    # The config stores the name: a custom set must be registered before a saved model loads.
    return kps.name


def _front(input_shape, preprocessing: str, backbone_weights: str | None, width_multiplier: float = 1.0):
    """Image input, size check and backbone (shared by the three models)."""
    input_shape = tuple(input_shape)
    SizeCheck.validate_shape(input_shape, PAF_STRIDE)
    image = keras.Input(shape=input_shape, name="image")
    checked = SizeCheck(PAF_STRIDE, name="size_check")(image)
    backbone = vgg19_backbone(input_shape, weights=backbone_weights, preprocessing=preprocessing, name="backbone",
                              width_multiplier=width_multiplier)
    return input_shape, image, backbone, backbone(checked)


def named_outputs(tensors: dict) -> dict:
    # Identity layers give every output a stable top-level name for losses and export.
    return {key: keras.layers.Identity(name=key)(t) for key, t in tensors.items()}


class PafModel(keras.Model):
    """Shared config handling of the PAF-family task models."""

    def _store_common(self, kps: KeypointSet, input_shape: tuple, preprocessing: str, backbone) -> None:
        self.keypoint_set = kps
        self.input_shape_config = input_shape
        self.preprocessing = preprocessing
        self.backbone = backbone

    @property
    def num_heatmaps(self) -> int:
        return self.keypoint_set.num_heatmap_channels

    @property
    def num_pafs(self) -> int:
        return self.keypoint_set.num_paf_channels

    # ------------------------------------------------------------------ inference
    @property
    def size_multiple(self) -> int:
        """Input sides must be multiples of this (the VGG front end's three 2x2 pools: 8)."""
        return PAF_STRIDE

    @property
    def grouping_defaults(self) -> dict:
        """Grouping settings of :meth:`end_to_end` (empty: PafGrouping's, i.e. OpenPose's, defaults)."""
        return {}

    def paf_outputs(self, image, extent=None):
        """``(heatmaps, pafs)`` of a (padded) network input; ``extent`` [B, 2] is the fraction of
        (H, W) that holds the image. The VGG models have no per-image statistics: zero padding
        only matters at the border, so ``extent`` is not used here."""
        out = self(image)
        return out["heatmaps"], out["pafs"]

    def end_to_end(self, input_size: tuple[int, int] | None = None, max_people: int = 20,
                   score_threshold: float | None = None, iou_threshold: float | None = None,
                   **grouping) -> keras.Model:
        """The end-to-end model (uint8 image of any size -> people) sharing this model's weights.

        ``input_size=None`` runs at the image's native resolution (padded to
        :attr:`size_multiple`), ``(H, W)`` letterboxes into that size. ``score_threshold`` is the
        minimum person score (None: the model's default); ``iou_threshold`` is accepted for the
        export interface and unused (PAF grouping has no box NMS). See
        :func:`kerapose.models.paf.end_to_end.paf_end_to_end`.
        """
        from kerapose.models.paf.end_to_end import paf_end_to_end

        return paf_end_to_end(self, input_size, max_people=max_people, score_threshold=score_threshold,
                              **grouping)

    def predict_poses(self, images, input_size: tuple[int, int] | None = None, max_people: int = 20,
                      score_threshold: float | None = None) -> list[dict]:
        """Poses for a list of RGB uint8 images: one dict per image with ``keypoints`` [N, K, 3],
        ``scores`` [N] and ``boxes`` [N, 4] in that image's pixels (see :meth:`end_to_end`)."""
        from kerapose.models.paf.end_to_end import paf_predict_poses

        return paf_predict_poses(self, images, input_size, max_people=max_people, score_threshold=score_threshold)

    def _common_config(self) -> dict:
        return {
            "keypoint_set": _keypoint_set_name(self.keypoint_set),
            "input_shape": list(self.input_shape_config),
            "preprocessing": self.preprocessing,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config: dict):
        config = constructor_kwargs(config)
        return cls(**config)


@keras.saving.register_keras_serializable(package="kerapose")
class PafBaseline(PafModel):
    """OpenPose (Cao et al. 2017): VGG-19 front end + ``stages`` two-branch stages.

    With the defaults (6 stages, ``openpose18``: 38 PAF + 19 heatmap channels) it has the
    paper's 52,311,446 parameters, 52,298,816 of them weights without biases.

    Args:
        stages: number of stages (1 = stage 1 only); every stage is supervised.
        keypoint_set: keypoint set name; PAF channels = 2 x limbs, heatmap channels = keypoints
            (+ background where the set has one).
        input_shape: (H, W, 3), H and W None or multiples of 8.
        preprocessing: normalisation inside the model (``"caffe"`` for keras.applications VGG19
            weights, ``"openpose"`` for x/256 - 0.5).
        backbone_weights: path of a keras.applications VGG19 weight file (not stored in the config).
    """

    def __init__(
        self,
        stages: int = 6,
        keypoint_set: str | KeypointSet = "openpose18",
        input_shape: tuple = (None, None, 3),
        preprocessing: str = "caffe",
        backbone_weights: str | None = None,
        name: str = "paf_baseline",
        **kwargs,
    ):
        check_int("stages", stages, 1)
        kps = get_keypoint_set(keypoint_set)
        n_paf, n_hm = kps.num_paf_channels, kps.num_heatmap_channels
        input_shape, image, bb, feats = _front(input_shape, preprocessing, backbone_weights)
        f = feats["features"]
        outputs = {}
        pafs, hms = openpose_stage1(FEATURE_CHANNELS, n_paf, n_hm, name="stage1")(f)
        outputs.update(pafs_stage1=pafs, heatmaps_stage1=hms)
        for t in range(2, stages + 1):
            pafs, hms = openpose_stage(t, FEATURE_CHANNELS, n_paf, n_hm, name=f"stage{t}")([pafs, hms, f])
            outputs.update({f"pafs_stage{t}": pafs, f"heatmaps_stage{t}": hms})
        outputs.update(pafs=pafs, heatmaps=hms)
        super().__init__(inputs=image, outputs=named_outputs(outputs), name=name, **kwargs)
        self._store_common(kps, input_shape, preprocessing, bb)
        self.stages = stages

    def get_config(self) -> dict:
        return {"stages": self.stages, **self._common_config()}


@keras.saving.register_keras_serializable(package="kerapose")
class FeatureTransferNet(PafModel):
    """Feature Transfer Network (Huang et al. 2020, CVIU).

    VGG-19 front end; a joint branch (heatmaps) and a limb branch (PAFs) of 5 convs each;
    two feature-transfer sub-networks (``transfer_j2l``, ``transfer_l2j``) that take Conv-``k``
    (``k = transfer_from``) of one branch and feed the other branch's Conv-``k+1`` (concatenated
    to its input); a refinement module per branch (``refine_joint``, ``refine_limb``) on
    heatmaps + PAFs + backbone features. Stage 1 = the branches' outputs, stage 2 = refined.

    With the defaults it has 21,264,448 weights without biases (paper: 21,278,912, -0.07 %).

    Args:
        keypoint_set, input_shape, preprocessing, backbone_weights: as :class:`PafBaseline`.
        transfer: use the transfer sub-networks (ablation: ``False``).
        refinement: use the refinement modules (ablation: ``False``; then stage 1 is final).
        transfer_from: which branch conv (1..5) feeds the transfer. With 5 (the predictions
            themselves) the transferred features enter the other branch's refinement module,
            so ``refinement`` must be on.
        transfer_blocks: blocks of the transfer sub-network (paper: 4).
        refine_blocks: blocks of each refinement module (paper: 7).
        width_multiplier: scales every hidden width (backbone, branches, transfer, refinement;
            not the output channels). 1.0 is the paper's network; e.g. 0.125 gives a narrow FTN
            of the same topology for fast tests (the overfit test) and small devices.
    """

    def __init__(
        self,
        keypoint_set: str | KeypointSet = "openpose18",
        transfer: bool = True,
        refinement: bool = True,
        transfer_from: int = 4,
        transfer_blocks: int = 4,
        refine_blocks: int = 7,
        input_shape: tuple = (None, None, 3),
        preprocessing: str = "caffe",
        backbone_weights: str | None = None,
        name: str = "feature_transfer_net",
        width_multiplier: float = 1.0,
        **kwargs,
    ):
        k = check_int("transfer_from", transfer_from, 1, 5)
        check_int("transfer_blocks", transfer_blocks, 1)
        check_int("refine_blocks", refine_blocks, 1)
        transfer, refinement = bool(transfer), bool(refinement)
        if transfer and k == 5 and not refinement:
            raise ValueError(
                "transfer_from=5 needs refinement=True: Conv-5 is the branch output, so features "
                "transferred from it can only enter the refinement modules"
            )
        kps = get_keypoint_set(keypoint_set)
        n_paf, n_hm = kps.num_paf_channels, kps.num_heatmap_channels
        wm = float(width_multiplier)
        input_shape, image, bb, feats = _front(input_shape, preprocessing, backbone_weights, wm)
        f = feats["features"]
        c = scaled_width(FEATURE_CHANNELS, wm)
        wide = scaled_width(512, wm)  # Conv-4 and the refinement fusion
        bw = {"width": c, "wide": wide}
        to_refine_j, to_refine_l = [], []
        if transfer:
            jw, lw = branch_widths(n_hm, c, wide)[k - 1], branch_widths(n_paf, c, wide)[k - 1]
            j_k = paf_branch(c, n_hm, 1, k, name="joint_branch", **bw)(f)
            l_k = paf_branch(c, n_paf, 1, k, name="limb_branch", **bw)(f)
            t_j2l = transfer_subnetwork(jw, c, transfer_blocks, width=c, name="transfer_j2l")(j_k)
            t_l2j = transfer_subnetwork(lw, c, transfer_blocks, width=c, name="transfer_l2j")(l_k)
            if k < 5:
                hms = paf_branch(jw, n_hm, k + 1, 5, extra_channels=c, name="joint_head", **bw)([j_k, t_l2j])
                pafs = paf_branch(lw, n_paf, k + 1, 5, extra_channels=c, name="limb_head", **bw)([l_k, t_j2l])
            else:
                hms, pafs = j_k, l_k
                to_refine_j, to_refine_l = [t_l2j], [t_j2l]
        else:
            hms = paf_branch(c, n_hm, 1, 5, name="joint_branch", **bw)(f)
            pafs = paf_branch(c, n_paf, 1, 5, name="limb_branch", **bw)(f)
        outputs = {"pafs_stage1": pafs, "heatmaps_stage1": hms}
        if refinement:
            extra = [c] if to_refine_j else []
            rw = {"width": c, "fuse": wide}
            hms = refinement_branch([n_hm, n_paf, c, *extra], n_hm, refine_blocks, name="refine_joint", **rw)(
                [outputs["heatmaps_stage1"], outputs["pafs_stage1"], f, *to_refine_j])
            pafs = refinement_branch([n_hm, n_paf, c, *extra], n_paf, refine_blocks, name="refine_limb", **rw)(
                [outputs["heatmaps_stage1"], outputs["pafs_stage1"], f, *to_refine_l])
            outputs.update(pafs_stage2=pafs, heatmaps_stage2=hms)
        outputs.update(pafs=pafs, heatmaps=hms)
        super().__init__(inputs=image, outputs=named_outputs(outputs), name=name, **kwargs)
        self._store_common(kps, input_shape, preprocessing, bb)
        self.transfer = transfer
        self.refinement = refinement
        self.transfer_from = k
        self.transfer_blocks = transfer_blocks
        self.refine_blocks = refine_blocks
        self.width_multiplier = wm

    def get_config(self) -> dict:
        return {
            "transfer": self.transfer,
            "refinement": self.refinement,
            "transfer_from": self.transfer_from,
            "transfer_blocks": self.transfer_blocks,
            "refine_blocks": self.refine_blocks,
            "width_multiplier": self.width_multiplier,
            **self._common_config(),
        }


@keras.saving.register_keras_serializable(package="kerapose")
class MultiLevelNet(PafModel):
    """Multi-level Network (Huang, Zhuang and Qin, ICIP 2019), as far as the paper specifies.

    VGG-19 front end and the same joint / limb branches as :class:`FeatureTransferNet` (stage 1);
    then each branch's refinement module aggregates, with the stage-1 heatmaps and PAFs:

    - ``"lower"``: lower-level features (VGG block3_pool, left/right appearance cues) through
      the ``lower_level`` module;
    - ``"upper"``: upper-level features, the backbone's output (localisation);
    - ``"joint_limb"``: both branches' Conv-4 features fused by the ``joint_limb`` module
      (complementary joint and limb information);
    - ``"global"``: globally pooled context broadcast over the map (``global_context`` module).

    Args:
        levels: which of :data:`MLN_LEVELS` to aggregate (ablation); default all four.
        refine_blocks: blocks of each refinement module.
        keypoint_set, input_shape, preprocessing, backbone_weights: as :class:`PafBaseline`.
    """

    def __init__(
        self,
        keypoint_set: str | KeypointSet = "openpose18",
        levels: tuple[str, ...] | list[str] = MLN_LEVELS,
        refine_blocks: int = 7,
        input_shape: tuple = (None, None, 3),
        preprocessing: str = "caffe",
        backbone_weights: str | None = None,
        name: str = "multi_level_net",
        **kwargs,
    ):
        if isinstance(levels, str):
            levels = (levels,)
        levels = tuple(levels)
        unknown = [lv for lv in levels if lv not in MLN_LEVELS]
        if unknown or len(set(levels)) != len(levels):
            raise ValueError(f"levels must be distinct names from {MLN_LEVELS}, got {levels!r}")
        levels = tuple(lv for lv in MLN_LEVELS if lv in levels)  # canonical order
        check_int("refine_blocks", refine_blocks, 1)
        kps = get_keypoint_set(keypoint_set)
        n_paf, n_hm = kps.num_paf_channels, kps.num_heatmap_channels
        input_shape, image, bb, feats = _front(input_shape, preprocessing, backbone_weights)
        f = feats["features"]
        c = FEATURE_CHANNELS
        jw, lw = branch_widths(n_hm)[3], branch_widths(n_paf)[3]
        j4, hms = paf_branch(c, n_hm, 1, 5, taps=(4,), name="joint_branch")(f)
        l4, pafs = paf_branch(c, n_paf, 1, 5, taps=(4,), name="limb_branch")(f)
        outputs = {"pafs_stage1": pafs, "heatmaps_stage1": hms}
        agg, agg_ch = [hms, pafs], [n_hm, n_paf]
        if "lower" in levels:
            agg.append(lower_level_module(LOWER_CHANNELS, c, name="lower_level")(feats["block3_pool"]))
            agg_ch.append(c)
        if "upper" in levels:
            agg.append(f)
            agg_ch.append(c)
        if "joint_limb" in levels:
            agg.append(joint_limb_module(jw, lw, c, name="joint_limb")([j4, l4]))
            agg_ch.append(c)
        if "global" in levels:
            agg.append(global_context_module(c, c, name="global_context")(f))
            agg_ch.append(c)
        hms = refinement_branch(agg_ch, n_hm, refine_blocks, name="refine_joint")(agg)
        pafs = refinement_branch(agg_ch, n_paf, refine_blocks, name="refine_limb")(agg)
        outputs.update(pafs_stage2=pafs, heatmaps_stage2=hms, pafs=pafs, heatmaps=hms)
        super().__init__(inputs=image, outputs=named_outputs(outputs), name=name, **kwargs)
        self._store_common(kps, input_shape, preprocessing, bb)
        self.levels = levels
        self.refine_blocks = refine_blocks

    def get_config(self) -> dict:
        return {"levels": list(self.levels), "refine_blocks": self.refine_blocks, **self._common_config()}
