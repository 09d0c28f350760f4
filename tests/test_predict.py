"""kerapose predict (PosePredictor, predict_paths, predict_main) and kerapose.visualize.draw_poses."""

from __future__ import annotations

import argparse
import json
import os

import cv2
import numpy as np
import pytest

HW = (128, 128)


@pytest.fixture(scope="module")
def tiny_keras(tmp_path_factory) -> str:
    from kerapose.models.multiposenet.network import MultiPoseNet

    model = MultiPoseNet("resnet18", fpn_size=32, keypoint_head_size=16, keypoint_fuse_size=32, prn_hidden=16)
    path = str(tmp_path_factory.mktemp("model") / "tiny.keras")
    model.save(path)
    return path


@pytest.fixture(scope="module")
def predictor(tiny_keras):
    from kerapose.predict import PosePredictor

    return PosePredictor.load(tiny_keras, input_size=HW, max_people=5, score_threshold=0.0)


@pytest.fixture(scope="module")
def val_images(coco_mini_root) -> list[str]:
    folder = coco_mini_root / "val2017"
    return [str(folder / n) for n in sorted(os.listdir(folder)) if n.endswith(".jpg")][:3]


def _parser():
    from kerapose.predict import add_predict_arguments

    return add_predict_arguments(argparse.ArgumentParser())


def test_predict_cli_images_annotated_and_coco_results(tiny_keras, val_images, coco_mini_root, tmp_path, capsys):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from kerapose.data.pipeline import read_image
    from kerapose.predict import predict_main
    from kerapose.visualize import draw_poses

    out = tmp_path / "out"
    args = _parser().parse_args([tiny_keras, *val_images, "--out", str(out), "--input-size", *map(str, HW),
                                 "--max-people", "5", "--score-threshold", "0", "--json"])
    assert predict_main(args) == 0
    summary = json.loads(capsys.readouterr().out)  # one JSON object, no progress bar on stdout
    assert summary["images"] == 3 and summary["errors"] == [] and summary["people"] == 15

    results = json.load(open(out / "predictions.json"))
    assert len(results) == 15
    for row in results:
        assert set(row) >= {"image_id", "category_id", "keypoints", "score", "bbox", "file_name"}
        assert len(row["keypoints"]) == 17 * 3 and len(row["bbox"]) == 4
        # COCO file names give COCO image ids, so the file evaluates against the annotations directly
        assert row["image_id"] == int(row["file_name"].split(".")[0])
    gt = COCO(str(coco_mini_root / "annotations" / "person_keypoints_val2017.json"))
    dt = gt.loadRes(results)
    ev = COCOeval(gt, dt, "keypoints")
    ev.params.imgIds = sorted({r["image_id"] for r in results})
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert len(dt.getAnnIds()) == 15 and 0.0 <= ev.stats[0] <= 1.0

    # the annotated image differs from the input exactly where poses are drawn (JPEG noise aside)
    src = read_image(val_images[0])
    rows = [r for r in results if r["file_name"] == os.path.basename(val_images[0])]
    kp = np.array([r["keypoints"] for r in rows]).reshape(-1, 17, 3)
    boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in rows)])
    drawn = np.abs(draw_poses(src, kp, boxes, np.array([r["score"] for r in rows])).astype(int) - src).sum(-1) > 0
    annotated = cv2.cvtColor(cv2.imread(str(out / os.path.basename(val_images[0]))), cv2.COLOR_BGR2RGB)
    diff = np.abs(annotated.astype(int) - src).sum(-1)
    assert drawn.sum() > 500
    assert diff[drawn].mean() > 60
    assert diff[~drawn].mean() < 10


def _assert_same_people(a: dict, b: dict, tol: float) -> None:
    from scipy.optimize import linear_sum_assignment

    assert len(a["scores"]) == len(b["scores"]) > 0
    cost = np.abs(a["boxes"][:, None] - b["boxes"][None]).sum(-1)
    ia, ib = linear_sum_assignment(cost)
    assert np.abs(a["boxes"][ia] - b["boxes"][ib]).max() <= tol
    assert np.abs(a["keypoints"][ia, :, :2] - b["keypoints"][ib, :, :2]).max() <= tol
    np.testing.assert_allclose(a["scores"][ia], b["scores"][ib], atol=1e-3)


