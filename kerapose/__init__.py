"""kerapose: fast bottom-up multi-person pose estimation on Keras 3."""

__version__ = "0.1.0"

from kerapose import skeleton  # noqa: F401  (keypoint sets are data every module reads)

# `keras.saving.load_model` finds custom classes only once their modules have run their
# `register_keras_serializable` decorators, and the documented contract is that `import kerapose`
# is enough; so every module that registers objects is imported here.
from kerapose import layers, losses  # noqa: E402,F401
from kerapose.codecs import paf_graph  # noqa: E402,F401
from kerapose.models import registry  # noqa: E402,F401  (every family: models, decoders, recipes)
