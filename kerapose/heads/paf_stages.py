"""Two-branch PAF stages: OpenPose (Cao et al. 2017) stages and the FTN / MLN branches.

Branch ``L1`` predicts part affinity fields (2 channels per limb), branch ``L2`` part confidence
maps (heatmaps). All outputs are linear (the papers train them with an L2 loss).

- :func:`openpose_stage1`: per branch 3 x (3x3, 128, ReLU) -> 1x1 512 ReLU -> 1x1 output.
- :func:`openpose_stage`: stage t >= 2, per branch 5 x (7x7, 128, ReLU) -> 1x1 128 ReLU -> 1x1
  output, on concat(previous PAFs, previous heatmaps, backbone features) — the Caffe model's
  concatenation order. Layer names are the original Caffe model's (``conv5_1_CPM_L1``,
  ``Mconv1_stage2_L2``, ...), so converted weights can be loaded by name.
- :func:`paf_branch`: a slice (Conv-``first`` .. Conv-``last``) of the 5-conv joint or limb
  branch of the Feature Transfer / Multi-level networks, optionally with transferred features
  concatenated to its input.
- :func:`refinement_branch`: FTN / MLN refinement of one branch: aggregated conv blocks on the
  concatenated inputs, a 1x1 fusion and a 1x1 output.
"""

from __future__ import annotations

from typing import Sequence

import keras
from keras import layers

from kerapose.heads.transfer import aggregated_blocks

__all__ = [
    "openpose_stage1",
    "openpose_stage",
    "BRANCH_KERNELS",
    "branch_widths",
    "paf_branch",
    "refinement_branch",
]

# FTN / MLN branch: kernel sizes of Conv-1 .. Conv-5 (Conv-5 is the linear output).
BRANCH_KERNELS: tuple[int, ...] = (3, 3, 3, 3, 1)


def _check_channels(**values: int) -> None:
    for key, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{key} must be a positive integer, got {value!r}")


def openpose_stage1(
    in_channels: int = 128,
    num_pafs: int = 38,
    num_heatmaps: int = 19,
    width: int = 128,
    name: str = "stage1",
) -> keras.Model:
    """OpenPose stage 1: features -> [pafs, heatmaps]."""
    _check_channels(in_channels=in_channels, num_pafs=num_pafs, num_heatmaps=num_heatmaps, width=width)
    feats = keras.Input(shape=(None, None, in_channels), name=f"{name}_features")
    outs = []
    for branch, n_out in ((1, num_pafs), (2, num_heatmaps)):
        x = feats
        for i in (1, 2, 3):
            x = layers.Conv2D(width, 3, padding="same", activation="relu", name=f"conv5_{i}_CPM_L{branch}")(x)
        x = layers.Conv2D(512, 1, activation="relu", name=f"conv5_4_CPM_L{branch}")(x)
        outs.append(layers.Conv2D(n_out, 1, name=f"conv5_5_CPM_L{branch}")(x))
    return keras.Model(feats, outs, name=name)


def openpose_stage(
    stage: int,
    in_channels: int = 128,
    num_pafs: int = 38,
    num_heatmaps: int = 19,
    width: int = 128,
    name: str | None = None,
) -> keras.Model:
    """OpenPose stage ``stage`` >= 2: [pafs, heatmaps, features] -> [pafs, heatmaps]."""
    if not isinstance(stage, int) or stage < 2:
        raise ValueError(f"refinement stage index must be an integer >= 2, got {stage!r}")
    _check_channels(in_channels=in_channels, num_pafs=num_pafs, num_heatmaps=num_heatmaps, width=width)
    name = name or f"stage{stage}"
    pafs = keras.Input(shape=(None, None, num_pafs), name=f"{name}_pafs")
    heatmaps = keras.Input(shape=(None, None, num_heatmaps), name=f"{name}_heatmaps")
    feats = keras.Input(shape=(None, None, in_channels), name=f"{name}_features")
    x0 = layers.Concatenate(name=f"concat_stage{stage}")([pafs, heatmaps, feats])
    outs = []
    for branch, n_out in ((1, num_pafs), (2, num_heatmaps)):
        x = x0
        for i in range(1, 6):
            x = layers.Conv2D(width, 7, padding="same", activation="relu", name=f"Mconv{i}_stage{stage}_L{branch}")(x)
        x = layers.Conv2D(width, 1, activation="relu", name=f"Mconv6_stage{stage}_L{branch}")(x)
        outs.append(layers.Conv2D(n_out, 1, name=f"Mconv7_stage{stage}_L{branch}")(x))
    return keras.Model([pafs, heatmaps, feats], outs, name=name)


