"""COCO evaluation (pycocotools) for keypoints and person boxes, the OKS formula, OKS-NMS.

Predictions follow the kerapose contract (keypoints ``[N, K, 3]`` as (x, y, score) in image
pixels, boxes ``[N, 4]`` as x1, y1, x2, y2). :func:`keypoint_results` / :func:`box_results`
turn one image's predictions into COCO results dicts, :func:`evaluate_keypoints` /
:func:`evaluate_boxes` run pycocotools' ``COCOeval`` on them and return its ``stats`` as a
named dict; :func:`evaluate_results_file` scores any COCO keypoint results file (kerapose's
``predictions.json`` or another tool's) against a dataset split. :func:`oks` is COCO's object
keypoint similarity in vectorised numpy (the same numbers as ``COCOeval.computeOks``) and
:func:`oks_nms` the greedy non-maximum suppression built on it.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import tempfile
import warnings
from typing import Any

import numpy as np

from kerapose.skeleton import KeypointSet, available_keypoint_sets, get_keypoint_set

__all__ = [
    "KEYPOINT_METRICS",
    "BOX_METRICS",
    "keypoint_results",
    "box_results",
    "write_results",
    "evaluate_keypoints",
    "evaluate_boxes",
    "load_results_file",
    "evaluate_results_file",
    "oks",
    "oks_nms",
]

# Names of COCOeval.stats, in its order, for iouType "keypoints" and "bbox".
KEYPOINT_METRICS = ("AP", "AP50", "AP75", "APM", "APL", "AR", "AR50", "AR75", "ARM", "ARL")
BOX_METRICS = ("AP", "AP50", "AP75", "APS", "APM", "APL", "AR1", "AR10", "AR100", "ARS", "ARM", "ARL")


# ----------------------------------------------------------------------------- results


def _finite_rows(values: np.ndarray, scores: np.ndarray) -> np.ndarray:
    flat = values.reshape(values.shape[0], int(np.prod(values.shape[1:])))
    return np.isfinite(flat).all(axis=1) & np.isfinite(scores)


def _check_scores(scores, n: int) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (n,):
        raise ValueError(f"scores: expected shape ({n},) to match the predictions, got {scores.shape}")
    return scores


def _warn_dropped(kind: str, image_id: int, dropped: int) -> None:
    if dropped:
        warnings.warn(
            f"{kind}: dropped {dropped} prediction(s) with NaN/inf values on image {image_id}",
            RuntimeWarning,
            stacklevel=3,
        )


def keypoint_results(
    image_id: int,
    keypoints: np.ndarray,
    scores: np.ndarray,
    category_id: int = 1,
    *,
    keypoint_scores: bool = True,
) -> list[dict]:
    """One image's poses -> COCO keypoint results dicts.

    Args:
        image_id: COCO image id.
        keypoints: ``[N, K, 3]`` (x, y, score) in pixels.
        scores: ``[N]`` pose scores.
        category_id: COCO category of the results.
        keypoint_scores: write each keypoint's score as its third value (as OpenPose and
            HigherHRNet results do); ``False`` writes ``v = 1``. COCOeval reads only x and y
            of detections, so both are COCO-compatible.

    Rows holding a NaN or infinite value are dropped, with a ``RuntimeWarning`` giving the
    count. Values are written as full-precision floats (nothing is rounded).
    """
    kp = np.asarray(keypoints, dtype=np.float64)
    if kp.ndim != 3 or kp.shape[-1] != 3:
        raise ValueError(f"keypoints: expected [N, K, 3] (x, y, score), got shape {kp.shape}")
    sc = _check_scores(scores, kp.shape[0])
    ok = _finite_rows(kp, sc)
    _warn_dropped("keypoint_results", image_id, int((~ok).sum()))
    out = []
    for pose, score in zip(kp[ok], sc[ok]):
        pose = pose.copy()
        if not keypoint_scores:
            pose[:, 2] = 1.0
        out.append(
            {
                "image_id": int(image_id),
                "category_id": int(category_id),
                "keypoints": [float(v) for v in pose.reshape(-1)],
                "score": float(score),
            }
        )
    return out


def box_results(image_id: int, boxes: np.ndarray, scores: np.ndarray, category_id: int = 1) -> list[dict]:
    """One image's boxes ``[N, 4]`` (x1, y1, x2, y2) -> COCO bbox results dicts (x, y, w, h).

    Rows holding a NaN or infinite value are dropped, with a ``RuntimeWarning`` giving the count.
    """
    b = np.asarray(boxes, dtype=np.float64)
    if b.ndim != 2 or b.shape[-1] != 4:
        raise ValueError(f"boxes: expected [N, 4] (x1, y1, x2, y2), got shape {b.shape}")
    sc = _check_scores(scores, b.shape[0])
    ok = _finite_rows(b, sc)
    _warn_dropped("box_results", image_id, int((~ok).sum()))
    return [
        {
            "image_id": int(image_id),
            "category_id": int(category_id),
            "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
            "score": float(s),
        }
        for (x1, y1, x2, y2), s in zip(b[ok], sc[ok])
    ]


def _json_default(obj: Any):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_results(results: list[dict], path: str) -> None:
    """Write COCO results JSON atomically (a temporary file in the same folder, then ``os.replace``)."""
    if not isinstance(results, list):
        raise ValueError(f"results: expected a list of dicts, got {type(results).__name__}")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".results-", suffix=".json.tmp", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(results, f, default=_json_default)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# ----------------------------------------------------------------------------- COCOeval


def _as_coco(coco_gt):
    """Accept a pycocotools ``COCO``, anything with a ``.coco`` (``CocoKeypoints``) or a JSON path."""
    from pycocotools.coco import COCO

    if isinstance(coco_gt, COCO):
        return coco_gt
    inner = getattr(coco_gt, "coco", None)
    if isinstance(inner, COCO):
        return inner
    if isinstance(coco_gt, (str, os.PathLike)):
        from kerapose.data.coco import load_coco

        return load_coco(os.fspath(coco_gt))
    raise ValueError(
        f"coco_gt: expected a pycocotools COCO, a CocoKeypoints or an annotation path, got {type(coco_gt).__name__}"
    )


def _quiet(verbose: bool):
    return contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())


def _prepare_results(coco, results: list[dict], field: str, drop: tuple[str, ...]) -> list[dict]:
    """Copy the results (loadRes writes into them) and check them against the ground truth."""
    if not isinstance(results, list):
        raise ValueError(f"results: expected a list of dicts, got {type(results).__name__}")
    known = set(coco.getImgIds())
    out = []
    for i, r in enumerate(results):
        if field not in r or "image_id" not in r or "score" not in r:
            raise ValueError(f"results[{i}]: expected keys 'image_id', 'score' and {field!r}, got {sorted(r)}")
        if r["image_id"] not in known:
            raise ValueError(f"results[{i}]: image_id {r['image_id']} is not in the ground truth")
        r = {k: v for k, v in r.items() if k not in drop}  # decides loadRes' branch
        r[field] = [float(v) for v in r[field]]
        out.append(r)
    return out


def _run_cocoeval(coco_gt, coco_dt, iou_type: str, image_ids, sigmas: np.ndarray | None, verbose: bool):
    from pycocotools.cocoeval import COCOeval

    with _quiet(verbose):
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        if image_ids is not None:
            ev.params.imgIds = sorted(int(i) for i in image_ids)
        if sigmas is not None:
            ev.params.kpt_oks_sigmas = np.asarray(sigmas, dtype=np.float64)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def _load_results(coco, results: list[dict], verbose: bool):
    with _quiet(verbose):
        return coco.loadRes(results)


def _check_image_ids(coco, image_ids) -> list[int] | None:
    if image_ids is None:
        return None
    ids = [int(i) for i in image_ids]
    unknown = sorted(set(ids) - set(coco.getImgIds()))
    if unknown:
        raise ValueError(f"image_ids: {len(unknown)} id(s) not in the ground truth, e.g. {unknown[:5]}")
    return ids


def evaluate_keypoints(
    coco_gt,
    results: list[dict],
    image_ids: list[int] | None = None,
    keypoint_set: str | KeypointSet = "coco17",
    per_keypoint: bool = False,
    verbose: bool = False,
) -> dict:
    """COCO keypoint AP/AR of ``results`` against ``coco_gt`` (pycocotools, iouType "keypoints").

    Args:
        coco_gt: pycocotools ``COCO``, a ``CocoKeypoints`` or an annotation JSON path.
        results: COCO keypoint results dicts (see :func:`keypoint_results`).
        image_ids: images to evaluate; ``None`` evaluates every ground-truth image (images
            without predictions then count their people as misses).
        keypoint_set: its OKS sigmas replace pycocotools' built-in COCO-17 ones.
        per_keypoint: also return ``"per_keypoint": {name: AP}``. Each entry re-runs COCOeval
            against a copy of the ground truth where only that keypoint stays labelled (the
            others get v = 0) and ``num_keypoints`` is recounted, so people without that
            keypoint become ignored ground truth (COCOeval ignores ``num_keypoints == 0``) and
            OKS reduces to that one keypoint's similarity. The detections are unchanged. A
            detection of a person who lacks that keypoint is matched to that (ignored) ground
            truth by COCOeval's box rule (all its keypoints inside the GT box grown by one box
            size per side) and then ignored. Missing detected keypoints ((0, 0) with score 0)
            are moved to the centroid of the pose's found keypoints for these runs, so they do
            not turn such detections into false positives.
        verbose: let pycocotools print its progress and summary table.

    Returns:
        ``{"AP", "AP50", "AP75", "APM", "APL", "AR", "AR50", "AR75", "ARM", "ARL"}`` as floats,
        exactly ``COCOeval.stats`` (-1.0 where COCOeval has nothing to measure, e.g. no
        ground truth in a size range). Empty ``results`` give 0.0 everywhere (pycocotools
        cannot load an empty result list).
    """
    coco = _as_coco(coco_gt)
    kset = get_keypoint_set(keypoint_set)
    k = kset.num_keypoints
    ids = _check_image_ids(coco, image_ids)
    res = _prepare_results(coco, results, "keypoints", drop=("bbox", "segmentation", "area", "id"))
    for i, r in enumerate(res):
        if len(r["keypoints"]) != 3 * k:
            raise ValueError(
                f"results[{i}]: keypoints has {len(r['keypoints'])} values, expected {3 * k} "
                f"for keypoint set {kset.name!r}"
            )
    for ann in coco.dataset.get("annotations", []):
        if "keypoints" in ann and len(ann["keypoints"]) != 3 * k:
            raise ValueError(
                f"ground truth annotation {ann.get('id')}: {len(ann['keypoints'])} keypoint values, "
                f"expected {3 * k} for keypoint set {kset.name!r}"
            )
    if not res:
        out: dict = {m: 0.0 for m in KEYPOINT_METRICS}
        if per_keypoint:
            out["per_keypoint"] = {name: 0.0 for name in kset.keypoints}
        return out
    coco_dt = _load_results(coco, copy.deepcopy(res), verbose)
    ev = _run_cocoeval(coco, coco_dt, "keypoints", ids, kset.sigmas_array, verbose)
    out = {m: float(v) for m, v in zip(KEYPOINT_METRICS, ev.stats)}
    if per_keypoint:
        out["per_keypoint"] = {
            name: _single_keypoint_ap(coco, res, j, ids, kset.sigmas_array, verbose)
            for j, name in enumerate(kset.keypoints)
        }
    return out


def _single_keypoint_ap(coco, res: list[dict], j: int, ids, sigmas: np.ndarray, verbose: bool) -> float:
    from pycocotools.coco import COCO

    ds = copy.deepcopy(coco.dataset)
    for ann in ds.get("annotations", []):
        if "keypoints" not in ann:
            continue
        kp = np.asarray(ann["keypoints"], dtype=np.float64).reshape(-1, 3)
        keep = np.zeros(len(kp), bool)
        keep[j] = kp[j, 2] > 0
        kp[~keep] = 0.0
        ann["keypoints"] = kp.reshape(-1).tolist()
        ann["num_keypoints"] = int(keep.sum())
    single = COCO()
    single.dataset = ds
    with _quiet(verbose):
        single.createIndex()
    ev = _run_cocoeval(single, _load_results(single, _fill_missing(res), verbose), "keypoints", ids, sigmas, verbose)
    return float(ev.stats[0])


def _fill_missing(res: list[dict]) -> list[dict]:
    """Copies of ``res`` whose missing keypoints ((0, 0) with score 0) sit at the pose's centroid.

    In a single-keypoint run a person who lacks that keypoint is ignored ground truth, and
    COCOeval matches a detection to it (and so ignores it) only when all its keypoints lie near
    that person's box. Missing keypoints written as (0, 0) would turn such a detection into a
    false positive; moving them to the centroid of the found ones keeps the breakdown about the
    keypoint being measured.
    """
    out = copy.deepcopy(res)
    for r in out:
        kp = np.asarray(r["keypoints"], dtype=np.float64).reshape(-1, 3)
        missing = (kp[:, 0] == 0) & (kp[:, 1] == 0) & (kp[:, 2] <= 0)
        if missing.any() and (~missing).any():
            kp[missing, :2] = kp[~missing, :2].mean(0)
            r["keypoints"] = kp.reshape(-1).tolist()
    return out


def evaluate_boxes(coco_gt, results: list[dict], image_ids: list[int] | None = None, verbose: bool = False) -> dict:
    """COCO box AP/AR of ``results`` (pycocotools, iouType "bbox"); crowd boxes are ignore regions.

    Returns ``{"AP", "AP50", "AP75", "APS", "APM", "APL", "AR1", "AR10", "AR100", "ARS", "ARM",
    "ARL"}`` (exactly ``COCOeval.stats``); ``"AR"`` is added as an alias of ``"AR100"``.
    Empty ``results`` give 0.0 everywhere.
    """
    coco = _as_coco(coco_gt)
    ids = _check_image_ids(coco, image_ids)
    res = _prepare_results(coco, results, "bbox", drop=("keypoints", "segmentation", "area", "id"))
    for i, r in enumerate(res):
        if len(r["bbox"]) != 4:
            raise ValueError(f"results[{i}]: bbox has {len(r['bbox'])} values, expected 4 (x, y, w, h)")
    if not res:
        stats = [0.0] * len(BOX_METRICS)
    else:
        stats = _run_cocoeval(coco, _load_results(coco, res, verbose), "bbox", ids, None, verbose).stats
    out = {m: float(v) for m, v in zip(BOX_METRICS, stats)}
    out["AR"] = out["AR100"]
    return out


# ----------------------------------------------------------------------------- results files


def load_results_file(results_json: str) -> list[dict]:
    """A COCO results JSON file as a list of dicts; ``FileNotFoundError`` for a missing file and
    ``ValueError`` naming the file for bad JSON or a top level that is not a list of objects."""
    path = os.fspath(results_json)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"results file not found: {path}")
    try:
        with open(path, "rb") as f:
            rows = json.load(f)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, bad encoding, absurd nesting
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a JSON list of result objects, got a {type(rows).__name__}")
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise ValueError(f"{path}: results[{i}] is a {type(r).__name__}, expected an object")
    return rows


def _is_finite_number(v) -> bool:
    try:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(float(v))
    except OverflowError:
        return False


def _gt_keypoint_set(coco, keypoint_set) -> KeypointSet:
    """The keypoint set of the ground truth's keypoint category: given, or found by its names."""
    if keypoint_set is not None:
        return get_keypoint_set(keypoint_set)
    cats = [c for c in coco.loadCats(coco.getCatIds()) if c.get("keypoints")]
    if not cats:
        return get_keypoint_set("coco17")
    names = list(cats[0]["keypoints"])
    for name in available_keypoint_sets():
        if list(get_keypoint_set(name).keypoints) == names:
            return get_keypoint_set(name)
    if len(names) == 17:  # COCO's count under other names: pycocotools' own sigmas apply
        return get_keypoint_set("coco17")
    raise ValueError(f"the ground truth's category {cats[0].get('name')!r} has {len(names)} keypoints that match no "
                     f"registered keypoint set; pass keypoint_set= (register one with kerapose.skeleton)")


