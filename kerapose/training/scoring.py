"""COCO scoring of any model that predicts people image by image (pycocotools)."""

from __future__ import annotations

from typing import Callable

import numpy as np

__all__ = ["evaluate_predictions"]


def evaluate_predictions(predict: Callable[[np.ndarray], dict], dataset, keypoint_set, image_ids=None,
                         progress: bool = True, per_keypoint: bool = True) -> dict:
    """COCO keypoint AP of ``predict`` (RGB uint8 image -> ``{"keypoints" [N, K, 3], "scores" [N]}``
    in the image's pixels, K in ``keypoint_set``) on a dataset split.

    Keypoints are converted to the dataset's keypoint set through the skeleton table
    (:func:`kerapose.skeleton.convert_keypoints`: OpenPose-18's neck is dropped for COCO-17),
    people left without any keypoint are dropped, and pycocotools scores the rest. Returns
    :func:`kerapose.evaluation.evaluate_keypoints`'s figures plus ``images`` and ``people``.
    """
    import keras

    from kerapose.data.pipeline import read_image
    from kerapose.evaluation import evaluate_keypoints, keypoint_results
    from kerapose.skeleton import convert_keypoints

    ids = list(image_ids or dataset.image_ids)
    results: list[dict] = []
    people = 0
    bar = keras.utils.Progbar(len(ids), unit_name="image") if progress else None
    for n, image_id in enumerate(ids):
        pose = predict(read_image(dataset.record(image_id).path))
        kp = convert_keypoints(np.asarray(pose["keypoints"], np.float64), keypoint_set, dataset.keypoint_set)
        keep = (kp[..., 2] > 0).any(-1) if len(kp) else np.zeros(0, bool)
        results += keypoint_results(image_id, kp[keep], np.asarray(pose["scores"])[keep])
        people += int(keep.sum())
        if bar is not None:
            bar.update(n + 1)
    metrics = evaluate_keypoints(dataset.coco, results, image_ids=ids, keypoint_set=dataset.keypoint_set,
                                 per_keypoint=per_keypoint)
    metrics.update(images=len(ids), people=people)
    return metrics
