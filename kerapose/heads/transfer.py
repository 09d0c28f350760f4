"""Feature-transfer and multi-level aggregation modules (Huang et al.: FTN and MLN).

The building block of both papers is a block of three 3x3 convolutions (128 channels, ReLU).
A module stacks several blocks and aggregates their outputs; kerapose aggregates by
concatenating every block's output and fusing them with a 1x1 convolution (see
docs/paf_family.md for why this reading and not a sum).

- :func:`transfer_subnetwork`: FTN's feature-transfer sub-network, 4 blocks, taking one branch's
  Conv-k features to the other branch.
- :func:`lower_level_module`, :func:`joint_limb_module`, :func:`global_context_module`: the
  Multi-level Network's lower-level, joint-limb and global-context feature extractors.

Every builder returns a named functional ``keras.Model`` so that a task model's parameter and
FLOP tables list it as one module.
"""

from __future__ import annotations

import keras
from keras import layers

from kerapose.layers import ResizeTo

__all__ = [
    "conv_block",
    "aggregated_blocks",
    "transfer_subnetwork",
    "lower_level_module",
    "joint_limb_module",
    "global_context_module",
]


def _check_positive(**values: int) -> None:
    for key, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{key} must be a positive integer, got {value!r}")


def conv_block(x, width: int, name: str, convs: int = 3):
    """``convs`` 3x3 convolutions of ``width`` channels with ReLU, in sequence."""
    for i in range(convs):
        x = layers.Conv2D(width, 3, padding="same", activation="relu", name=f"{name}_conv{i + 1}")(x)
    return x


def aggregated_blocks(x, num_blocks: int, width: int, out_channels: int, name: str,
                      out_activation: str | None = "relu"):
    """``num_blocks`` conv blocks in sequence; every block's output is kept, concatenated and
    fused by a 1x1 convolution to ``out_channels`` (the aggregation)."""
    outs = []
    for b in range(num_blocks):
        x = conv_block(x, width, name=f"{name}_block{b + 1}")
        outs.append(x)
    agg = layers.Concatenate(name=f"{name}_concat")(outs) if len(outs) > 1 else outs[0]
    return layers.Conv2D(out_channels, 1, activation=out_activation, name=f"{name}_aggregate")(agg)


def transfer_subnetwork(
    in_channels: int,
    out_channels: int = 128,
    num_blocks: int = 4,
    width: int = 128,
    name: str = "transfer",
) -> keras.Model:
    """FTN feature-transfer sub-network: one branch's features -> features for the other branch.

    ``num_blocks`` blocks of three 3x3 convs (``width`` channels, ReLU); the block outputs are
    concatenated and fused by a 1x1 conv + ReLU to ``out_channels``. Input and output are
    [B, h, w, C] at the branch's resolution (stride 8).
    """
    _check_positive(in_channels=in_channels, out_channels=out_channels, num_blocks=num_blocks, width=width)
    inp = keras.Input(shape=(None, None, in_channels), name=f"{name}_input")
    out = aggregated_blocks(inp, num_blocks, width, out_channels, name=name)
    return keras.Model(inp, out, name=name)


def lower_level_module(in_channels: int = 256, width: int = 128, name: str = "lower_level") -> keras.Model:
    """MLN lower-level features: a VGG map from before conv4 (block3_pool, stride 8), where
    appearance detail that tells left from right is still present, through one 3x3 conv + ReLU."""
    _check_positive(in_channels=in_channels, width=width)
    inp = keras.Input(shape=(None, None, in_channels), name=f"{name}_input")
    out = layers.Conv2D(width, 3, padding="same", activation="relu", name=f"{name}_conv")(inp)
    return keras.Model(inp, out, name=name)


def joint_limb_module(joint_channels: int, limb_channels: int, width: int = 128,
                      name: str = "joint_limb") -> keras.Model:
    """MLN joint-limb level: the two branches' intermediate features (complementary information),
    concatenated and fused by a 1x1 conv + ReLU."""
    _check_positive(joint_channels=joint_channels, limb_channels=limb_channels, width=width)
    j = keras.Input(shape=(None, None, joint_channels), name=f"{name}_joint")
    lm = keras.Input(shape=(None, None, limb_channels), name=f"{name}_limb")
    x = layers.Concatenate(name=f"{name}_concat")([j, lm])
    out = layers.Conv2D(width, 1, activation="relu", name=f"{name}_fuse")(x)
    return keras.Model([j, lm], out, name=name)


def global_context_module(in_channels: int = 128, width: int = 128, name: str = "global_context") -> keras.Model:
    """MLN global level: global average pooling of the features, a 1x1 conv + ReLU, and the
    resulting vector broadcast back over the map (a nearest resize of a 1x1 map, which exports
    to TFLite builtins at any input size)."""
    _check_positive(in_channels=in_channels, width=width)
    inp = keras.Input(shape=(None, None, in_channels), name=f"{name}_input")
    g = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_pool")(inp)
    g = layers.Conv2D(width, 1, activation="relu", name=f"{name}_conv")(g)
    out = ResizeTo("nearest", name=f"{name}_broadcast")([g, inp])
    return keras.Model(inp, out, name=name)
