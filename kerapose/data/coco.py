"""COCO-format keypoint datasets through pycocotools.

A dataset root has the COCO layout::

    ROOT/annotations/person_keypoints_SPLIT.json
    ROOT/SPLIT/<file_name of each image>

:class:`CocoKeypoints` turns it into per-image :class:`ImageRecord` objects holding the
kerapose data contract (keypoints ``[N, K, 3]`` in pixels, boxes ``[N, 4]`` as x1, y1, x2, y2).

Broken annotations never reach training: while loading, every person annotation is checked
(:func:`clean_annotations`); one that cannot be used is skipped, one whose fix is unambiguous
(joints clipped to the image, ``num_keypoints`` recounted, a degenerate polygon dropped) is
repaired, and each case is counted by kind with one example in
``CocoKeypoints.annotation_issues`` (:class:`AnnotationIssues`, :data:`ISSUE_KINDS`).
"""

from __future__ import annotations

import contextlib
import copy
import io
import itertools
import json
import math
import os
from dataclasses import dataclass, field

import numpy as np

from kerapose.skeleton import COCO17, KeypointSet, get_keypoint_set

__all__ = [
    "ImageRecord",
    "CocoKeypoints",
    "AnnotationIssues",
    "ISSUE_KINDS",
    "annotation_path",
    "load_coco",
    "read_annotation_json",
    "clean_annotations",
]


@dataclass
class ImageRecord:
    """One image and its person annotations (crowd regions included, flagged by ``iscrowd``)."""

    image_id: int
    file_name: str
    path: str
    height: int
    width: int
    keypoints: np.ndarray  # [N, K, 3] float32 (x, y, v)
    boxes: np.ndarray  # [N, 4] float32 (x1, y1, x2, y2)
    iscrowd: np.ndarray  # [N] bool
    areas: np.ndarray  # [N] float32
    ann_ids: np.ndarray  # [N] int64
    segmentations: list = field(default_factory=list)  # raw COCO polygons / RLE per annotation

    @property
    def num_keypoints_labelled(self) -> np.ndarray:
        return (self.keypoints[..., 2] > 0).sum(-1)


def annotation_path(root: str, split: str) -> str:
    return os.path.join(root, "annotations", f"person_keypoints_{split}.json")


def load_coco(ann_file: str):
    """Load an annotation file with pycocotools, quietly, with a clear error if it is absent."""
    from pycocotools.coco import COCO

    if not os.path.isfile(ann_file):
        raise FileNotFoundError(f"COCO annotation file not found: {ann_file}")
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            return COCO(ann_file)
        except (ValueError, RecursionError) as e:  # JSONDecodeError, bad encoding, absurd nesting
            raise ValueError(f"{ann_file}: not valid JSON ({e})") from None
        except (KeyError, TypeError, AttributeError) as e:  # pycocotools' index needs ids everywhere
            raise ValueError(f"{ann_file}: not a valid COCO annotation file (pycocotools: {type(e).__name__} "
                             f"{e}); kerapose.data.check.check_dataset lists what is wrong") from None


