"""List what is broken in a COCO-layout keypoint dataset, without training on it.

:func:`check_dataset` loads a split as training does (:class:`kerapose.data.coco.CocoKeypoints`,
which skips or repairs broken annotations and counts them by kind), checks that every image
file is there (and, with ``decode_images``, that it decodes to the size its entry gives), and
returns a :class:`DatasetReport` whose :meth:`~DatasetReport.summary` is the printable text
and :meth:`~DatasetReport.as_dict` the JSON form. The kinds are
:data:`kerapose.data.coco.ISSUE_KINDS`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from kerapose.data.coco import AnnotationIssues, CocoKeypoints
from kerapose.skeleton import COCO17, KeypointSet

__all__ = ["DatasetReport", "check_dataset"]


@dataclass
class DatasetReport:
    """What :func:`check_dataset` found in one split."""

    ann_file: str
    image_dir: str
    keypoint_set: str
    images: int  # image entries in the file
    annotations: int  # annotations in the file (all categories)
    usable_images: int  # valid entries whose file is there (and decodes, if checked)
    usable_annotations: int  # person annotations kept (repaired ones included)
    labelled_people: int  # kept non-crowd person annotations with at least one labelled keypoint
    decoded_images: bool
    issues: AnnotationIssues

    @property
    def ok(self) -> bool:
        """True when nothing was skipped or repaired."""
        return not self.issues

    def as_dict(self) -> dict:
        return {
            "ann_file": self.ann_file, "image_dir": self.image_dir, "keypoint_set": self.keypoint_set,
            "images": self.images, "annotations": self.annotations, "usable_images": self.usable_images,
            "usable_annotations": self.usable_annotations, "labelled_people": self.labelled_people,
            "decoded_images": self.decoded_images, "ok": self.ok,
            "skipped_images": self.issues.skipped_images,
            "skipped_annotations": self.issues.skipped_annotations,
            "repairs": self.issues.repairs,
            "issues": self.issues.as_list(),
        }

    def summary(self) -> str:
        """Printable report: totals, then one line per kind with its count and an example."""
        files = "files decoded" if self.decoded_images else "files present, not decoded"
        lines = [
            f"{self.ann_file} ({self.keypoint_set}), images in {self.image_dir}",
            f"  {self.images} images, {self.annotations} annotations in the file",
            f"  usable: {self.usable_images} images ({files}), {self.usable_annotations} person annotations, "
            f"{self.labelled_people} people with keypoints",
        ]
        if self.ok:
            lines.append("  no problems found")
            return "\n".join(lines)
        lines.append(f"  {self.issues.skipped_images} image(s) skipped, {self.issues.skipped_annotations} "
                     f"annotation(s) skipped, {self.issues.repairs} repair(s):")
        for r in self.issues.as_list():
            lines.append(f"  {r['count']:>6} {r['unit']}(s) {r['action']:<8} {r['kind']}: {r['meaning']}")
            lines.append(f"         e.g. {r['example']}")
        return "\n".join(lines)


def check_dataset(
    root: str,
    split: str,
    keypoint_set: str | KeypointSet = COCO17,
    *,
    ann_file: str | None = None,
    category_id: int | None = None,
    decode_images: bool = False,
) -> DatasetReport:
    """Check one split of a COCO-layout dataset (``ROOT/annotations/person_keypoints_SPLIT.json``
    and ``ROOT/SPLIT/``); see the module docstring.

    A missing annotation file is a ``FileNotFoundError`` and a file that is not COCO JSON a
    ``ValueError`` (nothing to report on); everything else is counted in the report.
    ``decode_images`` decodes every image (slow on a large split) instead of only checking
    that its file exists.
    """
    ds = CocoKeypoints(root, split, keypoint_set=keypoint_set, category_id=category_id, ann_file=ann_file)
    issues = AnnotationIssues(source=ds.annotation_issues.source)
    issues.merge(ds.annotation_issues)
    usable = 0
    for image_id in ds.image_ids:
        info = ds.coco.imgs[image_id]
        path = os.path.join(ds.image_dir, info["file_name"])
        where = f"{path} (image {image_id})"
        if not os.path.isfile(path):
            issues.add("image file missing", where)
            continue
        if decode_images:
            from kerapose.data.pipeline import read_image  # the pipeline's own notion of readable

            try:
                hw = read_image(path).shape[:2]
            except (ValueError, OSError) as e:
                issues.add("unreadable image", f"{where}: {e}")
                continue
            if hw != (int(info["height"]), int(info["width"])):
                issues.add("image size mismatch", f"{where}: file {hw[0]}x{hw[1]}, entry "
                                                  f"{info['height']}x{info['width']} (height x width)")
                continue
        usable += 1
    people = ds.coco.loadAnns(ds.coco.getAnnIds(catIds=[ds.category_id], iscrowd=None))
    labelled = sum(1 for a in people if not a.get("iscrowd") and a.get("num_keypoints", 0) > 0)
    return DatasetReport(
        ann_file=ds.ann_file,
        image_dir=ds.image_dir,
        keypoint_set=ds.keypoint_set.name,
        images=len(ds.image_ids) + ds.annotation_issues.skipped_images,
        annotations=len(ds.coco.anns) + ds.annotation_issues.skipped_annotations,
        usable_images=usable,
        usable_annotations=len(people),
        labelled_people=labelled,
        decoded_images=decode_images,
        issues=issues,
    )
