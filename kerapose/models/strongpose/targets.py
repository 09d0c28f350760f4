"""StrongPose training targets for one augmented crop, in the form
:func:`kerapose.data.pipeline.keypoint_dataset` feeds to ``model.fit``.

The model's own codec (:attr:`StrongPose.codec`: map stride, disk radius, mid-range edges)
encodes the crop's record (:meth:`~kerapose.codecs.strongpose.StrongPoseCodec.encode`: heat
maps, short and mid-range offsets with their masks, body heat map, loss weight W) and
:func:`~kerapose.models.strongpose.losses.pack_targets` packs them into one ``y_true`` per
network output.
"""

from __future__ import annotations

import numpy as np

from kerapose.codecs.grid import output_size
from kerapose.codecs.strongpose import StrongPoseCodec
from kerapose.models.strongpose.losses import PACKING, pack_targets

__all__ = ["StrongPoseTargets"]


class StrongPoseTargets:
    """Packed targets of the four StrongPose outputs for crops of ``input_size``.

    Args:
        codec: the model's codec (``model.codec``).
        input_size: (H, W) of the crops; the maps are ``ceil(H / stride) x ceil(W / stride)``,
            the size the network outputs for any H and W (401 x 401 -> 51 x 51 at stride 8).
    """

    def __init__(self, codec: StrongPoseCodec, input_size: tuple[int, int]) -> None:
        if not isinstance(codec, StrongPoseCodec):
            raise ValueError(f"codec: expected a StrongPoseCodec, got {type(codec).__name__}")
        try:
            h, w = (int(v) for v in input_size)
        except (TypeError, ValueError):
            raise ValueError(f"input_size: expected (H, W), got {input_size!r}") from None
        if h < 1 or w < 1 or (h, w) != tuple(input_size):
            raise ValueError(f"input_size: expected positive integers (H, W), got {input_size!r}")
        self.codec = codec
        self.keypoint_set = codec.keypoint_set  # the records' keypoint set (augment flips with it)
        self.input_size = (h, w)

    @classmethod
    def for_model(cls, model, input_size: tuple[int, int]) -> "StrongPoseTargets":
        return cls(model.codec, input_size)

    @property
    def output_shapes(self) -> dict[str, tuple[int, int, int]]:
        h, w = output_size(self.input_size, self.codec.stride)
        ch = {**self.codec.channels, "weights": 1, "mid_mask": self.codec.num_edges}
        return {out: (h, w, ch[a] + ch[b]) for out, (a, b) in PACKING.items()}

    def encode(self, crop: dict) -> dict[str, np.ndarray]:
        """An :func:`kerapose.data.augment.augment` crop -> ``{output name: packed target}``."""
        rec = crop["record"]
        if (int(rec.height), int(rec.width)) != self.input_size:
            raise ValueError(f"crop of image {rec.image_id} is {(rec.height, rec.width)}, targets expect "
                             f"input_size {self.input_size}")
        return pack_targets(self.codec.encode(rec))
