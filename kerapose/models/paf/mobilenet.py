"""PAF model on a MobileNetV2 backbone with separable-convolution OpenPose stages (tf-pose style).

The network of tf-pose-estimation's ``mobilenet_v2_*`` models (ildoonet, Apache-2.0):

- MobileNetV2 (width ``alpha``) up to block 12; its stride-8 feature (C3, block 5) is
  concatenated with its stride-16 feature (C4, block 12) resized to the stride-8 grid with
  TF1's bilinear resize (``align_corners=False, half_pixel_centers=False``, as the graph does).
- ``stages`` two-branch OpenPose stages (L1: PAFs, L2: heatmaps). Every layer is a separable
  convolution: a depthwise kxk conv and a 1x1 conv without biases, batch norm (no scale) and
  ReLU; the last layer of a branch is linear. Stage 1: ``stage_convs`` x (kxk, ``stage_width``)
  -> 1x1 ``stage1_width`` -> 1x1 output; stages 2..: the same kxk layers on
  concat(previous PAFs, previous heatmaps, features) -> 1x1 ``refine_width`` -> 1x1 output.

Layer names follow the graph (``MConv_Stage{t}_L{b}_{i}``, keras.applications' names in the
backbone), so :func:`kerapose.weights.tfpose.import_tfpose` maps the frozen graph by layer.
The public input is RGB float 0..255 like every kerapose model; ``preprocessing="bgr_raw"``
flips it to the BGR 0..255 the tf-pose weights were trained on (:class:`kerapose.layers.Preprocess`).
The network takes any image size: heatmaps and PAFs come out on the ``ceil(H/8) x ceil(W/8)``
grid, cell ``j`` centred on pixel ``8j + 3.5`` (kerapose.codecs.grid) when H and W are multiples
of 16, as in training (368x432 crops). For other sizes TF's ``SAME`` padding of the stride-2
convolutions moves the grid by :func:`~kerapose.backbones.mobilenetv2.same_padding_shift`
pixels, so the end-to-end graph pads images to multiples of 16 (:attr:`size_multiple`).
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers

from kerapose.backbones.mobilenetv2 import (
    MOBILENETV2_LEVELS,
    ExtentMask,
    ExtentToMask,
    FullExtent,
    mobilenetv2_backbone,
)
from kerapose.models.paf.networks import check_int, named_outputs, PafModel
from kerapose.skeleton import KeypointSet, get_keypoint_set

__all__ = [
    "GROUPING_KEYS",
    "TFPOSE_SMALL",
    "LegacyBilinearResize",
    "PafMobileNetV2",
    "paf_mobilenetv2_small",
    "separable_stage",
]

# Grouping settings a model may carry as its decoding defaults (PafGrouping / PafCodec names).
GROUPING_KEYS = ("peak_threshold", "max_peaks", "refine", "num_samples", "paf_threshold", "min_sample_fraction",
                 "distance_ratio", "min_parts", "min_person_score")

# tf-pose "mobilenet_v2_small": width 0.5, refine width 0.5 (128 -> 64, 512 -> 256), 6 stages;
# backbone batch norms in training mode (per-image statistics), raw BGR 0..255 input. Grouping:
# tf-pose's own thresholds (parts above 0.05, 7 of 10 PAF samples, person score 0.3).
TFPOSE_SMALL: dict = {
    "alpha": 0.5,
    "stages": 6,
    "stage_width": 64,
    "stage1_width": 256,
    "refine_width": 64,
    "stage_kernel": 3,
    "stage_convs": 3,
    "backbone_blocks": 13,
    "norm": "image",
    "preprocessing": "bgr_raw",
    "grouping": {"peak_threshold": 0.05, "min_sample_fraction": 0.7, "min_person_score": 0.3},
}


@keras.saving.register_keras_serializable(package="kerapose")
class LegacyBilinearResize(keras.layers.Layer):
    """Resize ``x`` to the spatial size of ``ref`` with TF1's bilinear resize.

    ``align_corners=False, half_pixel_centers=False``: source = destination x (in / out), the
    ``ResizeBilinear`` op of TF1 graphs (tf-pose's upsampling). It is not ``tf.image.resize``
    (half-pixel centres): at x2 the two differ by a quarter of an input cell.
    """

    def call(self, x, ref):
        size = tf.shape(ref)[1:3]
        out = tf.raw_ops.ResizeBilinear(images=x, size=size, align_corners=False, half_pixel_centers=False)
        return tf.cast(out, x.dtype)  # the op always returns float32

    def compute_output_shape(self, x_shape, ref_shape):
        return (x_shape[0], ref_shape[1], ref_shape[2], x_shape[3])


def _separable(x, mask, filters: int, kernel: int, relu: bool, name: str):
    x = layers.SeparableConv2D(filters, kernel, padding="same", use_bias=False, name=name)(x)
    x = layers.BatchNormalization(epsilon=1e-3, scale=False, name=f"{name}_bn")(x)
    x = ExtentMask(name=f"{name}_mask")(x, mask)  # zeros outside the image, as SAME padding
    return layers.ReLU(name=f"{name}_relu")(x) if relu else x


def separable_stage(
    stage: int,
    feature_channels: int,
    num_pafs: int = 38,
    num_heatmaps: int = 19,
    width: int = 64,
    hidden: int = 64,
    kernel: int = 3,
    convs: int = 3,
    name: str | None = None,
) -> keras.Model:
    """One two-branch separable-conv stage: ``[features, mask]`` (stage 1) or
    ``[pafs, heatmaps, features, mask]`` (stage >= 2) -> ``[pafs, heatmaps]``; ``mask``
    [B, h, w, 1] is 1 on the cells that hold the image (:class:`ExtentToMask`)."""
    for key, value in (("stage", stage), ("feature_channels", feature_channels), ("num_pafs", num_pafs),
                       ("num_heatmaps", num_heatmaps), ("width", width), ("hidden", hidden), ("kernel", kernel),
                       ("convs", convs)):
        check_int(key, value, 1)
    name = name or f"stage{stage}"
    feats = keras.Input(shape=(None, None, feature_channels), name=f"{name}_features")
    mask = keras.Input(shape=(None, None, 1), name=f"{name}_mask")
    if stage == 1:
        inputs = [feats, mask]
        x0 = feats
    else:
        pafs = keras.Input(shape=(None, None, num_pafs), name=f"{name}_pafs")
        heatmaps = keras.Input(shape=(None, None, num_heatmaps), name=f"{name}_heatmaps")
        inputs = [pafs, heatmaps, feats, mask]
        x0 = layers.Concatenate(name=f"MConv_Stage{stage}_concat")([pafs, heatmaps, feats])  # tf-pose's order
    outs = []
    for branch, n_out in ((1, num_pafs), (2, num_heatmaps)):
        x = x0
        prefix = f"MConv_Stage{stage}_L{branch}"
        for i in range(1, convs + 1):
            x = _separable(x, mask, width, kernel, True, f"{prefix}_{i}")
        x = _separable(x, mask, hidden, 1, True, f"{prefix}_{convs + 1}")
        outs.append(_separable(x, mask, n_out, 1, False, f"{prefix}_{convs + 2}"))
    return keras.Model(inputs, outs, name=name)


@keras.saving.register_keras_serializable(package="kerapose")
class PafMobileNetV2(PafModel):
    """OpenPose-style PAF model on MobileNetV2 with separable-conv stages (see module docstring).

    Outputs as the other PAF models: ``pafs_stage{t}`` / ``heatmaps_stage{t}`` for every stage
    and ``pafs`` / ``heatmaps`` (the last stage's), at stride 8. Sub-models: ``backbone``,
    ``stage1`` .. ``stage{stages}``.

    Args:
        keypoint_set: keypoint set (PAF channels = 2 x limbs, heatmaps = keypoints + background).
        alpha: MobileNetV2 width multiplier.
        stages: number of stages (all supervised).
        stage_width: width of the kxk separable layers of every stage.
        stage1_width: width of stage 1's 1x1 hidden layer.
        refine_width: width of the 1x1 hidden layer of stages 2..
        stage_kernel, stage_convs: kernel size and number of the kxk layers per branch.
        backbone_blocks: MobileNetV2 blocks built (13: up to block 12, C4 at stride 16).
        norm: backbone normalisation, ``"batch"`` or ``"image"`` (per-image statistics, what
            tf-pose's graphs compute; see :mod:`kerapose.backbones.mobilenetv2`).
        input_shape: (H, W, 3); H and W None (any size) or fixed.
        preprocessing: ``"tf"`` ([-1, 1] RGB) or ``"bgr_raw"`` (tf-pose: BGR 0..255), or any
            mode of :data:`kerapose.layers.PREPROCESS_MODES`.
        grouping: decoding defaults of :meth:`end_to_end` / :meth:`predict_poses` (keys of
            :data:`GROUPING_KEYS`); unset keys take PafGrouping's defaults (OpenPose's).
    """

    def __init__(
        self,
        keypoint_set: str | KeypointSet = "openpose18",
        alpha: float = 1.0,
        stages: int = 6,
        stage_width: int = 128,
        stage1_width: int = 512,
        refine_width: int = 128,
        stage_kernel: int = 3,
        stage_convs: int = 3,
        backbone_blocks: int = 13,
        norm: str = "batch",
        input_shape: tuple = (None, None, 3),
        preprocessing: str = "tf",
        grouping: dict | None = None,
        name: str = "paf_mobilenetv2",
        **kwargs,
    ):
        check_int("stages", stages, 1)
        check_int("backbone_blocks", backbone_blocks, MOBILENETV2_LEVELS["C4"][0] + 1, 17)
        grouping = dict(grouping or {})
        unknown = sorted(set(grouping) - set(GROUPING_KEYS))
        if unknown:
            raise ValueError(f"grouping: unknown setting(s) {', '.join(unknown)}; accepted: {', '.join(GROUPING_KEYS)}")
        kps = get_keypoint_set(keypoint_set)
        n_paf, n_hm = kps.num_paf_channels, kps.num_heatmap_channels
        input_shape = tuple(input_shape)
        bb = mobilenetv2_backbone(alpha, input_shape, blocks=backbone_blocks, norm=norm,
                                  preprocessing=preprocessing, name="backbone")
        feat_ch = int(bb.output["C3"].shape[-1]) + int(bb.output["C4"].shape[-1])
        stage_models = [separable_stage(1, feat_ch, n_paf, n_hm, stage_width, stage1_width, stage_kernel,
                                        stage_convs, name="stage1")]
        for t in range(2, stages + 1):
            stage_models.append(separable_stage(t, feat_ch, n_paf, n_hm, stage_width, refine_width, stage_kernel,
                                                stage_convs, name=f"stage{t}"))
        image = keras.Input(shape=input_shape, name="image")
        extent = FullExtent(name="full_extent")(image)
        outputs = _forward(bb, stage_models, image, extent)
        super().__init__(inputs=image, outputs=named_outputs(outputs), name=name, **kwargs)
        self._store_common(kps, input_shape, preprocessing, bb)
        self.stage_models = stage_models
        self.alpha = float(alpha)
        self.stages = stages
        self.stage_width = stage_width
        self.stage1_width = stage1_width
        self.refine_width = refine_width
        self.stage_kernel = stage_kernel
        self.stage_convs = stage_convs
        self.backbone_blocks = backbone_blocks
        self.norm = norm
        self.grouping = grouping

    @property
    def size_multiple(self) -> int:
        # Any size runs (SAME convolutions, a resize onto the stride-8 grid), but the end-to-end
        # graph pads to multiples of 16 so that every stride-2 convolution sees an even size, as
        # in training: odd sizes move the output grid (mobilenetv2.same_padding_shift). The
        # extent mask keeps the padding out of the per-image statistics.
        return 16

    @property
    def grouping_defaults(self) -> dict:
        return dict(self.grouping)

    def paf_outputs(self, image, extent=None):
        """(heatmaps, pafs) of ``image`` whose valid part is ``extent`` (padding ignored)."""
        if extent is None:
            extent = FullExtent()(image)
        out = _forward(self.backbone, self.stage_models, image, extent)
        return out["heatmaps"], out["pafs"]

    def get_config(self) -> dict:
        return {
            "alpha": self.alpha,
            "stages": self.stages,
            "stage_width": self.stage_width,
            "stage1_width": self.stage1_width,
            "refine_width": self.refine_width,
            "stage_kernel": self.stage_kernel,
            "stage_convs": self.stage_convs,
            "backbone_blocks": self.backbone_blocks,
            "norm": self.norm,
            "grouping": dict(self.grouping),
            **self._common_config(),
        }


def _forward(backbone: keras.Model, stage_models: list, image, extent) -> dict:
    """The wiring backbone -> feature concat -> stages, on symbolic or eager tensors."""
    feats = backbone([image, extent])
    up = LegacyBilinearResize()(feats["C4"], feats["C3"])
    f = layers.Concatenate()([feats["C3"], up])
    mask = ExtentToMask()(f, extent)
    f = ExtentMask()(f, mask)
    outputs = {}
    pafs, hms = stage_models[0]([f, mask])
    outputs.update(pafs_stage1=pafs, heatmaps_stage1=hms)
    for t, stage in enumerate(stage_models[1:], start=2):
        pafs, hms = stage([pafs, hms, f, mask])
        outputs.update({f"pafs_stage{t}": pafs, f"heatmaps_stage{t}": hms})
    outputs.update(pafs=pafs, heatmaps=hms)
    return outputs


def paf_mobilenetv2_small(input_shape: tuple = (None, None, 3), name: str = "paf_mobilenetv2_small",
                          **overrides) -> PafMobileNetV2:
    """tf-pose's ``mobilenet_v2_small`` configuration (:data:`TFPOSE_SMALL`), random weights.

    Load the trained weights with :func:`kerapose.weights.tfpose.import_tfpose`.
    """
    config = {**TFPOSE_SMALL, **overrides}
    return PafMobileNetV2(keypoint_set="openpose18", input_shape=input_shape, name=name, **config)

