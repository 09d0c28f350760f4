"""StrongPose as one Keras model: atrous ResNet, per-map heads, bilinear upsampling to the map stride."""

from __future__ import annotations

import keras

from kerapose.backbones.resnet import resnet_backbone
from kerapose.codecs.strongpose import StrongPoseCodec
from kerapose.heads.strongpose import ResizeToStride, strongpose_heads
from kerapose.skeleton import get_keypoint_set
from kerapose.models.poses import constructor_kwargs

__all__ = ["StrongPose", "STRONGPOSE_BACKBONES", "DEFAULT_INPUT_SIZE", "OUTPUTS", "DECODER_SETTINGS"]

STRONGPOSE_BACKBONES = {"resnet18": 18, "resnet50": 50, "resnet101": 101, "resnet152": 152}
DEFAULT_INPUT_SIZE = (400, 400)  # the paper's 401x401, rounded to a multiple of 16
OUTPUTS = ("heatmaps", "short_offsets", "mid_offsets", "body")
# what end_to_end / predict_poses may set besides max_people and score_threshold (StrongPoseCodec's)
DECODER_SETTINGS = ("nms_radius", "peak_threshold", "max_seeds", "refine_steps", "keypoint_score", "instance_score")


@keras.saving.register_keras_serializable(package="kerapose")
class StrongPose(keras.Model):
    """StrongPose (Ahmad and Yoon), after PersonLab (Papandreou et al. 2018).

    Input: ``image`` RGB float 0..255 ``[B, H, W, 3]``. Outputs (a dict), all on the grid of
    ``map_stride`` (``ceil(H/s) x ceil(W/s)``, :mod:`kerapose.codecs.grid`):

    - ``heatmaps [B, h, w, K]``: strong keypoint heat map logits (disks of radius R);
    - ``short_offsets [B, h, w, 2K]``: pixels, x then y per keypoint;
    - ``mid_offsets [B, h, w, 4E]``: pixels, per directed edge of the codec;
    - ``body [B, h, w, 1]``: body heat map (person segmentation) logits.

    Args:
        backbone: ``"resnet18"``, ``"resnet50"``, ``"resnet101"`` or ``"resnet152"``.
        keypoint_set: keypoint set name; K and the edges come from it.
        output_stride: the backbone's stride: 16 (the paper's training), 8 (its evaluation) or
            32. The weights do not depend on it: :meth:`with_output_stride` gives the same
            network at another stride.
        map_stride: stride of the output maps and of the codec (bilinear upsampling from
            ``output_stride``); must divide ``output_stride``.
        input_shape: (H, W, 3); H and W may be None.
        backbone_weights: path of a keras.applications-format ResNet weight file (ImageNet).
        backbone_width: channel multiplier of the backbone (1.0 for ImageNet weights).
        head_kernel: 1 (PersonLab) or 3.
        radius: disk radius R in pixels (paper: 16); the codec's.
        edge_hops: the codec's mid-range edges (1: limbs; 2: limbs and two-limb pairs).

    H and W that are multiples of :attr:`size_multiple` keep every stride's cells aligned with
    the grid convention; other sizes (the paper's 401x401) run too, with outputs of
    ``ceil(H/map_stride)`` cells, the size the codec encodes.
    """

    def __init__(
        self,
        backbone: str = "resnet101",
        keypoint_set: str = "coco17",
        output_stride: int = 16,
        map_stride: int = 8,
        input_shape: tuple = (None, None, 3),
        backbone_weights: str | None = None,
        backbone_width: float = 1.0,
        head_kernel: int = 1,
        radius: float = 16.0,
        edge_hops: int = 2,
        name: str = "strongpose",
        **kwargs,
    ):
        if backbone not in STRONGPOSE_BACKBONES:
            raise ValueError(f"backbone: expected one of {', '.join(STRONGPOSE_BACKBONES)}, got {backbone!r}")
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride: expected 8, 16 or 32, got {output_stride!r}")
        if isinstance(map_stride, bool) or not isinstance(map_stride, int) or map_stride < 1 \
                or output_stride % map_stride:
            raise ValueError(f"map_stride: expected a positive divisor of output_stride={output_stride}, "
                             f"got {map_stride!r}")
        input_shape = tuple(input_shape)
        if len(input_shape) != 3 or input_shape[-1] != 3:
            raise ValueError(f"input_shape: expected (H, W, 3), got {input_shape}")
        kps = get_keypoint_set(keypoint_set)
        codec = StrongPoseCodec(kps, stride=map_stride, radius=radius, edge_hops=edge_hops)

        image = keras.Input(shape=input_shape, name="image")
        bb = resnet_backbone(STRONGPOSE_BACKBONES[backbone], input_shape=input_shape, weights=backbone_weights,
                             name="backbone", width=backbone_width, output_stride=output_stride)
        features = bb(image)["C5"]
        heads = strongpose_heads(int(features.shape[-1]), codec.channels, kernel_size=head_kernel, name="heads")
        maps = heads(features)
        outputs = {}
        for key in OUTPUTS:
            x = maps[key]
            if output_stride != map_stride:  # at equal strides the backbone grid is already ceil(H/s)
                x = ResizeToStride(map_stride, name=f"{key}_upsample")(x, image)
            # float32 named outputs: stable names for losses and export, float32 under mixed precision
            outputs[key] = keras.layers.Activation("linear", dtype="float32", name=key)(x)
        super().__init__(inputs=image, outputs=outputs, name=name, **kwargs)

        self.backbone_name = backbone
        self.keypoint_set = kps
        self.codec = codec
        self.output_stride = int(output_stride)
        self.map_stride = int(map_stride)
        self.input_shape_config = input_shape
        self.backbone_width = float(backbone_width)
        self.head_kernel = int(head_kernel)
        self.backbone = bb

    @property
    def num_keypoints(self) -> int:
        return self.keypoint_set.num_keypoints

    @property
    def size_multiple(self) -> int:
        """H and W multiples of this keep the backbone and map grids aligned (see the class doc)."""
        return self.output_stride

    def with_output_stride(self, output_stride: int) -> "StrongPose":
        """The same network (same weights, copied) at another output stride, e.g. 8 to evaluate."""
        config = {**self.get_config(), "output_stride": int(output_stride)}
        config.pop("backbone_weights", None)
        other = type(self).from_config(config)
        other.set_weights(self.get_weights())
        return other

    def end_to_end(self, input_size: tuple[int, int] = DEFAULT_INPUT_SIZE, max_people: int = 20,
                   score_threshold: float = 0.0, nms_radius: float | None = None,
                   peak_threshold: float | None = None, max_seeds: int | None = None,
                   refine_steps: int | None = None, keypoint_score: str | None = None,
                   instance_score: str | None = None) -> keras.Model:
        """uint8 images of any size -> people, one Keras graph sharing this model's weights.

        The image is letterboxed into ``input_size`` (multiples of :attr:`size_multiple`), the
        network runs, the heat maps go through a sigmoid and :class:`StrongPoseDecoder` decodes
        them; coordinates are mapped back to each image's own pixels. Outputs: ``keypoints
        [B, M, K, 3]``, ``scores [B, M]``, ``boxes [B, M, 4]``, ``num_poses [B]``.
        The decoding settings (``nms_radius`` ... ``instance_score``, :class:`StrongPoseCodec`'s)
        default to the model codec's when None. They are named one by one (no ``**kwargs``) so
        that exporters pass this method only the settings it takes.
        """
        from kerapose.layers import Letterbox, Probabilities
        from kerapose.models.strongpose.decoder import StrongPoseDecoder

        settings = _decoder_settings(nms_radius=nms_radius, peak_threshold=peak_threshold, max_seeds=max_seeds,
                                     refine_steps=refine_steps, keypoint_score=keypoint_score,
                                     instance_score=instance_score)
        try:
            h, w = (int(v) for v in input_size)
        except (TypeError, ValueError):
            raise ValueError(f"input_size: expected (height, width), got {input_size!r}") from None
        m = self.size_multiple
        if h <= 0 or w <= 0 or h % m or w % m:
            raise ValueError(f"input_size: expected positive multiples of {m}, got {input_size!r}")
        image = keras.Input(shape=(None, None, 3), dtype="uint8", name="image")
        # float32 whatever the global policy: decoding under mixed_float16 would lose pixel precision
        resized, scale = Letterbox((h, w), name="letterbox", dtype="float32")(image)
        out = self(resized)
        heat = Probabilities(name="heatmap_probabilities", dtype="float32")(out["heatmaps"])
        codec = self.codec.get_config()
        decoder = StrongPoseDecoder(max_people=max_people, **{**codec, "score_threshold": score_threshold,
                                                             **settings}, name="decoder", dtype="float32")
        people = decoder(heat, out["short_offsets"], out["mid_offsets"], scale)
        people = {k: keras.layers.Identity(name=k, dtype=v.dtype)(v) for k, v in people.items()}
        return keras.Model(image, people, name=f"{self.name}_end_to_end")

    def predict_poses(self, images, input_size: tuple[int, int] = DEFAULT_INPUT_SIZE, max_people: int = 20,
                      score_threshold: float = 0.0, nms_radius: float | None = None,
                      peak_threshold: float | None = None, max_seeds: int | None = None,
                      refine_steps: int | None = None, keypoint_score: str | None = None,
                      instance_score: str | None = None) -> list[dict]:
        """Poses for a list of RGB uint8 images ([H, W, 3], any sizes), through :meth:`end_to_end`
        (same settings).

        Returns one dict per image: ``keypoints [N, K, 3]`` (x, y, score), ``scores [N]``,
        ``boxes [N, 4]`` in that image's pixels.
        """
        from kerapose.models.poses import predict_with_graph

        settings = _decoder_settings(nms_radius=nms_radius, peak_threshold=peak_threshold, max_seeds=max_seeds,
                                     refine_steps=refine_steps, keypoint_score=keypoint_score,
                                     instance_score=instance_score)
        key = (tuple(input_size), max_people, score_threshold, tuple(sorted(settings.items())))
        return predict_with_graph(self.__dict__.setdefault("_end_to_end_cache", {}), key,
                                  lambda: self.end_to_end(input_size, max_people, score_threshold, **settings),
                                  images)

    def get_config(self) -> dict:
        return {
            "backbone": self.backbone_name,
            "keypoint_set": self.keypoint_set.name,
            "output_stride": self.output_stride,
            "map_stride": self.map_stride,
            "input_shape": list(self.input_shape_config),
            "backbone_width": self.backbone_width,
            "head_kernel": self.head_kernel,
            "radius": self.codec.radius,
            "edge_hops": self.codec.edge_hops,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config: dict) -> "StrongPose":
        config = constructor_kwargs(config)
        return cls(**config)


def _decoder_settings(**settings) -> dict:
    """The decoding settings given (not None), in :data:`DECODER_SETTINGS`' terms."""
    assert set(settings) == set(DECODER_SETTINGS)  # one list of names: the signatures and the tuple
    return {k: v for k, v in settings.items() if v is not None}
