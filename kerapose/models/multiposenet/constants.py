"""MultiPoseNet facts shared by its network, decoder and training stages."""

from __future__ import annotations

__all__ = ["MULTIPOSENET_BACKBONES", "KEYPOINT_STRIDE", "SIZE_MULTIPLE", "PERSON_LEVELS", "POSE_SCORES",
           "check_pose_score"]

MULTIPOSENET_BACKBONES = {"resnet18": 18, "resnet50": 50, "resnet101": 101}
KEYPOINT_STRIDE = 4  # heatmaps and segmentation come out at stride 4
SIZE_MULTIPLE = 32  # every FPN upsampling must land exactly: H and W multiples of C5's stride
PERSON_LEVELS = (3, 4, 5, 6, 7)
POSE_SCORES = ("box", "box_keypoints")  # how the end-to-end decoder scores a pose


def check_pose_score(value) -> str:
    """``value`` if it is one of :data:`POSE_SCORES`, else a ValueError that lists them."""
    if value not in POSE_SCORES:
        raise ValueError(f"pose_score: expected one of {', '.join(POSE_SCORES)}, got {value!r}")
    return value
