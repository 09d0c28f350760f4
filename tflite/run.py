"""Run an end-to-end kerapose .tflite model on one image with LiteRT (ai-edge-litert).

    python tflite/run.py MODEL.tflite IMAGE [--threads 2] [--out annotated.jpg] [--min-score 0.3]

The model must be an end-to-end export (``kerapose export --model MODEL --format tflite``, the default; not
``--raw``): uint8
``image`` [1, H, W, 3] of any size in, ``keypoints`` [1, M, K, 3], ``scores`` [1, M], ``boxes``
[1, M, 4], ``num_poses`` [1] out. Needs only ai-edge-litert, numpy and OpenCV, so it runs where
kerapose is not installed (a Raspberry Pi, a CI box); the drawing uses ``kerapose.visualize``
when kerapose is importable, a plain keypoint drawing otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np


def read_rgb(path: str) -> np.ndarray:
    """RGB uint8 of an image file (gray, RGBA and 16-bit converted)."""
    import cv2

    if not os.path.isfile(path):
        raise FileNotFoundError(f"image not found: {path}")
    img = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f"{path}: not a readable image")
    if img.dtype == np.uint16:
        img = (img / 257.0).round().astype(np.uint8)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def run_tflite(model_path: str, image: np.ndarray, threads: int = 2) -> dict:
    """One end-to-end inference: {"keypoints" [N, K, 3], "scores" [N], "boxes" [N, 4]}."""
    from ai_edge_litert.interpreter import Interpreter

    if not os.path.isfile(model_path):
        raise FileNotFoundError(f"model not found: {model_path}")
    interpreter = Interpreter(model_path=model_path, num_threads=threads)
    signatures = interpreter.get_signature_list()
    if "serving_default" not in signatures:
        raise ValueError(f"{model_path} has no 'serving_default' signature (it has {list(signatures)})")
    runner = interpreter.get_signature_runner("serving_default")
    outputs = set(runner.get_output_details())
    missing = {"keypoints", "scores", "boxes", "num_poses"} - outputs
    if missing:
        raise ValueError(f"{model_path} is not an end-to-end export: outputs {sorted(outputs)}, missing "
                         f"{sorted(missing)}; export it without --raw (end to end is the default)")
    out = runner(image=np.ascontiguousarray(image[None], np.uint8))
    n = int(np.asarray(out["num_poses"]).reshape(-1)[0])
    return {k: np.asarray(out[k])[0, :n] for k in ("keypoints", "scores", "boxes")}


def draw(image: np.ndarray, poses: dict) -> np.ndarray:
    try:
        from kerapose.visualize import draw_poses
        from kerapose.skeleton import available_keypoint_sets, get_keypoint_set
    except ImportError:  # kerapose not installed: keypoints and boxes only
        import cv2

        out = image.copy()
        for kp, box in zip(poses["keypoints"], poses["boxes"]):
            cv2.rectangle(out, (int(box[0]), int(box[1])), (int(box[2]), int(box[3])), (0, 255, 0), 2)
            for x, y, s in kp:
                if s >= 0.1:
                    cv2.circle(out, (int(x), int(y)), 3, (255, 0, 0), -1)
        return out
    k = poses["keypoints"].shape[1]
    name = next((n for n in ["coco17", *available_keypoint_sets()] if get_keypoint_set(n).num_keypoints == k), None)
    if name is None:
        raise ValueError(f"no keypoint set with {k} keypoints to draw with")
    return draw_poses(image, poses["keypoints"], poses["boxes"], poses["scores"], keypoint_set=name)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="end-to-end .tflite file")
    p.add_argument("image")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--min-score", type=float, default=0.0, help="hide people scoring below this")
    p.add_argument("--out", help="write the annotated image here")
    args = p.parse_args(argv)
    try:
        image = read_rgb(args.image)
        poses = run_tflite(args.model, image, args.threads)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    keep = poses["scores"] >= args.min_score
    poses = {k: v[keep] for k, v in poses.items()}
    print(f"{len(poses['scores'])} people in {args.image} ({image.shape[1]}x{image.shape[0]})")
    for i, (score, box, kp) in enumerate(zip(poses["scores"], poses["boxes"], poses["keypoints"])):
        visible = int((kp[:, 2] >= 0.1).sum())
        print(f"  person {i}: score {score:.3f}, box ({box[0]:.0f}, {box[1]:.0f}, {box[2]:.0f}, {box[3]:.0f}), "
              f"{visible}/{len(kp)} keypoints scoring >= 0.1")
    if args.out:
        import cv2

        if not cv2.imwrite(args.out, cv2.cvtColor(draw(image, poses), cv2.COLOR_RGB2BGR)):
            print(f"error: could not write {args.out}", file=sys.stderr)
            return 2
        print(f"annotated image: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