def _load_script(name: str):
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "tflite", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_kerapose_tflite_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_openpose18_model_writes_coco17_results(val_images, coco_mini_root, tmp_path):
    """An 18-keypoint (OpenPose) model's predictions.json loads in pycocotools as it is (it used to
    fail: "operands could not be broadcast together with shapes (18,) (17,)")."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from kerapose.predict import PosePredictor, predict_paths

    def run(img: np.ndarray) -> dict:  # one person spread over the image, OpenPose-18 order
        h, w = img.shape[:2]
        t = np.linspace(0.1, 0.9, 18)
        kp = np.stack([t * w, t[::-1] * h, np.full(18, 0.8)], -1)[None].astype(np.float32)
        return {"keypoints": kp, "scores": np.array([0.7], np.float32),
                "boxes": np.array([[0.1 * w, 0.1 * h, 0.9 * w, 0.9 * h]], np.float32)}

    fake = PosePredictor(run, keypoint_set="openpose18", source="fake", kind="keras", score_threshold=0.0)
    summary = predict_paths(fake, val_images, str(tmp_path / "out"), draw=False, progress=False)
    rows = json.load(open(summary.predictions))
    assert len(rows) == 3
    for row in rows:
        assert row["keypoint_set"] == "openpose18" and len(row["keypoints"]) == 17 * 3
        own = np.asarray(row["model_keypoints"]).reshape(18, 3)
        coco = np.asarray(row["keypoints"]).reshape(17, 3)
        np.testing.assert_allclose(coco[[5, 6]], own[[5, 2]], rtol=1e-6)  # left/right shoulder, COCO order
    gt = COCO(str(coco_mini_root / "annotations" / "person_keypoints_val2017.json"))
    ev = COCOeval(gt, gt.loadRes(summary.predictions), "keypoints")
    ev.params.imgIds = sorted({r["image_id"] for r in rows})
    ev.evaluate()
    ev.accumulate()
    assert ev.eval["precision"].shape[0] == 10  # evaluated, no broadcasting error


def test_keras_and_tflite_give_the_same_people(tiny_keras, predictor, val_images, tmp_path, capsys):
    import keras

    from kerapose.data.pipeline import read_image
    from kerapose.export import export_model
    from kerapose.predict import PosePredictor

    model = keras.saving.load_model(tiny_keras)
    path = export_model(model, "tflite", str(tmp_path / "e2e.tflite"), end_to_end=True, input_size=HW,
                        max_people=5, score_threshold=0.0)
    lite = PosePredictor.load(path, score_threshold=0.0, num_threads=1)
    assert lite.kind == "tflite" and lite.keypoint_set == "coco17"
    img = read_image(val_images[1])
    ref, got = predictor(img), lite(img)
    assert ref["keypoints"].shape == (5, 17, 3)
    _assert_same_people(got, ref, tol=0.5)
    # the predictor's own threshold also filters exported models' people
    strict = PosePredictor.load(path, score_threshold=float(np.max(ref["scores"])) + 1.0)
    assert len(strict(img)["scores"]) == 0

    # the standalone on-device scripts run the same file
    run = _load_script("run")
    lite_direct = run.run_tflite(path, img, threads=1)
    _assert_same_people(lite_direct, ref, tol=0.5)
    capsys.readouterr()
    out_img = str(tmp_path / "annotated.jpg")
    assert run.main([path, val_images[1], "--threads", "1", "--out", out_img]) == 0
    assert capsys.readouterr().out.startswith(f"5 people in {val_images[1]}")
    assert cv2.imread(out_img).shape == img.shape
    assert run.main([path, str(tmp_path / "missing.jpg")]) == 2
    bench = _load_script("benchmark")
    out_json = str(tmp_path / "bench.json")
    assert bench.main([path, "--input-size", "96", "128", "--threads", "1", "--runs", "2", "--warmup", "0",
                       "--json", out_json]) == 0
    rows = json.load(open(out_json))["results"]
    assert rows[0]["threads"] == 1 and rows[0]["input"] == [96, 128] and rows[0]["median_ms"] > 0
    assert bench.main([path, "--runs", "2"]) == 2  # any-size model: --input-size is required


def test_folder_odd_images_skips_and_large_image(predictor, val_images, tmp_path):
    from kerapose.data.pipeline import read_image
    from kerapose.predict import predict_paths

    src = read_image(val_images[0])
    folder = tmp_path / "in"
    folder.mkdir()
    gray = cv2.cvtColor(src, cv2.COLOR_RGB2GRAY)
    cv2.imwrite(str(folder / "a_gray.png"), gray)
    cv2.imwrite(str(folder / "b_rgba.png"), cv2.cvtColor(src, cv2.COLOR_RGB2BGRA))
    cv2.imwrite(str(folder / "c_16bit.png"), cv2.cvtColor(src, cv2.COLOR_RGB2BGR).astype(np.uint16) * 257)
    (folder / "d_fake.jpg").write_text("this is not a jpeg")
    (folder / "notes.txt").write_text("hello")
    summary = predict_paths(predictor, [str(folder)], str(tmp_path / "out"), progress=False)
    assert summary.images == 3 and summary.errors == []
    reasons = {os.path.basename(s["path"]): s["reason"] for s in summary.skipped}
    assert set(reasons) == {"d_fake.jpg", "notes.txt"}
    assert "not a readable image" in reasons["d_fake.jpg"] and "suffix" in reasons["notes.txt"]
    assert sorted(os.listdir(tmp_path / "out")) == ["a_gray.png", "b_rgba.png", "c_16bit.png", "predictions.json"]
    # the 16-bit PNG is the same picture as the 8-bit one after conversion: same people
    res = json.load(open(tmp_path / "out" / "predictions.json"))
    by_file = {}
    for r in res:
        by_file.setdefault(r["file_name"], []).append(r["keypoints"])
    np.testing.assert_allclose(by_file["c_16bit.png"], by_file["b_rgba.png"], atol=1e-3)

    # above the pixel limit: downscaled, said so, and the coordinates come back in original pixels
    limit = src.shape[0] * src.shape[1] // 4
    big = predict_paths(predictor, [val_images[0]], str(tmp_path / "big"), max_pixels=limit, progress=False)
    assert len(big.resized) == 1 and "downscaled" in big.resized[0]["message"]
    annotated = cv2.imread(big.outputs[0])
    assert annotated.shape[0] * annotated.shape[1] <= limit
    small = cv2.resize(src, (annotated.shape[1], annotated.shape[0]), interpolation=cv2.INTER_AREA)
    ref = predictor(small)
    rows = json.load(open(big.predictions))
    got = np.array([r["keypoints"] for r in rows]).reshape(-1, 17, 3)
    f = annotated.shape[1] / src.shape[1]
    np.testing.assert_allclose(got[..., :2] * f, ref["keypoints"][..., :2], atol=0.02 * annotated.shape[1])


def _write_video(path: str, frames: list[np.ndarray], fps: float = 10.0) -> None:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    assert writer.isOpened()
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()


def _count_frames(path: str) -> int:
    cap = cv2.VideoCapture(path)
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


def test_video_and_unreadable_video(predictor, val_images, tmp_path):
    from kerapose.data.pipeline import read_image
    from kerapose.predict import predict_paths

    src = cv2.resize(read_image(val_images[0]), (160, 112))
    video = str(tmp_path / "clip.mp4")
    _write_video(video, [np.roll(src, 8 * i, axis=1) for i in range(4)])
    garbage = tmp_path / "broken.mp4"
    garbage.write_bytes(os.urandom(2048))
    summary = predict_paths(predictor, [str(garbage), video, val_images[1]], str(tmp_path / "out"), progress=False)
    assert summary.videos == 1 and summary.frames == 4 and summary.images == 1
    assert len(summary.errors) == 1 and summary.errors[0]["path"] == str(garbage)
    assert "broken.mp4" in summary.errors[0]["error"] and "not a readable video" in summary.errors[0]["error"]
    out_video = str(tmp_path / "out" / "clip_pose.mp4")
    assert out_video in summary.outputs and _count_frames(out_video) == 4
    rows = json.load(open(summary.predictions))
    assert sorted({r["frame"] for r in rows if r["file_name"] == "clip.mp4"}) == [0, 1, 2, 3]
    assert len({r["image_id"] for r in rows}) == 5  # 4 frames + 1 image, distinct ids
    per_frame = json.load(open(tmp_path / "out" / "clip_pose.json"))  # one entry per frame, its people
    assert [f["frame"] for f in per_frame] == [0, 1, 2, 3]
    assert sum(len(f["people"]) for f in per_frame) == sum(r["file_name"] == "clip.mp4" for r in rows)


def test_camera_source_records_when_no_window_can_open(predictor, val_images, tmp_path, monkeypatch):
    """``--source 0`` without a display (this machine, CI): a clear message, then the annotated
    stream and per-frame JSON are recorded; a camera that does not open is a clear error. A video
    file stands in for the camera (cv2.VideoCapture reads both the same way)."""
    from kerapose.data.pipeline import read_image
    from kerapose.predict import display_available, predict_camera

    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    ok, why = display_available()
    assert not ok and "no display" in why
    src = cv2.resize(read_image(val_images[0]), (160, 112))
    video = str(tmp_path / "cam.mp4")
    _write_video(video, [np.roll(src, 4 * i, axis=1) for i in range(6)])
    said = []
    summary = predict_camera(predictor, 0, str(tmp_path / "live"), max_frames=5, log=said.append,
                             capture=cv2.VideoCapture(video))
    assert "no live window: no display here" in said[0] and "Recording" in said[0]
    assert summary.frames == 5 and _count_frames(str(tmp_path / "live" / "camera0_pose.mp4")) == 5
    assert len(json.load(open(tmp_path / "live" / "camera0_pose.json"))) == 5
    with pytest.raises(ValueError, match="camera 7 could not be opened"):
        predict_camera(predictor, 7, str(tmp_path / "none"), show=False, capture=cv2.VideoCapture(str(tmp_path / "x")))


def test_errors_empty_folder_missing_path_and_raw_models(tiny_keras, tmp_path, capsys):
    import keras

    from kerapose.export import export_model
    from kerapose.predict import PosePredictor, predict_main

    empty = tmp_path / "empty"
    empty.mkdir()
    args = _parser().parse_args([tiny_keras, str(empty), "--out", str(tmp_path / "o"), "--input-size", "64", "64",
                                 "--json"])
    assert predict_main(args) == 2
    captured = capsys.readouterr()
    assert json.loads(captured.out)["errors"][0]["error"].startswith(f"folder {empty} has no images or videos")
    assert "has no images or videos" in captured.err

    missing = str(tmp_path / "nope.jpg")
    args = _parser().parse_args([tiny_keras, missing, "--out", str(tmp_path / "o2")])
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        predict_main(args)
    with pytest.raises(FileNotFoundError, match="absent.tflite"):
        PosePredictor.load(str(tmp_path / "absent.tflite"))
    with pytest.raises(ValueError, match="neither a built-in model|not a built-in model"):
        PosePredictor.load(__file__)

    inp = keras.Input((32, 32, 3), name="image")
    raw = keras.Model(inp, keras.layers.Conv2D(2, 3, padding="same")(inp))
    sm = export_model(raw, "savedmodel", str(tmp_path / "raw_sm"), input_size=(32, 32))
    with pytest.raises(ValueError, match="raw-network export .* needs the end-to-end graph .* without --raw"):
        PosePredictor.load(sm)
    os.remove(os.path.join(sm, "kerapose.json"))  # an export without metadata: still refused, by its outputs
    with pytest.raises(ValueError, match="predict needs an end-to-end export"):
        PosePredictor.load(sm)
    raw.save(str(tmp_path / "raw.keras"))
    with pytest.raises(ValueError, match="predict needs an end-to-end export"):
        PosePredictor.load(str(tmp_path / "raw.keras"))


def test_draw_poses_limb_pixels():
    from kerapose.skeleton import COCO17
    from kerapose.visualize import PALETTE, draw_poses

    a, b = COCO17.index("left_shoulder"), COCO17.index("left_elbow")
    assert (a, b) in COCO17.limbs or (b, a) in COCO17.limbs
    img = np.full((100, 120, 3), 40, np.uint8)
    kp = np.zeros((1, 17, 3))
    kp[0, a] = (20, 50, 0.9)
    kp[0, b] = (90, 50, 0.8)
    kp[0, 0] = (60, 10, 0.05)  # below min_score: not drawn
    out = draw_poses(img, kp)
    assert out is not img and (img == 40).all()  # a new image; the input is untouched
    np.testing.assert_array_equal(out[50, 55], PALETTE[0])  # on the limb, between the two keypoints
    np.testing.assert_array_equal(out[50, 40], PALETTE[0])
    assert (out[10, 60] == 40).all() and (out[90, 55] == 40).all() and (out[5:15, 55:65] == 40).all()
    changed = np.argwhere((out != 40).any(-1))
    assert changed[:, 0].min() >= 44 and changed[:, 0].max() <= 56  # only around the limb's row

    # second person gets the second colour; boxes drawn on their edges
    kp2 = np.concatenate([kp, kp + np.array([0, 30, 0])])
    out2 = draw_poses(img, kp2, boxes=np.array([[5, 5, 110, 95], [0, 0, 1, 1]]), scores=np.array([0.9, 0.5]))
    np.testing.assert_array_equal(out2[80, 55], PALETTE[1])
    assert (out2[95, 30] != 40).any() and (out2[30, 110] != 40).any()

    with pytest.raises(ValueError, match=r"keypoints: expected \[N, 17, 3\]"):
        draw_poses(img, np.zeros((1, 18, 3)))
    with pytest.raises(ValueError, match="boxes: expected"):
        draw_poses(img, kp, boxes=np.zeros((2, 4)))
    with pytest.raises(ValueError, match="uint8"):
        draw_poses(img.astype(np.float32), kp)
    assert draw_poses(img, np.zeros((0, 17, 3))).tolist() == img.tolist()