def _check_result_rows(rows: list[dict], coco, kset: KeypointSet, source: str) -> None:
    k = kset.num_keypoints
    cats = set(coco.getCatIds())
    known = set(coco.getImgIds())
    unknown: list = []
    for i, r in enumerate(rows):
        where = f"{source}: results[{i}]"
        missing = [key for key in ("image_id", "category_id", "keypoints", "score") if key not in r]
        if missing:
            raise ValueError(f"{where}: missing {missing} (a COCO keypoint result has image_id, category_id, "
                             f"keypoints, score), got keys {sorted(r)}")
        if not isinstance(r["image_id"], int) or isinstance(r["image_id"], bool):
            raise ValueError(f"{where}: image_id must be an integer, got {r['image_id']!r}")
        if r["category_id"] not in cats:
            raise ValueError(f"{where}: category_id {r['category_id']!r} is not a category of the ground truth "
                             f"{sorted(cats)}")
        kp = r["keypoints"]
        if not isinstance(kp, list) or len(kp) != 3 * k:
            n = len(kp) if isinstance(kp, list) else type(kp).__name__
            hint = ""
            if isinstance(kp, list) and len(kp) % 3 == 0:
                sets = (get_keypoint_set(name) for name in available_keypoint_sets())
                others = [ks for ks in sets if 3 * ks.num_keypoints == len(kp)]
                if others:
                    hint = (f"; {len(kp) // 3} keypoints is the {others[0].name!r} set: convert rows with "
                            f"kerapose.skeleton.convert_keypoints(kp, {others[0].name!r}, {kset.name!r})")
            raise ValueError(f"{where}: keypoints has {n} values, expected {3 * k} ({k} keypoints x 3, "
                             f"keypoint set {kset.name!r}){hint}")
        if not all(_is_finite_number(v) for v in kp):
            bad = next(v for v in kp if not _is_finite_number(v))
            raise ValueError(f"{where}: keypoints must be finite numbers, got {bad!r}")
        if not _is_finite_number(r["score"]):
            raise ValueError(f"{where}: score must be a finite number, got {r['score']!r}")
        if r["image_id"] not in known:
            unknown.append(r["image_id"])
    if unknown:
        ids = sorted(set(unknown))
        raise ValueError(f"{source}: {len(unknown)} result(s) name {len(ids)} image id(s) that are not in the ground "
                         f"truth, e.g. {ids[:5]} (wrong split, or image ids from file names?)")


