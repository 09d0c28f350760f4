"""Training every family shares: recipe loading and validation (:mod:`.recipe`, :mod:`.schema`),
the stage runner (:mod:`.runner`), distribution (:mod:`.distribute`), precision
(:mod:`.precision`) and optimizers (:mod:`.optimizers`). A family supplies its part through
:class:`kerapose.training.spec.RecipeSpec`; ``from kerapose.training.runner import train``."""
