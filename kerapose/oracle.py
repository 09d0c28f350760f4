"""Codec oracles: the best AP a decoder can reach on a dataset.

Each oracle encodes a split's ground truth with a codec, decodes it back as if a network had
output the targets exactly, and scores the result with pycocotools. What is lost (merged
peaks, sub-pixel error, anchors no box matches, greedy grouping mistakes, crowded PRN crops)
bounds every model trained with that codec on that data and keypoint set.
"""

from __future__ import annotations

import numpy as np

from kerapose.data.coco import CocoKeypoints
from kerapose.evaluation import box_results, evaluate_boxes, evaluate_keypoints, keypoint_results

__all__ = ["oracle_codecs", "run_oracle"]


def oracle_codecs() -> list[str]:
    """Every codec some family declares an oracle for (``kerapose oracle --codec``)."""
    from kerapose.models.registry import oracle_codecs as codecs

    return list(codecs())


def run_oracle(
    codec: str,
    data_root: str,
    split: str,
    keypoint_set: str = "coco17",
    stride: int | None = None,
    progress: bool = False,
) -> dict:
    """Encode and decode every image of ``split`` with ``codec`` and score it with pycocotools.

    Returns the COCO figures (keypoint AP for ``heatmap``, ``paf`` and ``prn``, box AP for
    ``boxes``) plus ``codec``, ``split``, ``images``, for keypoints ``per_keypoint``, and
    ``counters``: an oracle may return a fourth value, a dict of counts for the record (e.g.
    PoseDet's ``lost``: people that shared a candidate with another), summed over the split.
    """
    from kerapose.models.registry import oracle_codecs as codecs

    families = codecs()
    if codec not in families:
        raise ValueError(f"unknown codec {codec!r}; accepted: {', '.join(families)}")
    fn = families[codec].oracles[codec](keypoint_set, stride)
    ds = CocoKeypoints(data_root, split, keypoint_set=keypoint_set)
    bar = None
    if progress:
        import keras

        bar = keras.utils.Progbar(len(ds), unit_name="image")
    results: list[dict] = []
    counters: dict[str, int] = {}
    kind = "keypoints"
    for i, record in enumerate(ds):
        kind, values, scores, *extra = fn(record)
        for name, count in (extra[0] if extra else {}).items():
            counters[name] = counters.get(name, 0) + int(count)
        values, scores = np.asarray(values), np.asarray(scores)
        if kind == "boxes":
            results += box_results(record.image_id, values, scores)
        else:
            keep = (values[..., 2] > 0).any(-1) if len(values) else np.zeros(0, bool)
            results += keypoint_results(record.image_id, values[keep], scores[keep])
        if bar is not None:
            bar.update(i + 1)
    if kind == "boxes":
        metrics = evaluate_boxes(ds.coco, results, image_ids=ds.image_ids)
    else:
        metrics = evaluate_keypoints(ds.coco, results, image_ids=ds.image_ids, keypoint_set=keypoint_set,
                                     per_keypoint=True)
    return {"codec": codec, "split": split, "images": len(ds), "metric": kind, **metrics, "counters": counters}