def evaluate_results_file(
    results_json: str,
    data_root: str,
    split: str,
    *,
    keypoint_set: str | KeypointSet | None = None,
    image_ids: list[int] | None = None,
    ann_file: str | None = None,
    verbose: bool = False,
) -> dict:
    """COCO keypoint AP/AR of any COCO keypoint results file against a dataset split.

    Args:
        results_json: a JSON list of ``{"image_id", "category_id", "keypoints": [x, y, v] * K,
            "score"}`` (extra fields such as ``bbox`` or kerapose's ``model_keypoints`` are
            ignored).
        data_root, split: the ground truth, ``DATA_ROOT/annotations/person_keypoints_SPLIT.json``
            as it is in the file (``ann_file`` names another file).
        keypoint_set: OKS sigmas; default: the registered set whose keypoint names are the
            ground-truth category's (COCO-17 for COCO).
        image_ids: images to score; ``None`` scores every ground-truth image.

    Returns :func:`evaluate_keypoints`' dict (exactly ``COCOeval.stats``). A missing file is a
    ``FileNotFoundError``; bad JSON, rows of the wrong length, non-finite values, unknown image
    or category ids are ``ValueError`` naming the file and the row.
    """
    from kerapose.data.coco import annotation_path, load_coco

    source = os.fspath(results_json)
    rows = load_results_file(source)
    coco = load_coco(ann_file or annotation_path(os.fspath(data_root), split))
    kset = _gt_keypoint_set(coco, keypoint_set)
    _check_result_rows(rows, coco, kset, source)
    return evaluate_keypoints(coco, rows, image_ids=image_ids, keypoint_set=kset, verbose=verbose)