def read_annotation_json(ann_file: str) -> dict:
    """The annotation file as a dict, with clear errors for a missing file, bad JSON or a
    top level that is not COCO's (an object with an ``images`` list)."""
    if not os.path.isfile(ann_file):
        raise FileNotFoundError(f"COCO annotation file not found: {ann_file}")
    try:
        with open(ann_file, "rb") as f:
            data = json.load(f)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, bad encoding, absurd nesting
        raise ValueError(f"{ann_file}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{ann_file}: expected a JSON object with 'images', 'annotations' and "
                         f"'categories', got a {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key, []), list):
            raise ValueError(f"{ann_file}: '{key}' must be a list, got {type(data[key]).__name__}")
    if "images" not in data:
        raise ValueError(f"{ann_file}: no 'images' list (keys: {sorted(data)})")
    return data


# ----------------------------------------------------------------------------- issues

# kind -> (unit, action, what it means). Kinds are stable names: tests, reports and the
# `kerapose data check` command use them.
ISSUE_KINDS: dict[str, tuple[str, str, str]] = {
    "invalid image entry": ("image", "skipped", "image entry without an integer id, a file_name, or a positive "
                                                "integer width and height, or with a duplicate id"),
    "invalid annotation": ("annotation", "skipped", "not an object with integer 'id', 'image_id' and 'category_id'"),
    "duplicate annotation id": ("annotation", "skipped", "an earlier annotation has the same id"),
    "image not found": ("annotation", "skipped", "image_id names no (valid) image of the file"),
    "invalid bbox": ("annotation", "skipped", "bbox missing, not 4 numbers, NaN/inf, or negative width/height"),
    "bbox outside image": ("annotation", "skipped", "the box lies entirely outside its image"),
    "keypoints wrong length": ("annotation", "skipped", "keypoints list is not 3 values per keypoint of the set"),
    "invalid keypoints": ("annotation", "skipped", "keypoints hold non-numbers, NaN/inf, or a visibility "
                                                   "other than 0, 1, 2"),
    "invalid iscrowd": ("annotation", "skipped", "iscrowd is not 0 or 1"),
    "missing keypoints": ("annotation", "repaired", "no keypoints list: written as all unlabelled"),
    "num_keypoints wrong": ("annotation", "repaired", "num_keypoints missing or not the count of labelled "
                                                      "keypoints: recounted"),
    "keypoints outside image": ("annotation", "repaired", "labelled keypoints outside the image: clipped to it"),
    "bbox partly outside image": ("annotation", "repaired", "box clipped to the image"),
    "degenerate polygon": ("annotation", "repaired", "polygon with fewer than 3 points, an odd number of values "
                                                     "or non-finite values: dropped"),
    "invalid segmentation": ("annotation", "repaired", "segmentation neither polygons nor an RLE of the image's "
                                                       "size: dropped (the box is the region)"),
    "invalid area": ("annotation", "repaired", "area missing, not positive or not finite: set to the box area"),
    # Found by kerapose.data.check.check_dataset on disk; training skips these as it loads them.
    "image file missing": ("image", "skipped", "no file at ROOT/SPLIT/file_name"),
    "unreadable image": ("image", "skipped", "the file does not decode as an image"),
    "image size mismatch": ("image", "skipped", "the decoded size differs from the entry's height and width"),
}


@dataclass
class AnnotationIssues:
    """Broken annotations of one file, by kind (:data:`ISSUE_KINDS`): count and first example."""

    source: str = ""
    counts: dict = field(default_factory=dict)
    examples: dict = field(default_factory=dict)
    reported: bool = False  # set once the training pipeline has printed the report

    def add(self, kind: str, example: str) -> None:
        if kind not in ISSUE_KINDS:
            raise ValueError(f"kind: expected one of {sorted(ISSUE_KINDS)}, got {kind!r}")
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self.examples.setdefault(kind, example)

    def merge(self, other: "AnnotationIssues") -> None:
        for kind, n in other.counts.items():
            self.counts[kind] = self.counts.get(kind, 0) + n
            self.examples.setdefault(kind, other.examples[kind])

    def _sum(self, unit: str, action: str) -> int:
        return sum(n for k, n in self.counts.items() if ISSUE_KINDS[k][:2] == (unit, action))

    @property
    def skipped_annotations(self) -> int:
        return self._sum("annotation", "skipped")

    @property
    def repairs(self) -> int:
        """Fixes made (an annotation fixed in two ways counts twice)."""
        return self._sum("annotation", "repaired")

    @property
    def skipped_images(self) -> int:
        return self._sum("image", "skipped")

    def total(self) -> int:
        return sum(self.counts.values())

    def __bool__(self) -> bool:
        return bool(self.counts)

    def as_list(self) -> list[dict]:
        """``[{"kind", "unit", "action", "count", "example", "meaning"}]``, skipped kinds first."""
        rows = []
        for kind in sorted(self.counts, key=lambda k: (ISSUE_KINDS[k][1] != "skipped", k)):
            unit, action, meaning = ISSUE_KINDS[kind]
            rows.append({"kind": kind, "unit": unit, "action": action, "count": self.counts[kind],
                         "example": self.examples[kind], "meaning": meaning})
        return rows

    def report(self) -> str:
        """One line per kind: ``N annotations skipped: kind (e.g. file: annotation 7 ...)``."""
        if not self.counts:
            return f"{self.source}: no broken annotations" if self.source else "no broken annotations"
        lines = []
        for r in self.as_list():
            unit = r["unit"] + ("s" if r["count"] != 1 else "")
            lines.append(f"{r['count']} {unit} {r['action']}: {r['kind']} (e.g. {r['example']})")
        return "\n".join(lines)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _finite(v) -> bool:
    """A JSON number that is a finite float64 (JSON integers can be arbitrarily large)."""
    try:
        return _is_number(v) and math.isfinite(v)
    except OverflowError:
        return False


def _finite_numbers(values) -> np.ndarray | None:
    """A flat list of JSON numbers -> float64 array, or None if any is not a finite number."""
    try:
        arr = np.asarray(values)
    except (ValueError, OverflowError):  # ragged nesting
        return None
    # strings, nulls, nested lists and integers beyond int64 give other dtypes or shapes
    if arr.ndim != 1 or arr.dtype.kind not in "iuf":
        return None
    arr = arr.astype(np.float64)
    return arr if np.isfinite(arr).all() else None


def _check_images(images: list, issues: AnnotationIssues, where: str) -> tuple[list, dict]:
    keep, by_id = [], {}
    for i, img in enumerate(images):
        problem = None
        if not isinstance(img, dict) or not _is_int(img.get("id")):
            problem = f"images[{i}]: no integer id"
        elif img["id"] in by_id:
            problem = f"image {img['id']}: duplicate image id"
        elif not isinstance(img.get("file_name"), str) or not img["file_name"]:
            problem = f"image {img['id']}: no file_name"
        else:
            h, w = img.get("height"), img.get("width")
            if not (_finite(h) and _finite(w) and h == int(h) and w == int(w) and h >= 1 and w >= 1):
                problem = f"image {img['id']}: height {h!r}, width {w!r}"
        if problem is not None:
            issues.add("invalid image entry", f"{where}: {problem}")
            continue
        keep.append(img)
        by_id[img["id"]] = img
    return keep, by_id


def _check_segmentation(seg, ann_where: str, height: int, width: int, issues: AnnotationIssues):
    """The annotation's segmentation, repaired (bad polygons dropped, a bad RLE replaced by [])."""
    if seg is None:
        return seg
    if isinstance(seg, list):
        if all(isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 for p in seg):
            try:  # fast path, one array for all polygons (typical COCO annotations)
                values = np.fromiter(itertools.chain.from_iterable(seg), np.float64)
                if np.isfinite(values).all():
                    return seg
            except (TypeError, ValueError, OverflowError):
                pass
        good, bad = [], 0
        for poly in seg:
            if (isinstance(poly, list) and len(poly) >= 6 and len(poly) % 2 == 0
                    and _finite_numbers(poly) is not None):
                good.append(poly)
            else:
                bad += 1
        if bad:
            issues.add("degenerate polygon", f"{ann_where}: {bad} of {len(seg)} polygon(s) dropped")
        return good
    if isinstance(seg, dict):
        counts, size = seg.get("counts"), seg.get("size")
        ok = isinstance(size, list) and size == [height, width]
        if ok and isinstance(counts, list):
            runs = _finite_numbers(counts)
            ok = runs is not None and (runs >= 0).all() and (runs == np.round(runs)).all() \
                and runs.sum() == height * width
        elif ok:
            ok = isinstance(counts, (str, bytes))
        if ok:
            return seg
        issues.add("invalid segmentation", f"{ann_where}: RLE size {size!r} with {type(counts).__name__} counts, "
                                           f"the image's [height, width] is [{height}, {width}]")
        return []
    issues.add("invalid segmentation", f"{ann_where}: segmentation is a {type(seg).__name__}")
    return []


def _check_annotation(ann: dict, img: dict, k: int, issues: AnnotationIssues, where: str) -> bool:
    """Check one person annotation of image ``img``; repair it in place. False: skip it."""
    ann_where = f"{where}: annotation {ann['id']} (image {ann['image_id']})"
    height, width = int(img["height"]), int(img["width"])
    bbox = ann.get("bbox")
    box = _finite_numbers(bbox) if isinstance(bbox, list) and len(bbox) == 4 else None
    if box is None or box[2] < 0 or box[3] < 0:
        issues.add("invalid bbox", f"{ann_where}: bbox {bbox!r}")
        return False
    if ann.get("iscrowd", 0) not in (0, 1):  # True/False compare equal to 1/0
        issues.add("invalid iscrowd", f"{ann_where}: iscrowd {ann['iscrowd']!r}")
        return False
    raw = ann.get("keypoints")
    missing = raw is None or raw == []
    if missing:
        issues.add("missing keypoints", f"{ann_where}: keypoints {raw!r}")
        kp = np.zeros((k, 3))
    elif not isinstance(raw, list) or len(raw) != 3 * k:
        n = len(raw) if isinstance(raw, list) else type(raw).__name__
        issues.add("keypoints wrong length", f"{ann_where}: {n} keypoint values, expected {3 * k}")
        return False
    else:
        flat = _finite_numbers(raw)
        vis = flat[2::3] if flat is not None else None
        if vis is None or not ((vis == 0) | (vis == 1) | (vis == 2)).all():
            bad = next((v for v in raw if not _finite(v)), None)
            shown = f"value {bad!r}" if bad is not None else f"visibilities {sorted(set(raw[2::3]))}"
            issues.add("invalid keypoints", f"{ann_where}: {shown}")
            return False
        kp = flat.reshape(k, 3)
    x1, y1 = min(max(box[0], 0.0), width), min(max(box[1], 0.0), height)
    x2, y2 = min(max(box[0] + box[2], 0.0), width), min(max(box[1] + box[3], 0.0), height)
    if (x2 <= x1 or y2 <= y1) and box[2] > 0 and box[3] > 0:
        issues.add("bbox outside image", f"{ann_where}: bbox {bbox} in a {width}x{height} image")
        return False
    if (x1, y1, x2, y2) != (box[0], box[1], box[0] + box[2], box[1] + box[3]):
        issues.add("bbox partly outside image", f"{ann_where}: bbox {bbox} in a {width}x{height} image")
        ann["bbox"] = [x1, y1, x2 - x1, y2 - y1]
    if missing:
        ann["keypoints"] = kp.reshape(-1).tolist()
        ann["num_keypoints"] = 0
    labelled = kp[:, 2] > 0
    outside = labelled & ((kp[:, 0] < 0) | (kp[:, 0] > width) | (kp[:, 1] < 0) | (kp[:, 1] > height))
    if outside.any():
        j = int(np.flatnonzero(outside)[0])
        issues.add("keypoints outside image", f"{ann_where}: {int(outside.sum())} keypoint(s), e.g. #{j} at "
                                              f"({kp[j, 0]:g}, {kp[j, 1]:g}) in a {width}x{height} image")
        kp[:, 0] = np.where(labelled, np.clip(kp[:, 0], 0, width), kp[:, 0])
        kp[:, 1] = np.where(labelled, np.clip(kp[:, 1], 0, height), kp[:, 1])
        ann["keypoints"] = [v if i % 3 == 2 else float(kp.flat[i]) for i, v in enumerate(ann["keypoints"])]
    n = int(labelled.sum())
    if ann.get("num_keypoints") != n:
        issues.add("num_keypoints wrong", f"{ann_where}: num_keypoints {ann.get('num_keypoints')!r}, {n} labelled")
        ann["num_keypoints"] = n
    area = ann.get("area")
    box_area = float(ann["bbox"][2]) * float(ann["bbox"][3])
    if not (_finite(area) and area >= 0 and (area > 0 or box_area == 0)):
        issues.add("invalid area", f"{ann_where}: area {area!r}")
        ann["area"] = box_area
    if "segmentation" in ann:
        ann["segmentation"] = _check_segmentation(ann["segmentation"], ann_where, height, width, issues)
    return True


def clean_annotations(data: dict, keypoint_set: str | KeypointSet = COCO17, category_id: int | None = None,
                      where: str = "") -> tuple[dict, AnnotationIssues]:
    """Check a loaded COCO keypoint dataset (see :func:`read_annotation_json`).

    Returns ``(cleaned, issues)``: ``cleaned`` has the usable images and annotations only, the
    person annotations (``category_id``, default: the first category) repaired in place where
    the fix is unambiguous; ``issues`` counts every skip and repair by kind (:data:`ISSUE_KINDS`)
    with an example naming ``where`` (the file) and the annotation id. Annotations of other
    categories are kept as they are (only their ids are checked, as pycocotools needs them).
    """
    kset = get_keypoint_set(keypoint_set)
    issues = AnnotationIssues(source=where)
    images, by_id = _check_images(data.get("images", []), issues, where)
    cats = [c for c in data.get("categories", []) if isinstance(c, dict) and _is_int(c.get("id"))]
    person = category_id if category_id is not None else (cats[0]["id"] if cats else None)
    keep, seen = [], set()
    for i, ann in enumerate(data.get("annotations", [])):
        if not (isinstance(ann, dict) and _is_int(ann.get("id")) and _is_int(ann.get("image_id"))
                and _is_int(ann.get("category_id"))):
            shown = {k: ann.get(k) for k in ("id", "image_id", "category_id")} if isinstance(ann, dict) else ann
            issues.add("invalid annotation", f"{where}: annotations[{i}]: {str(shown)[:120]}")
            continue
        if ann["id"] in seen:
            issues.add("duplicate annotation id", f"{where}: annotation {ann['id']} (annotations[{i}])")
            continue
        seen.add(ann["id"])
        img = by_id.get(ann["image_id"])
        if img is None:
            issues.add("image not found", f"{where}: annotation {ann['id']}: image_id {ann['image_id']}")
            continue
        if ann["category_id"] == person and not _check_annotation(ann, img, kset.num_keypoints, issues, where):
            continue
        keep.append(ann)
    cleaned = dict(data)
    cleaned["images"], cleaned["annotations"], cleaned["categories"] = images, keep, cats
    return cleaned, issues


def _coco_from_dict(data: dict):
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


class CocoKeypoints:
    """Person keypoint annotations of one split of a COCO-layout dataset.

    Broken person annotations are skipped or repaired while loading and counted in
    :attr:`annotation_issues`; ``coco`` (pycocotools) holds the cleaned annotations, so
    scoring against this object uses them too (score against the file's path for the raw ones).

    Args:
        root: dataset root (see module docstring).
        split: split name, e.g. ``"val2017"``.
        keypoint_set: keypoint set of the annotations (COCO-17 by default).
        category_id: the person category; by default the first category of the file.
        ann_file: explicit annotation path (overrides root/split for the JSON).
    """

    def __init__(
        self,
        root: str,
        split: str,
        keypoint_set: str | KeypointSet = COCO17,
        category_id: int | None = None,
        ann_file: str | None = None,
    ) -> None:
        self.root = root
        self.split = split
        self.ann_file = ann_file or annotation_path(root, split)
        self.image_dir = os.path.join(root, split)
        self.keypoint_set = get_keypoint_set(keypoint_set)
        raw = read_annotation_json(self.ann_file)
        cats = [c for c in raw.get("categories", []) if isinstance(c, dict) and _is_int(c.get("id"))]
        if not cats:
            raise ValueError(f"{self.ann_file}: no categories")
        self.category_id = category_id if category_id is not None else cats[0]["id"]
        cat = next((c for c in cats if c["id"] == self.category_id), None)
        if cat is None:
            raise ValueError(f"category_id: {self.category_id} is not a category of {self.ann_file} "
                             f"(categories: {[c['id'] for c in cats]})")
        names = cat.get("keypoints")
        k = self.keypoint_set.num_keypoints
        if names is not None and len(names) != k:
            raise ValueError(
                f"{self.ann_file}: category {self.category_id} has {len(names)} keypoints, "
                f"keypoint set {self.keypoint_set.name!r} expects {k}"
            )
        cleaned, self.annotation_issues = clean_annotations(raw, self.keypoint_set, self.category_id,
                                                            where=os.path.basename(self.ann_file))
        self.coco = _coco_from_dict(cleaned)
        self.image_ids = sorted(self.coco.getImgIds())

    @property
    def skipped_annotations(self) -> int:
        """Person annotations left out while loading (see :attr:`annotation_issues`)."""
        return self.annotation_issues.skipped_annotations

    def restrict(self, image_ids) -> "CocoKeypoints":
        """A view of this split holding only ``image_ids`` (in that order), e.g. a recipe's
        ``data.image_ids``; ``None`` keeps every image. An id that is not in the split is a
        ``ValueError`` naming it. ``self`` is left as it was: loaders are shared (test fixtures,
        a trainer's train and val sets), and narrowing one in place narrowed every user of it."""
        if image_ids is None:
            return self
        ids = [int(i) for i in image_ids]
        missing = sorted(set(ids) - set(self.image_ids))
        if missing:
            raise ValueError(f"data.image_ids: {missing[:5]} not in split {self.split!r} ({self.ann_file})")
        view = copy.copy(self)  # shares the read-only COCO index; only the id list differs
        view.image_ids = ids
        return view

    def __len__(self) -> int:
        return len(self.image_ids)

    def __iter__(self):
        for image_id in self.image_ids:
            yield self.record(image_id)

    def record(self, image_id: int) -> ImageRecord:
        """The :class:`ImageRecord` of one image (annotations already checked while loading)."""
        info = self.coco.loadImgs([image_id])[0]
        ann_ids = self.coco.getAnnIds(imgIds=[image_id], catIds=[self.category_id], iscrowd=None)
        k = self.keypoint_set.num_keypoints
        kps, boxes, crowd, areas, ids, segs = [], [], [], [], [], []
        for ann in self.coco.loadAnns(ann_ids):
            x, y, w, h = (float(v) for v in ann["bbox"])
            kps.append(np.asarray(ann["keypoints"], dtype=np.float32).reshape(k, 3))
            boxes.append((x, y, x + w, y + h))
            crowd.append(bool(ann.get("iscrowd", 0)))
            areas.append(float(ann.get("area", w * h)))
            ids.append(int(ann["id"]))
            segs.append(ann.get("segmentation"))
        return ImageRecord(
            image_id=int(image_id),
            file_name=info["file_name"],
            path=os.path.join(self.image_dir, info["file_name"]),
            height=int(info["height"]),
            width=int(info["width"]),
            keypoints=np.asarray(kps, np.float32).reshape(-1, k, 3),
            boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
            iscrowd=np.asarray(crowd, bool),
            areas=np.asarray(areas, np.float32),
            ann_ids=np.asarray(ids, np.int64),
            segmentations=segs,
        )
