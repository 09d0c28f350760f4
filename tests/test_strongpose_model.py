"""StrongPose network (ResNet-18, tiny inputs): outputs, output stride, end-to-end graph and its
exports (TFLite builtins in ai-edge-litert, tf2onnx + onnxruntime), .keras round trip, losses."""

from __future__ import annotations

import inspect

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerapose.codecs.strongpose import StrongPoseCodec
from kerapose.models.strongpose import (
    BUILDERS,
    DECODER_SETTINGS,
    LOSS_WEIGHTS,
    MaskedLogisticLoss,
    OffsetL1Loss,
    StrongPose,
    StrongPoseDecoder,
    pack_targets,
    strongpose_losses,
)

SPEC = tf.TensorSpec([None, None, None, 3], tf.uint8, name="image")


def tiny(**kw) -> StrongPose:
    return StrongPose("resnet18", backbone_width=0.25, **kw)


@pytest.fixture(scope="module")
def model() -> StrongPose:
    """Random weights, heads scaled so the maps are decisive but not saturated: heat-map logits of a
    few units and offsets of tens of pixels. (Saturated sigmoids make near-ties that the runtimes'
    last-bit differences break differently.)"""
    keras.utils.set_random_seed(0)
    m = tiny(output_stride=16)
    heads = m.get_layer("heads")
    for name, factor in (("heatmaps_conv", 0.02), ("short_offsets_conv", 0.15), ("mid_offsets_conv", 0.3)):
        layer = heads.get_layer(name)
        kernel, bias = layer.get_weights()
        layer.set_weights([kernel * factor, bias])
    return m


@pytest.fixture(scope="module")
def e2e(model):
    return model.end_to_end((96, 96), max_people=6)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (1, 50, 70, 3), dtype=np.uint8), rng.integers(0, 255, (2, 90, 60, 3), dtype=np.uint8)]


@pytest.fixture(scope="module")
def e2e_outputs(e2e, images):
    outs = [{k: np.asarray(v) for k, v in e2e(img).items()} for img in images]
    assert all(o["num_poses"].min() >= 1 for o in outs)  # something to compare
    return outs


def assert_close(got: dict, want: dict) -> None:
    assert sorted(got) == ["boxes", "keypoints", "num_poses", "scores"]
    np.testing.assert_array_equal(got["num_poses"], want["num_poses"])
    np.testing.assert_allclose(got["keypoints"], want["keypoints"], atol=2e-3)
    np.testing.assert_allclose(got["boxes"], want["boxes"], atol=2e-3)
    np.testing.assert_allclose(got["scores"], want["scores"], atol=1e-5)


# ----------------------------------------------------------------------------- network