# ----------------------------------------------------------------------------- OKS


def _sigmas(sigmas, k: int) -> np.ndarray:
    if sigmas is None:
        sigmas = "coco17"
    if isinstance(sigmas, (str, KeypointSet)):
        sigmas = get_keypoint_set(sigmas).sigmas_array
    s = np.asarray(sigmas, dtype=np.float64).reshape(-1)
    if s.shape != (k,):
        raise ValueError(f"sigmas: expected {k} values (one per keypoint), got {s.shape[0]}")
    return s


def _check_kp(name: str, kp) -> np.ndarray:
    kp = np.asarray(kp, dtype=np.float64)
    if kp.ndim != 3 or kp.shape[-1] != 3:
        raise ValueError(f"{name}: expected [N, K, 3], got shape {kp.shape}")
    return kp


def oks(
    gt_keypoints: np.ndarray,
    gt_areas: np.ndarray,
    dt_keypoints: np.ndarray,
    sigmas=None,
    gt_boxes: np.ndarray | None = None,
) -> np.ndarray:
    """COCO object keypoint similarity ``[D, G]`` between detections and ground truths.

    ``OKS = mean over labelled GT keypoints of exp(-d^2 / (2 * area * (2 sigma)^2))``, with
    ``area`` the ground truth's area (segmentation area in COCO), as ``COCOeval.computeOks``.

    Args:
        gt_keypoints: ``[G, K, 3]`` (x, y, v); keypoints with v > 0 count.
        gt_areas: ``[G]``.
        dt_keypoints: ``[D, K, 3]`` (x, y, score); the score is not used.
        sigmas: ``[K]`` sigmas, a keypoint set or its name (default COCO-17).
        gt_boxes: optional ``[G, 4]`` x1, y1, x2, y2. For a ground truth with no labelled
            keypoint COCOeval measures each keypoint's distance to its box grown by one box size
            on every side; with boxes given that is done here too, otherwise such a ground
            truth gets OKS 0.
    """
    g = _check_kp("gt_keypoints", gt_keypoints)
    d = _check_kp("dt_keypoints", dt_keypoints)
    if g.shape[1] != d.shape[1]:
        raise ValueError(f"dt_keypoints has {d.shape[1]} keypoints, gt_keypoints {g.shape[1]}")
    areas = np.asarray(gt_areas, dtype=np.float64).reshape(-1)
    if areas.shape != (g.shape[0],):
        raise ValueError(f"gt_areas: expected shape ({g.shape[0]},), got {areas.shape}")
    k = g.shape[1]
    var = (2.0 * _sigmas(sigmas, k)) ** 2
    vis = g[:, :, 2] > 0  # [G, K]
    dx = d[:, None, :, 0] - g[None, :, :, 0]  # [D, G, K]
    dy = d[:, None, :, 1] - g[None, :, :, 1]
    if gt_boxes is not None:
        b = np.asarray(gt_boxes, dtype=np.float64)
        if b.shape != (g.shape[0], 4):
            raise ValueError(f"gt_boxes: expected shape ({g.shape[0]}, 4), got {b.shape}")
        w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
        x0, x1 = (b[:, 0] - w)[None, :, None], (b[:, 0] + 2 * w)[None, :, None]
        y0, y1 = (b[:, 1] - h)[None, :, None], (b[:, 1] + 2 * h)[None, :, None]
        xd, yd = d[:, None, :, 0], d[:, None, :, 1]
        bdx = np.maximum(0, x0 - xd) + np.maximum(0, xd - x1)
        bdy = np.maximum(0, y0 - yd) + np.maximum(0, yd - y1)
        none = ~vis.any(axis=1)[None, :, None]
        dx, dy = np.where(none, bdx, dx), np.where(none, bdy, dy)
    e = (dx**2 + dy**2) / var / (areas[None, :, None] + np.spacing(1)) / 2.0
    sim = np.exp(-e)
    if gt_boxes is None:
        weight = np.broadcast_to(vis[None].astype(np.float64), sim.shape)
    else:
        weight = np.where(vis.any(axis=1, keepdims=True), vis, True)[None].astype(np.float64)
    count = weight.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (sim * weight).sum(axis=-1) / count
    return np.where(count > 0, out, 0.0)


