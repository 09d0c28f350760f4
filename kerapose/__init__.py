"""kerapose: fast bottom-up multi-person pose estimation on Keras 3."""

__version__ = "0.1.0"

from kerapose import skeleton  # noqa: F401  (keypoint sets are data every module reads)