def test_outputs_strides_and_sizes():
    m = tiny(output_stride=16)
    codec = StrongPoseCodec()
    x = np.random.default_rng(1).uniform(0, 255, (1, 64, 96, 3)).astype("float32")
    out = m(x)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        k: (1, 8, 12, c) for k, c in codec.channels.items()}
    assert m.size_multiple == 16 and m.keypoint_set.name == "coco17" and m.codec.stride == 8
    # the same weights at output stride 8: no upsampling layer, the same maps' grid
    m8 = m.with_output_stride(8)
    assert m8.output_stride == 8 and m8.count_params() == m.count_params()
    for a, b in zip(m8.get_weights(), m.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert tuple(m8(x)["mid_offsets"].shape) == (1, 8, 12, 180)
    assert not any(layer.name.endswith("_upsample") for layer in m8.layers)
    # the paper's 401x401: maps of ceil(401 / 8) cells, the size the codec encodes
    assert tuple(m(np.zeros((1, 401, 401, 3), "float32"))["heatmaps"].shape) == (1, 51, 51, 17)
    assert codec.encode_keypoints(np.zeros((0, 17, 3)), (401, 401))["heatmaps"].shape == (51, 51, 17)


def test_builders_and_heads():
    assert sorted(BUILDERS) == ["strongpose-r101", "strongpose-r152", "strongpose-r18", "strongpose-r50"]
    m = tiny(head_kernel=3, map_stride=4, output_stride=8)
    heads = m.get_layer("heads")
    assert heads.get_layer("heatmaps_conv").kernel_size == (3, 3)
    assert tuple(m.output["body"].shape) == (None, None, None, 1)
    assert tuple(m(np.zeros((1, 32, 32, 3), "float32"))["short_offsets"].shape) == (1, 8, 8, 34)
    assert m.codec.stride == 4


def test_keras_file_round_trip(model, e2e, e2e_outputs, images, tmp_path):
    assert keras.saving.get_registered_name(StrongPose) == "kerapose>StrongPose"
    path = str(tmp_path / "strongpose.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, StrongPose) and loaded.get_config() == model.get_config()
    x = np.random.default_rng(2).uniform(0, 255, (1, 64, 64, 3)).astype("float32")
    for key, value in model(x).items():
        np.testing.assert_allclose(loaded(x)[key], value, atol=1e-5)
    layer = StrongPoseDecoder(max_people=7, nms_radius=12.0, keypoint_score="hough")
    assert StrongPoseDecoder.from_config(layer.get_config()).get_config() == layer.get_config()
    # the end-to-end graph (letterbox, network, decoder) as one file
    e2e.save(str(tmp_path / "e2e.keras"))
    graph = keras.saving.load_model(str(tmp_path / "e2e.keras"))
    assert graph.get_layer("decoder").get_config() == e2e.get_layer("decoder").get_config()
    assert_close({k: np.asarray(v) for k, v in graph(images[1]).items()}, e2e_outputs[1])


# ----------------------------------------------------------------------------- end to end


def test_end_to_end_maps_back_to_image_pixels(model, e2e, e2e_outputs, images):
    """The graph's people equal the numpy decoder's on the network's own maps, scaled back by the
    letterbox factor; predict_poses gives the same, unpadded."""
    img = images[0]
    scale = 96 / 70  # the 50x70 image fits 96x96 by its width
    net_in = tf.image.resize(tf.cast(img, tf.float32), (round(50 * scale), 96))
    net_in = tf.pad(net_in, [[0, 0], [0, 96 - round(50 * scale)], [0, 0], [0, 0]])
    maps = model(net_in)
    want = model.codec.decode(tf.sigmoid(maps["heatmaps"])[0], maps["short_offsets"][0], maps["mid_offsets"][0],
                              max_people=6)
    got = e2e_outputs[0]
    n = int(got["num_poses"][0])
    assert n == len(want["scores"])
    np.testing.assert_allclose(got["keypoints"][0, :n, :, :2], want["keypoints"][..., :2] / scale, atol=1e-2)
    np.testing.assert_allclose(got["scores"][0, :n], want["scores"], atol=1e-4)
    people = model.predict_poses([img[0]], input_size=(96, 96), max_people=6)
    assert len(people) == 1 and people[0]["keypoints"].shape == (n, 17, 3)
    np.testing.assert_allclose(people[0]["keypoints"], got["keypoints"][0, :n], atol=1e-4)


def test_tflite_builtins_only_and_equal_outputs(e2e, e2e_outputs, images, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    archive = keras.export.ExportArchive()
    archive.track(e2e)
    archive.add_endpoint("serving_default", lambda image: e2e(image, training=False), input_signature=[SPEC])
    archive.write_out(str(tmp_path / "sm"), verbose=False)
    conv = tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "sm"), signature_keys=["serving_default"])
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # no Flex ops
    interp = Interpreter(model_content=conv.convert())
    ops = {d["op_name"] for d in interp._get_ops_details()}
    assert {"WHILE", "TOPK_V2", "MAX_POOL_2D", "GATHER"} <= ops
    assert not any("Flex" in o or o == "CUSTOM" for o in ops)
    runner = interp.get_signature_runner()
    for img, want in zip(images, e2e_outputs):
        assert_close({k: np.asarray(v) for k, v in runner(image=img).items()}, want)


def test_onnx_tf2onnx_opset17_equal_outputs(e2e, e2e_outputs, images):
    import onnxruntime as ort
    import tf2onnx

    serve = tf.function(lambda x: e2e(x), input_signature=[SPEC])
    proto, _ = tf2onnx.convert.from_function(serve, input_signature=serve.input_signature, opset=17)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    for img, want in zip(images, e2e_outputs):
        assert_close(dict(zip(names, sess.run(None, {"image": img}))), want)


# ----------------------------------------------------------------------------- losses


def test_losses_against_numpy():
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 3, (2, 4, 5, 3)).astype("float32")
    target = (rng.uniform(size=logits.shape) > 0.7).astype("float32")
    weight = (rng.uniform(size=(2, 4, 5, 1)) > 0.2).astype("float32")
    prob = 1 / (1 + np.exp(-logits.astype(np.float64)))
    bce = -(target * np.log(prob) + (1 - target) * np.log(1 - prob))
    want = np.mean([(bce[i] * weight[i]).sum() / (3 * weight[i].sum()) for i in range(2)])
    got = MaskedLogisticLoss()(np.concatenate([target, weight], -1), logits)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)

    pred = rng.normal(0, 10, (2, 4, 5, 6)).astype("float32")
    true = rng.normal(0, 10, (2, 4, 5, 6)).astype("float32")
    mask = (rng.uniform(size=(2, 4, 5, 3)) > 0.5).astype("float32")
    err = np.abs(pred - true) * np.repeat(mask, 2, axis=-1)
    want = np.mean([err[i].sum() / 16.0 / mask[i].sum() for i in range(2)])
    got = OffsetL1Loss(16.0)(np.concatenate([true, mask], -1), pred)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    # an empty mask costs nothing (no division by zero)
    assert float(OffsetL1Loss()(np.concatenate([true, 0 * mask], -1), pred)) == 0.0