def oks_nms(
    keypoints: np.ndarray,
    scores: np.ndarray,
    areas: np.ndarray | None,
    sigmas=None,
    threshold: float = 0.9,
    *,
    score_threshold: float | None = None,
) -> np.ndarray:
    """Greedy OKS non-maximum suppression of poses; returns the kept indices, best score first.

    The highest-scoring pose is kept and every remaining pose whose OKS with it exceeds
    ``threshold`` is dropped, then repeat. The OKS of a pair uses the mean of the two areas
    (so it is symmetric) and the keypoints whose scores both exceed ``score_threshold`` (all
    keypoints when ``None``), as in the HRNet / HigherHRNet ``oks_nms``.

    Args:
        keypoints: ``[N, K, 3]`` (x, y, score) pixels.
        scores: ``[N]``.
        areas: ``[N]`` person areas; ``None`` uses each pose's keypoint-extent box area.
        sigmas: ``[K]``, a keypoint set or its name (default COCO-17).
        threshold: OKS above which a lower-scoring pose is a duplicate.
    """
    kp = _check_kp("keypoints", keypoints)
    n, k = kp.shape[:2]
    sc = _check_scores(scores, n)
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold: expected a value in (0, 1], got {threshold}")
    if areas is None:
        ext = kp[:, :, :2].max(axis=1) - kp[:, :, :2].min(axis=1)
        ar = ext[:, 0] * ext[:, 1]
    else:
        ar = np.asarray(areas, dtype=np.float64).reshape(-1)
        if ar.shape != (n,):
            raise ValueError(f"areas: expected shape ({n},), got {ar.shape}")
    if n == 0:
        return np.zeros((0,), np.int64)
    var = (2.0 * _sigmas(sigmas, k)) ** 2
    d2 = ((kp[:, None, :, :2] - kp[None, :, :, :2]) ** 2).sum(-1)  # [N, N, K]
    mean_area = (ar[:, None] + ar[None, :]) / 2.0
    e = d2 / var / (mean_area[:, :, None] + np.spacing(1)) / 2.0
    if score_threshold is None:
        use = np.ones_like(e, dtype=bool)
    else:
        v = kp[:, :, 2] > score_threshold
        use = v[:, None, :] & v[None, :, :]
    count = use.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        sim = np.where(count > 0, (np.exp(-e) * use).sum(-1) / count, 0.0)
    sim = np.nan_to_num(sim, nan=0.0)  # poses with NaN keypoints suppress nothing
    order = np.argsort(-sc, kind="stable")
    alive = np.ones(n, bool)
    keep = []
    for i in order:
        if not alive[i]:
            continue
        keep.append(i)
        alive &= ~(sim[i] > threshold)
    return np.asarray(keep, dtype=np.int64)
