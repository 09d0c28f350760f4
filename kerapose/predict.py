"""`kerapose predict`: poses for images, folders and videos, with any kerapose model format.

:class:`PosePredictor` hides where the model came from (a built-in name, a ``.keras`` file, an
end-to-end SavedModel, ``.tflite`` or ``.onnx`` export): calling it on an RGB uint8 image gives
``keypoints [N, K, 3]``, ``scores [N]`` and ``boxes [N, 4]`` in that image's pixels.
:func:`predict_paths` runs it over inputs and writes annotated images / videos and a COCO-style
``predictions.json``; :func:`add_predict_arguments` / :func:`predict_main` are the CLI.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from kerapose.skeleton import KeypointSet

__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_PIXELS",
    "VIDEO_SUFFIXES",
    "PosePredictor",
    "PredictSummary",
    "add_predict_arguments",
    "collect_inputs",
    "predict_main",
    "predict_paths",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv")
MAX_PIXELS = 50_000_000  # larger images are downscaled first: bounded memory for decode + drawing
_E2E_OUTPUTS = ("keypoints", "scores", "boxes", "num_poses")
_WARNED: set[str] = set()  # built-in names already warned about (random weights), once per process


def _keypoint_set_for(k: int, path: str | None = None) -> str:
    """The keypoint set of an export: its metadata's (:mod:`kerapose.export.metadata`), checked
    against the ``k`` keypoints its graph returns; for an export without metadata (written before
    kerapose 0.2) the registered set with ``k`` keypoints, COCO-17 first."""
    from kerapose.export.metadata import read_metadata, require_end_to_end
    from kerapose.skeleton import available_keypoint_sets, get_keypoint_set

    meta = read_metadata(path) if path is not None else None
    require_end_to_end(meta, path)
    if meta is not None and meta.get("keypoint_set"):
        name = meta["keypoint_set"]
        if get_keypoint_set(name).num_keypoints != k:
            raise ValueError(f"{path}: its metadata names keypoint set {name!r} "
                             f"({get_keypoint_set(name).num_keypoints} keypoints) but it returns {k}")
        return name
    names = sorted(available_keypoint_sets(), key=lambda n: n != "coco17")
    for name in names:
        if get_keypoint_set(name).num_keypoints == k:
            return name
    raise ValueError(f"no registered keypoint set has {k} keypoints; register one (kerapose.skeleton) to draw it")


def _check_e2e_outputs(names, source: str) -> None:
    missing = [n for n in _E2E_OUTPUTS if n not in set(names)]
    if missing:
        raise ValueError(f"{source} is not an end-to-end export (outputs {sorted(names)}, missing "
                         f"{', '.join(missing)}): predict needs an end-to-end export that takes a uint8 image "
                         f"and returns people (kerapose export --model MODEL --format FORMAT, without --raw)")


def _unpad(out: dict) -> dict:
    """Batch-1 end-to-end outputs -> the first ``num_poses`` people."""
    n = int(np.asarray(out["num_poses"]).reshape(-1)[0])
    return {k: np.asarray(out[k])[0, :n].astype(np.float32) for k in ("keypoints", "scores", "boxes")}


class PosePredictor:
    """RGB uint8 image -> people, whatever the model format.

    Build it with :meth:`load`; ``predictor(image)`` returns ``{"keypoints": [N, K, 3] (x, y,
    score), "scores": [N], "boxes": [N, 4] (x1, y1, x2, y2)}`` in the image's pixels, people
    scoring below ``score_threshold`` removed.
    """

    def __init__(self, run: Callable[[np.ndarray], dict], keypoint_set: str, source: str, kind: str,
                 score_threshold: float | None = None):
        self._run = run
        self.keypoint_set = keypoint_set
        self.source = source
        self.kind = kind
        self.score_threshold = None if score_threshold is None else float(score_threshold)

    @classmethod
    def load(cls, model: str, input_size: tuple[int, int] | None = None, max_people: int = 20,
             score_threshold: float | None = None, num_threads: int = 2) -> "PosePredictor":
        """A predictor for ``model``: a built-in name (random weights), a ``.keras`` file, an
        end-to-end SavedModel directory, or an end-to-end ``.tflite`` / ``.onnx`` file.

        ``input_size`` (None: the model family's default), ``max_people`` apply to Keras models
        (exports fixed them at export time);
        ``score_threshold`` applies to all (None: the model's own; for exports, on top of the
        threshold fixed at export);
        ``num_threads`` to the TFLite and ONNX runtimes.
        """
        from kerapose.models.registry import family_named, load_any_model, model_names

        model = os.fspath(model)
        if model in model_names() and model not in family_named(model).pretrained and model not in _WARNED:
            _WARNED.add(model)
            print(f"[kerapose] warning: the built-in {model} has random weights: its people are noise. Train it "
                  f"(kerapose train) or use a trained model, e.g. paf-mobilenetv2-small", file=sys.stderr)
        if model in model_names() or model.endswith(".keras"):
            return cls._from_keras(load_any_model(model), model, input_size, max_people, score_threshold)
        if not os.path.exists(model):
            raise FileNotFoundError(f"model not found: {model}")
        if os.path.isdir(model):
            return cls._from_savedmodel(model, score_threshold)
        if model.endswith(".tflite"):
            from kerapose.export.tflite import TFLiteRunner

            runner = TFLiteRunner(model, num_threads=num_threads)
            return cls._from_runner(runner, runner.output_details, model, "tflite", score_threshold)
        if model.endswith(".onnx"):
            from kerapose.export.onnx import OnnxRunner

            runner = OnnxRunner(model, num_threads=num_threads)
            shapes = {o.name: o.shape for o in runner.session.get_outputs()}
            return cls._from_runner(runner, shapes, model, "onnx", score_threshold)
        raise ValueError(f"{model!r}: not a built-in model ({', '.join(model_names())}), a .keras file, a "
                         f"SavedModel directory, or a .tflite / .onnx file")

    @classmethod
    def _from_keras(cls, model, source: str, input_size, max_people: int, score_threshold: float):
        if callable(getattr(model, "predict_poses", None)):
            from kerapose.models.registry import family_of

            hw = tuple(int(v) for v in input_size) if input_size else family_of(model).default_input_size

            options = {"score_threshold": score_threshold} if score_threshold is not None else {}

            def run(img: np.ndarray) -> dict:
                return model.predict_poses([img], input_size=hw, max_people=max_people, **options)[0]

            return cls(run, model.keypoint_set.name, source, "keras", score_threshold)
        names = list(model.output.keys()) if isinstance(model.output, dict) else []
        _check_e2e_outputs(names, f"{source} ({type(model).__name__})")
        import tensorflow as tf

        graph = tf.function(lambda x: model(x, training=False), reduce_retracing=True,
                            input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
        k = int(model.output["keypoints"].shape[2])
        kps = model.keypoint_set.name if hasattr(model, "keypoint_set") else _keypoint_set_for(k)
        return cls(lambda img: _unpad(graph(img[None])), kps, source, "keras", score_threshold)

    @classmethod
    def _from_savedmodel(cls, path: str, score_threshold: float):
        import tensorflow as tf

        from kerapose.export.savedmodel import SIGNATURE_KEY

        if not os.path.isfile(os.path.join(path, "saved_model.pb")):
            raise ValueError(f"{path} is a directory but not a SavedModel (no saved_model.pb)")
        from kerapose.export.metadata import read_metadata, require_end_to_end

        require_end_to_end(read_metadata(path), path)
        loaded = tf.saved_model.load(path)
        if SIGNATURE_KEY not in loaded.signatures:
            raise ValueError(f"{path} has no {SIGNATURE_KEY!r} signature (it has {list(loaded.signatures)})")
        sig = loaded.signatures[SIGNATURE_KEY]
        _check_e2e_outputs(list(sig.structured_outputs), f"SavedModel {path}")
        spec = sig.structured_input_signature[1].get("image")
        if spec is None or spec.dtype != tf.uint8:
            raise ValueError(f"SavedModel {path}: expected a uint8 'image' input (end-to-end export), got {spec}")
        k = int(sig.structured_outputs["keypoints"].shape[2])

        def run(img: np.ndarray) -> dict:
            return _unpad({k_: v.numpy() for k_, v in sig(image=tf.constant(img[None])).items()})

        predictor = cls(run, _keypoint_set_for(k, path), path, "savedmodel", score_threshold)
        predictor._keep = loaded  # the signature needs its SavedModel alive
        return predictor

    @classmethod
    def _from_runner(cls, runner, output_shapes: dict, source: str, kind: str, score_threshold: float):
        from kerapose.export.metadata import read_metadata, require_end_to_end

        require_end_to_end(read_metadata(source), source)
        _check_e2e_outputs(list(output_shapes), f"{kind} file {source}")
        k = output_shapes["keypoints"]
        k = k.get("shape_signature", k.get("shape")) if isinstance(k, dict) else k
        return cls(lambda img: _unpad(runner(image=img[None])), _keypoint_set_for(int(k[2]), source), source, kind,
                   score_threshold)

    def __call__(self, rgb_uint8: np.ndarray) -> dict:
        img = np.asarray(rgb_uint8)
        if img.ndim != 3 or img.shape[-1] != 3:
            raise ValueError(f"expected an RGB image [H, W, 3], got shape {img.shape}")
        if img.dtype != np.uint8:
            raise ValueError(f"expected a uint8 image, got dtype {img.dtype}")
        out = self._run(np.ascontiguousarray(img))
        keep = np.asarray(out["scores"]) >= (self.score_threshold or 0.0)
        return {k: np.asarray(out[k], np.float32)[keep] for k in ("keypoints", "scores", "boxes")}


# ----------------------------------------------------------------------------- inputs


@dataclass
class PredictSummary:
    """What :func:`predict_paths` did (``as_dict`` is the ``--json`` object)."""

    out: str = ""
    images: int = 0
    videos: int = 0
    frames: int = 0
    people: int = 0
    resized: list = field(default_factory=list)
    skipped: list = field(default_factory=list)  # {"path", "reason"}: files that were not inputs
    errors: list = field(default_factory=list)  # {"path", "error"}: inputs that failed
    outputs: list = field(default_factory=list)
    predictions: str = ""

    @property
    def processed(self) -> int:
        return self.images + self.frames

    def as_dict(self) -> dict:
        return {"out": self.out, "images": self.images, "videos": self.videos, "frames": self.frames,
                "people": self.people, "resized": self.resized, "skipped": self.skipped,
                "errors": self.errors, "outputs": self.outputs, "predictions": self.predictions}


def collect_inputs(paths: list[str], summary: PredictSummary) -> list[str]:
    """Expand folders (non-recursive, sorted) into their image and video files.

    Missing paths raise FileNotFoundError naming the path; files of other kinds inside a folder
    are recorded in ``summary.skipped``; a folder with no image or video is an error for it.
    """
    for p in paths:
        if not os.path.exists(p):
            raise FileNotFoundError(f"input not found: {p}")
    files = []
    for p in paths:
        if not os.path.isdir(p):
            files.append(p)
            continue
        found = []
        for name in sorted(os.listdir(p)):
            full = os.path.join(p, name)
            if not os.path.isfile(full):
                continue
            if name.lower().endswith(IMAGE_SUFFIXES + VIDEO_SUFFIXES):
                found.append(full)
            else:
                summary.skipped.append({"path": full, "reason": "not an image or video file suffix"})
        if not found:
            summary.errors.append({"path": p, "error": f"folder {p} has no images or videos "
                                   f"({', '.join(IMAGE_SUFFIXES + VIDEO_SUFFIXES)})"})
        files.extend(found)
    return files


def _limit_pixels(img: np.ndarray, max_pixels: int) -> tuple[np.ndarray, float]:
    """Downscale an image above ``max_pixels`` (INTER_AREA); returns it and the factor applied."""
    import cv2

    h, w = img.shape[:2]
    if h * w <= max_pixels:
        return img, 1.0
    f = (max_pixels / float(h * w)) ** 0.5
    size = (max(1, int(w * f)), max(1, int(h * f)))
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA), f


class _ImageIds:
    """COCO image ids: a COCO-style name (``000000000139.jpg``) gives its own id, so the results
    evaluate against COCO annotations directly; other images and video frames get the next free id."""

    def __init__(self):
        self.used: set[int] = set()
        self.next = 1

    def get(self, stem: str | None = None) -> int:
        if stem is not None and stem.isdigit() and int(stem) not in self.used:
            self.used.add(int(stem))
            return int(stem)
        while self.next in self.used:
            self.next += 1
        self.used.add(self.next)
        return self.next


class _Outputs:
    """Unique output names in ``out`` (two inputs called ``a.jpg`` in different folders)."""

    def __init__(self, out: str):
        self.out = out
        self.used: set[str] = set()

    def path(self, stem: str, suffix: str) -> str:
        name, i = f"{stem}{suffix}", 1
        while name in self.used:
            name, i = f"{stem}_{i}{suffix}", i + 1
        self.used.add(name)
        return os.path.join(self.out, name)


def _results(poses: dict, image_id: int, file_name: str, scale: float, frame: int | None = None,
             keypoint_set: str | KeypointSet = "coco17") -> list[dict]:
    """predictions.json rows for one image or frame, in original pixels: valid COCO keypoint results.

    Each row: ``image_id``, ``category_id`` (1), ``keypoints`` (flat x, y, score), ``score``,
    ``bbox`` (x, y, w, h), ``file_name`` (and ``frame`` for videos), ``keypoint_set`` (the
    model's). ``keypoints`` are in the set :func:`kerapose.skeleton.coco_results_set` gives:
    COCO-17 in COCO order for every person model (OpenPose-18's neck dropped), so the file
    scores with pycocotools as it is; a model whose set differs from that also gets its own
    keypoints, in its own order, as ``model_keypoints``. People with a NaN/inf value are left
    out (with a ``RuntimeWarning``): JSON has no such numbers.
    """
    import warnings

    from kerapose.evaluation import keypoint_results
    from kerapose.skeleton import coco_results_set, convert_keypoints, get_keypoint_set

    kset = get_keypoint_set(keypoint_set)
    out_set = coco_results_set(kset)
    kp = np.asarray(poses["keypoints"], np.float64).reshape(-1, kset.num_keypoints, 3).copy()
    kp[..., :2] /= scale
    boxes = np.asarray(poses["boxes"], np.float64).reshape(-1, 4) / scale
    scores = np.asarray(poses["scores"], np.float64).reshape(-1)
    finite = np.isfinite(kp).all(axis=(1, 2)) & np.isfinite(boxes).all(axis=1) & np.isfinite(scores)
    if not finite.all():
        warnings.warn(f"{file_name}: left out {int((~finite).sum())} pose(s) with NaN/inf values",
                      RuntimeWarning, stacklevel=2)
    kp, boxes, scores = kp[finite], boxes[finite], scores[finite]
    rows = keypoint_results(image_id, convert_keypoints(kp, kset, out_set), scores)
    for row, own, (x1, y1, x2, y2) in zip(rows, kp, boxes):
        row["bbox"] = [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]
        row["file_name"] = file_name
        if frame is not None:
            row["frame"] = frame
        row["keypoint_set"] = kset.name
        if out_set != kset:
            row["model_keypoints"] = [float(v) for v in own.reshape(-1)]
    return rows


def predict_paths(predictor: PosePredictor, paths: list[str], out: str, *, max_pixels: int = MAX_PIXELS,
                  draw: bool = True, progress: bool = True, log: Callable[[str], None] | None = None,
                  max_frames: int | None = None) -> PredictSummary:
    """Run ``predictor`` over images, folders and videos; write annotated copies and
    ``predictions.json`` (written atomically) into ``out``.

    Images above ``max_pixels`` are downscaled first (and said so in ``summary.resized``);
    coordinates in predictions.json are in the original image's pixels.
    """
    import cv2

    from kerapose.data.pipeline import read_image
    from kerapose.evaluation import write_results
    from kerapose.visualize import draw_poses

    if max_pixels <= 0:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")
    log = log or (lambda msg: print(msg, file=sys.stderr))
    summary = PredictSummary(out=os.path.abspath(out))
    files = collect_inputs(list(paths), summary)
    for err in summary.errors:  # empty folders
        log(f"[kerapose] error: {err['error']}")
    os.makedirs(out, exist_ok=True)
    names = _Outputs(out)
    results: list[dict] = []
    ids = _ImageIds()
    bar = None
    if progress and files:
        import keras

        bar = keras.utils.Progbar(len(files), unit_name="input")

    def annotate(img: np.ndarray, poses: dict) -> np.ndarray:
        return draw_poses(img, poses["keypoints"], poses["boxes"], poses["scores"],
                          keypoint_set=predictor.keypoint_set)

    for step, path in enumerate(files, 1):
        base = os.path.basename(path)
        stem, suffix = os.path.splitext(base)
        if suffix.lower() in VIDEO_SUFFIXES:
            cap = cv2.VideoCapture(path)
            try:
                if not cap.isOpened():
                    raise ValueError(f"{path}: not a readable video")
                frames = predict_stream(predictor, cap, stem, names, summary, results, ids, max_pixels=max_pixels,
                                        draw=draw, progress=progress, max_frames=max_frames, file_name=base)
                if frames == 0:
                    raise ValueError(f"{path}: not a readable video (no frame could be decoded)")
                summary.videos += 1
            except ValueError as e:
                summary.errors.append({"path": path, "error": str(e)})
                log(f"[kerapose] error: {e}")
            finally:
                cap.release()
        else:
            try:
                img = read_image(path)
            except ValueError as e:
                summary.skipped.append({"path": path, "reason": str(e)})
                log(f"[kerapose] skipped {path}: {e}")
                img = None
            if img is not None:
                h, w = img.shape[:2]
                img, scale = _limit_pixels(img, max_pixels)
                if scale != 1.0:
                    msg = (f"{path}: {w}x{h} = {w * h / 1e6:.1f} MP is above the {max_pixels / 1e6:g} MP limit; "
                           f"downscaled to {img.shape[1]}x{img.shape[0]} (coordinates stay in original pixels)")
                    summary.resized.append({"path": path, "message": msg})
                    log(f"[kerapose] {msg}")
                poses = predictor(img)
                results += _results(poses, ids.get(stem), base, scale, keypoint_set=predictor.keypoint_set)
                summary.images += 1
                summary.people += len(poses["scores"])
                if draw:
                    target = names.path(stem, ".png" if suffix.lower() == ".png" else ".jpg")
                    if not cv2.imwrite(target, cv2.cvtColor(annotate(img, poses), cv2.COLOR_RGB2BGR)):
                        raise OSError(f"could not write {target}")
                    summary.outputs.append(target)
        if bar is not None:
            bar.update(step)
    summary.predictions = os.path.join(summary.out, "predictions.json")
    write_results(results, summary.predictions)
    return summary


def predict_stream(predictor: PosePredictor, capture, stem: str, names: "_Outputs", summary: PredictSummary,
                   results: list, ids: "_ImageIds", *, max_pixels: int = MAX_PIXELS, draw: bool = True,
                   progress: bool = True, show: bool = False, max_frames: int | None = None,
                   file_name: str | None = None) -> int:
    """Frames of an open ``cv2.VideoCapture`` (a video file or a camera) -> people.

    Writes ``OUT/STEM_pose.mp4`` (annotated, when ``draw``) and ``OUT/STEM_pose.json`` (one entry
    per frame: its index and its people in COCO result rows), adds the rows to ``results``, shows
    the annotated frames in a window when ``show`` (``q`` or Esc stops), and keeps a progress bar
    over the frames (the file's frame count, when it has one). Returns the frames processed.
    """
    import cv2

    from kerapose.evaluation import write_results
    from kerapose.visualize import draw_poses

    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    if max_frames:
        total = min(total, max_frames) if total > 0 else max_frames
    bar = None
    if progress:
        import keras

        bar = keras.utils.Progbar(total if total > 0 else None, unit_name="frame")
    writer, per_frame, frames = None, [], 0
    try:
        while max_frames is None or frames < max_frames:
            ok, bgr = capture.read()
            if not ok:
                break
            rgb, scale = _limit_pixels(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), max_pixels)
            poses = predictor(rgb)
            rows = _results(poses, ids.get(), file_name or stem, scale, frame=frames,
                            keypoint_set=predictor.keypoint_set)
            results += rows
            per_frame.append({"frame": frames, "people": rows})
            summary.people += len(poses["scores"])
            if draw or show:
                drawn = cv2.cvtColor(draw_poses(rgb, poses["keypoints"], poses["boxes"], poses["scores"],
                                                keypoint_set=predictor.keypoint_set), cv2.COLOR_RGB2BGR)
                if draw:
                    if writer is None:
                        target = names.path(f"{stem}_pose", ".mp4")
                        writer = cv2.VideoWriter(target, cv2.VideoWriter_fourcc(*"mp4v"), float(fps),
                                                 (drawn.shape[1], drawn.shape[0]))
                        if not writer.isOpened():
                            raise ValueError(f"{target}: cannot open an mp4v video writer")
                        summary.outputs.append(target)
                    writer.write(drawn)
                if show:
                    cv2.imshow(f"kerapose: {stem}", drawn)
                    if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                        break
            frames += 1
            if bar is not None:
                bar.update(frames)
    except KeyboardInterrupt:  # a live stream ends with Ctrl-C; keep what was processed
        pass
    finally:
        if writer is not None:
            writer.release()
        if show:
            cv2.destroyAllWindows()
        summary.frames += frames
        if frames:
            target = names.path(f"{stem}_pose", ".json")
            write_results(per_frame, target)
            summary.outputs.append(target)
    return frames


def display_available() -> tuple[bool, str]:
    """Whether a live window can open here, and if not, why (said to the user as it is)."""
    import re

    import cv2

    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False, "no display here (DISPLAY and WAYLAND_DISPLAY are unset)"
    gui = re.search(r"GUI:\s*(\S+)", cv2.getBuildInformation())
    if gui is None or gui.group(1).upper() == "NONE":
        return False, ("this OpenCV build has no GUI support (opencv-python-headless, kerapose's default); "
                       "pip install opencv-python for a live window")
    return True, ""


def predict_camera(predictor: PosePredictor, index: int, out: str, *, max_frames: int | None = None,
                   draw: bool = True, show: bool | None = None, log: Callable[[str], None] | None = None,
                   capture=None) -> PredictSummary:
    """A camera (``cv2.VideoCapture(index)``) -> people, live: a window when a display exists
    (``show=None`` decides), the annotated recording and per-frame JSON in ``out`` always."""
    import cv2

    from kerapose.evaluation import write_results

    log = log or (lambda msg: print(msg, file=sys.stderr))
    if show is None:
        show, why = display_available()
        if not show:
            log(f"[kerapose] no live window: {why}. Recording the annotated stream and per-frame JSON to "
                f"{os.path.abspath(out)} instead (Ctrl-C stops)")
    cap = capture if capture is not None else cv2.VideoCapture(int(index))
    if not cap.isOpened():
        raise ValueError(f"camera {index} could not be opened (no such device, or it is busy)")
    summary = PredictSummary(out=os.path.abspath(out))
    os.makedirs(out, exist_ok=True)
    results: list[dict] = []
    try:
        predict_stream(predictor, cap, f"camera{index}", _Outputs(out), summary, results, _ImageIds(),
                       draw=draw, show=show, max_frames=max_frames, progress=True)
    finally:
        cap.release()
    summary.videos = 1 if summary.frames else 0
    summary.predictions = os.path.join(summary.out, "predictions.json")
    write_results(results, summary.predictions)
    return summary


# ----------------------------------------------------------------------------- CLI


def add_predict_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``kerapose predict`` options."""
    parser.add_argument("model", help="built-in model name (random weights), .keras file, end-to-end SavedModel "
                                      "directory, or end-to-end .tflite / .onnx file")
    parser.add_argument("inputs", nargs="*", help="images, folders (not recursive) and videos (.mp4/.avi/.mov/.mkv)")
    parser.add_argument("--source", type=int, metavar="INDEX",
                        help="a camera index (e.g. 0): live, in a window when a display exists; the annotated "
                             "stream and per-frame JSON go to --out")
    parser.add_argument("--max-frames", type=int, help="stop a camera or video after this many frames")
    parser.add_argument("--out", required=True, help="output folder: annotated images/videos, predictions.json")
    parser.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"),
                        help="network input of Keras models (default: the model family's; exports fixed theirs)")
    parser.add_argument("--max-people", type=int, default=20)
    parser.add_argument("--score-threshold", type=float,
                        help="minimum person score (default: the model's own, e.g. 0.3 for MultiPoseNet)")
    parser.add_argument("--threads", type=int, default=2, help="threads of the TFLite / ONNX runtimes")
    parser.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                        help="images above this many pixels are downscaled first")
    parser.add_argument("--no-draw", action="store_true", help="write predictions.json only")
    parser.add_argument("--json", action="store_true", help="print one JSON summary object (no progress bar)")
    return parser


def predict_main(args: argparse.Namespace) -> int:
    """Run ``kerapose predict``; 0 when at least one image or frame was processed, 2 otherwise."""
    predictor = PosePredictor.load(args.model, input_size=args.input_size, max_people=args.max_people,
                                   score_threshold=args.score_threshold, num_threads=args.threads)
    if (args.source is None) == (not args.inputs):
        raise ValueError("give images / folders / videos, or --source INDEX for a camera (not both)")
    if args.source is not None:
        summary = predict_camera(predictor, args.source, args.out, max_frames=args.max_frames, draw=not args.no_draw)
    else:
        summary = predict_paths(predictor, args.inputs, args.out, max_pixels=args.max_pixels, draw=not args.no_draw,
                                progress=not args.json, max_frames=args.max_frames)
    if args.json:
        print(json.dumps(summary.as_dict()))
    else:
        print(f"[kerapose] {summary.images} images, {summary.videos} videos ({summary.frames} frames), "
              f"{summary.people} people; skipped {len(summary.skipped)}, errors {len(summary.errors)}")
        print(f"[kerapose] predictions: {summary.predictions}")
    return 0 if summary.processed > 0 else 2