def test_one_training_step_on_codec_targets(coco_val):
    """The codec's packed targets fit the model's outputs, and a step lowers nothing to NaN."""
    record = coco_val.record(coco_val.image_ids[0])
    m = tiny(output_stride=16, input_shape=(None, None, 3))
    image = np.zeros((1, 64, 64, 3), "float32")
    # the record's people scaled into the 64x64 input
    s = 64 / max(record.height, record.width)
    kp = record.keypoints.copy()
    kp[..., :2] *= s
    targets = m.codec.encode_keypoints(kp[record.num_keypoints_labelled > 0], (64, 64))
    targets["body"] = np.zeros((8, 8, 1), np.float32)
    targets["weights"] = np.ones((8, 8, 1), np.float32)
    y = {k: np.asarray(v)[None] for k, v in pack_targets(targets).items()}
    assert {k: v.shape[-1] for k, v in y.items()} == {"heatmaps": 18, "body": 2, "short_offsets": 51,
                                                      "mid_offsets": 270}
    m.compile(optimizer=keras.optimizers.SGD(1e-4), loss=strongpose_losses(), loss_weights=LOSS_WEIGHTS)
    logs = m.train_on_batch(image, y, return_dict=True)
    assert np.isfinite(logs["loss"]) and logs["loss"] > 0


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"backbone": "resnet34"}, "backbone: expected one of resnet18, resnet50, resnet101, resnet152, got 'resnet34'"),
    ({"output_stride": 4}, "output_stride: expected 8, 16 or 32, got 4"),
    ({"map_stride": 3}, "map_stride: expected a positive divisor of output_stride=16, got 3"),
    ({"head_kernel": 5}, "head_kernel: expected 1 or 3, got 5"),
    ({"input_shape": (64, 64)}, "input_shape"),
    ({"radius": -1}, "radius"),
])
def test_bad_model_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StrongPose(**{"backbone": "resnet18", **kwargs})


def test_bad_end_to_end_settings(model):
    with pytest.raises(ValueError, match=r"input_size: expected positive multiples of 16, got \(100, 96\)"):
        model.end_to_end((100, 96))
    # the decoding settings are named one by one, so exporters see which ones it takes
    with pytest.raises(TypeError, match="unexpected keyword argument 'stride'"):
        model.end_to_end((96, 96), stride=4)
    with pytest.raises(TypeError, match="unexpected keyword argument 'iou_threshold'"):
        model.end_to_end((96, 96), iou_threshold=0.5)
    assert set(DECODER_SETTINGS) < set(inspect.signature(StrongPose.end_to_end).parameters)
    assert set(DECODER_SETTINGS) < set(inspect.signature(StrongPose.predict_poses).parameters)
    with pytest.raises(ValueError, match="max_people"):
        model.end_to_end((96, 96), max_people=0)
    with pytest.raises(ValueError, match="keypoint_score"):
        model.end_to_end((96, 96), keypoint_score="oks")
    with pytest.raises(ValueError, match="targets: missing mid_offsets, mid_mask, body, weights"):
        pack_targets({"heatmaps": np.zeros((2, 2, 17)), "short_offsets": np.zeros((2, 2, 34))})
