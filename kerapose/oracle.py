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
from kerapose.skeleton import openpose18_to_coco17

__all__ = ["ORACLE_CODECS", "run_oracle"]

ORACLE_CODECS = ("heatmap", "paf", "boxes", "prn")


def _make(codec: str, keypoint_set: str, stride: int | None):
    """codec name -> function(record) -> ("keypoints" | "boxes", values, scores)."""
    if codec == "heatmap":
        from kerapose.codecs.heatmap import HeatmapCodec, oracle_keypoints

        hc = HeatmapCodec(keypoint_set, stride=stride or 4)
        return lambda r: ("keypoints", *oracle_keypoints(hc, r))
    if codec == "paf":
        from kerapose.codecs.paf import PafCodec

        pc = PafCodec(keypoint_set, stride=stride or 8)

        def paf(r):
            kp, sc = pc.oracle_keypoints(r)
            if pc.keypoint_set.name == "openpose18" and keypoint_set != "openpose18":
                kp = openpose18_to_coco17(kp)
            return "keypoints", kp, sc

        return paf
    if codec == "boxes":
        from kerapose.codecs.boxes import BoxCodec, oracle_boxes

        bc = BoxCodec()
        return lambda r: ("boxes", *oracle_boxes(bc, r))
    if codec == "prn":
        from kerapose.codecs.heatmap import HeatmapCodec
        from kerapose.codecs.prn import PRNCodec, oracle_keypoints

        hc = HeatmapCodec(keypoint_set, stride=stride or 4)
        prn = PRNCodec(keypoint_set)
        return lambda r: ("keypoints", *oracle_keypoints(prn, hc, r))
    raise ValueError(f"unknown codec {codec!r}; accepted: {', '.join(ORACLE_CODECS)}")


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
    ``boxes``) plus ``codec``, ``split``, ``images`` and, for keypoints, ``per_keypoint``.
    """
    fn = _make(codec, keypoint_set, stride)
    ds = CocoKeypoints(data_root, split, keypoint_set=keypoint_set)
    bar = None
    if progress:
        import keras

        bar = keras.utils.Progbar(len(ds), unit_name="image")
    results: list[dict] = []
    kind = "keypoints"
    for i, record in enumerate(ds):
        kind, values, scores = fn(record)
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
    return {"codec": codec, "split": split, "images": len(ds), "metric": kind, **metrics}