def branch_widths(out_channels: int, width: int = 128, wide: int = 512) -> tuple[int, ...]:
    """Output channels of Conv-1 .. Conv-5 of an FTN / MLN branch."""
    return (width, width, width, wide, out_channels)


def paf_branch(
    in_channels: int,
    out_channels: int,
    first: int = 1,
    last: int = 5,
    extra_channels: int = 0,
    taps: Sequence[int] = (),
    width: int = 128,
    wide: int = 512,
    name: str = "branch",
) -> keras.Model:
    """Conv-``first`` .. Conv-``last`` of an FTN / MLN joint or limb branch.

    Conv-1..3: 3x3, ``width``, ReLU; Conv-4: 3x3, ``wide``, ReLU; Conv-5: 1x1 to
    ``out_channels``, linear (the branch's prediction).

    Inputs: the features entering Conv-``first`` (``in_channels``) and, when ``extra_channels``
    > 0, a second input (transferred features) concatenated to them first. Outputs: Conv-``last``
    alone, or, with ``taps``, a list of the listed convs' outputs followed by Conv-``last``'s.
    """
    if not (1 <= first <= last <= len(BRANCH_KERNELS)):
        raise ValueError(f"branch convs must satisfy 1 <= first <= last <= 5, got first={first}, last={last}")
    _check_channels(in_channels=in_channels, out_channels=out_channels, width=width, wide=wide)
    for t in taps:
        if not first <= t < last:
            raise ValueError(f"tap Conv-{t} is not inside Conv-{first} .. Conv-{last - 1}")
    widths = branch_widths(out_channels, width, wide)
    x = keras.Input(shape=(None, None, in_channels), name=f"{name}_input")
    inputs = [x]
    if extra_channels:
        _check_channels(extra_channels=extra_channels)
        extra = keras.Input(shape=(None, None, extra_channels), name=f"{name}_transferred")
        inputs.append(extra)
        x = layers.Concatenate(name=f"{name}_concat")([x, extra])
    tapped = []
    for i in range(first, last + 1):
        act = None if i == len(BRANCH_KERNELS) else "relu"
        x = layers.Conv2D(widths[i - 1], BRANCH_KERNELS[i - 1], padding="same", activation=act,
                          name=f"{name}_conv{i}")(x)
        if i in taps:
            tapped.append(x)
    outputs = [*tapped, x] if taps else x
    return keras.Model(inputs if len(inputs) > 1 else inputs[0], outputs, name=name)


def refinement_branch(
    in_channels: Sequence[int],
    out_channels: int,
    num_blocks: int = 7,
    width: int = 128,
    fuse: int = 512,
    name: str = "refine",
) -> keras.Model:
    """FTN / MLN refinement of one branch.

    The inputs (``len(in_channels)`` maps, e.g. heatmaps, PAFs, backbone features) are
    concatenated; ``num_blocks`` blocks of three 3x3 convs (``width``, ReLU) follow; the block
    outputs are concatenated and fused by a 1x1 conv (``fuse`` channels, ReLU); a 1x1 conv gives
    the linear output.
    """
    in_channels = list(in_channels)
    if not in_channels:
        raise ValueError("refinement_branch needs at least one input")
    _check_channels(out_channels=out_channels, num_blocks=num_blocks, width=width, fuse=fuse,
                    **{f"in_channels[{i}]": c for i, c in enumerate(in_channels)})
    inputs = [keras.Input(shape=(None, None, c), name=f"{name}_input{i + 1}") for i, c in enumerate(in_channels)]
    x = layers.Concatenate(name=f"{name}_concat_inputs")(inputs) if len(inputs) > 1 else inputs[0]
    x = aggregated_blocks(x, num_blocks, width, fuse, name=name)
    out = layers.Conv2D(out_channels, 1, name=f"{name}_output")(x)
    return keras.Model(inputs if len(inputs) > 1 else inputs[0], out, name=name)
