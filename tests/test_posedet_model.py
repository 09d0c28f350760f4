"""PoseDet network, pose embedding, in-graph decoder (vs numpy OKS-NMS), losses (export:
test_posedet_export.py; training on real images: test_posedet_training.py)."""

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf

from kerapose.codecs.posedet import PoseDetCodec, pose_areas
from kerapose.evaluation import oks, oks_nms
from kerapose.heads.posedet import PoseEmbedding, RefinedOffsets
from kerapose.models.posedet import POSEDET_CONFIGS, PoseDet, PoseDetDecoder, PoseDetLoss
from kerapose.models.posedet.decoder import greedy_nms_tf
from kerapose.models.posedet.losses import candidate_oks, posedet_loss_terms
from kerapose.models.posedet.network import CandidatePoses
from kerapose.ops.sample import bilinear_sample
from kerapose.skeleton import COCO17

SIZE = (128, 128)
NUM_CANDIDATES = 16 * 16 + 8 * 8 + 4 * 4 + 2 * 2  # P3..P6 at 128x128
TINY = {k: v for k, v in POSEDET_CONFIGS["posedet-tiny"].items() if k != "backbone"}


def _spread_scores(model: PoseDet) -> PoseDet:
    """Random weights give every candidate nearly the prior score; spread them so that the ranking
    (and so the NMS) is far above float noise when runtimes are compared."""
    layer = model.get_layer("head").get_layer("head_cls_out")
    kernel, bias = layer.get_weights()
    layer.set_weights([np.random.default_rng(3).normal(0, 1, kernel.shape).astype("float32"), bias])
    return model


@pytest.fixture(scope="module")
def tiny():
    keras.utils.set_random_seed(5)
    return _spread_scores(PoseDet("resnet18", **TINY))


@pytest.fixture(scope="module")
def image(coco_val):
    rec = coco_val.record(coco_val.image_ids[0])
    return cv2.imread(rec.path)[..., ::-1].copy()


def test_builds_resnet18_and_mobilenetv2_and_round_trips(tiny, tmp_path):
    light = PoseDet("mobilenetv2", backbone_width=0.35, fpn_size=16, head_size=16, embed_size=16, name="light")
    x = np.random.default_rng(0).uniform(0, 255, (2, *SIZE, 3)).astype("float32")
    for model in (tiny, light):
        out = model(x)
        assert model.size_multiple == 32
        assert out["poses"].shape == out["coarse_poses"].shape == (2, NUM_CANDIDATES, 17, 2)
        assert out["logits"].shape == (2, NUM_CANDIDATES, 1)
        assert [out[n].shape[1] for n in model.heatmap_names] == [16, 8, 4, 2]
        path = str(tmp_path / f"{model.name}.keras")
        model.save(path)
        loaded = keras.saving.load_model(path)
        assert isinstance(loaded, PoseDet) and loaded.get_config() == model.get_config()
        again = loaded(x)
        for key in out:
            np.testing.assert_allclose(again[key], out[key], atol=1e-5)
    # one head shared by the four levels
    assert sum(isinstance(layer, PoseEmbedding) for layer in tiny.get_layer("head").layers) == 2
    train = tiny.training_model
    packed = train(x)
    assert packed["candidates"].shape == (2, NUM_CANDIDATES, 4 * 17 + 1)
    np.testing.assert_allclose(packed["candidates"][..., 2 * 17:4 * 17],
                               tf.reshape(tiny(x)["poses"], (2, NUM_CANDIDATES, 34)), atol=1e-5)
    assert tiny.training_model is train


def test_pose_embedding_samples_the_coarse_joints_and_scales_their_gradient():
    rng = np.random.default_rng(1)
    feats = tf.constant(rng.normal(size=(2, 5, 6, 3)), tf.float32)
    offsets = tf.Variable(rng.normal(0, 2, (2, 5, 6, 2 * 4)).astype("float32"))
    layer = PoseEmbedding(4, 7, gradient_scale=0.1)
    out = layer(feats, offsets).numpy()
    kernel = layer.kernel.numpy()
    # candidate (i, j) reads joint k at (j + dx_k, i + dy_k)
    jj, ii = np.meshgrid(np.arange(6), np.arange(5))
    pts = offsets.numpy().reshape(2, 5, 6, 4, 2) + np.stack([jj, ii], -1)[None, :, :, None, :]
    sampled = bilinear_sample(feats, pts.reshape(2, 30, 4, 2)).numpy().reshape(2, 5, 6, 12)
    np.testing.assert_allclose(out, sampled @ kernel, atol=1e-5)
    full = PoseEmbedding(4, 7, gradient_scale=1.0)
    full(feats, offsets)
    full.kernel.assign(kernel)
    grads = []
    for emb in (layer, full):
        with tf.GradientTape() as tape:
            y = tf.reduce_sum(tf.sin(emb(feats, offsets)))
        grads.append(tape.gradient(y, offsets).numpy())
    assert np.abs(grads[1]).max() > 0
    np.testing.assert_allclose(grads[0], 0.1 * grads[1], rtol=1e-4, atol=1e-7)
    coarse, delta = tf.Variable(tf.ones((1, 2))), tf.Variable(tf.ones((1, 2)))
    with tf.GradientTape() as tape:
        y = tf.reduce_sum(RefinedOffsets()(coarse, delta) * 3.0)
    g_coarse, g_delta = tape.gradient(y, [coarse, delta])
    assert g_coarse is None and np.all(g_delta.numpy() == 3.0)


def test_candidate_locations_match_the_codec():
    locs, strides = PoseDetCodec().candidates(SIZE)
    got = []
    for s in (8, 16, 32, 64):
        n = SIZE[0] // s
        static = CandidatePoses(s, 17)(tf.zeros((1, n, n, 34)))
        dynamic = tf.function(lambda t, layer=CandidatePoses(s, 17): layer(t),
                              input_signature=[tf.TensorSpec([None, None, None, 34])])(tf.zeros((1, n, n, 34)))
        np.testing.assert_array_equal(static.numpy(), dynamic.numpy())
        got.append(static.numpy()[0, :, 0])
    np.testing.assert_allclose(np.concatenate(got), locs)
    one = CandidatePoses(16, 17)(tf.fill((1, 8, 8, 34), 0.5)).numpy()
    np.testing.assert_allclose(one[0, :, 3], locs[strides == 16] + 8.0)  # offsets are in strides


def _numpy_decode(poses, scores, threshold, max_people, pre_nms_top_k, nms, nms_threshold):
    """Top-k, score threshold, greedy NMS with kerapose.evaluation's oks_nms (or an IoU loop)."""
    order = np.argsort(-scores, kind="stable")[:pre_nms_top_k]
    order = order[scores[order] > threshold]
    xy = poses[order]
    if nms == "oks":
        kp = np.concatenate([xy, np.ones(xy.shape[:2] + (1,))], -1)
        keep = oks_nms(kp, scores[order], pose_areas(xy), COCO17.sigmas_array, nms_threshold)
    else:
        boxes = np.concatenate([xy.min(1), xy.max(1)], -1)
        keep, alive = [], np.ones(len(order), bool)
        for i in range(len(order)):
            if not alive[i]:
                continue
            keep.append(i)
            x1 = np.maximum(boxes[i, 0], boxes[:, 0])
            y1 = np.maximum(boxes[i, 1], boxes[:, 1])
            x2 = np.minimum(boxes[i, 2], boxes[:, 2])
            y2 = np.minimum(boxes[i, 3], boxes[:, 3])
            inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
            area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            alive &= ~(inter / (area[i] + area - inter) > nms_threshold)
        keep = np.asarray(keep, int)
    keep = keep[:max_people]
    return xy[keep], scores[order][keep]


@pytest.mark.parametrize("nms, nms_threshold", [("oks", 0.5), ("oks", 0.2), ("oks", 0.9), ("iou", 0.5)])
def test_graph_nms_matches_numpy_reference(nms, nms_threshold):
    rng = np.random.default_rng(7)
    batch, a, m, top_k = 3, 120, 12, 60
    # clusters of near-duplicate poses (what dense candidates give) plus scattered ones
    centres = rng.uniform(60, 400, (batch, 8, 1, 2))
    shapes = rng.normal(0, 25, (batch, 8, 17, 2))
    base = centres + shapes
    pick = rng.integers(0, 8, (batch, a))
    poses = np.take_along_axis(base, pick[:, :, None, None], axis=1) + rng.normal(0, 4, (batch, a, 17, 2))
    logits = rng.normal(-1, 2, (batch, a, 1))
    kw = {"oks_threshold": nms_threshold} if nms == "oks" else {"iou_threshold": nms_threshold}
    dec = PoseDetDecoder("coco17", max_people=m, score_threshold=0.1, nms=nms, pre_nms_top_k=top_k, **kw)
    scale = np.array([1.0, 0.5, 2.0], np.float32)
    out = dec(tf.constant(poses, tf.float32), tf.constant(logits, tf.float32), tf.constant(scale),
              tf.constant([4000, 4000]))
    scores = 1 / (1 + np.exp(-logits[..., 0]))
    for b in range(batch):
        xy, sc = _numpy_decode(poses[b], scores[b], 0.1, m, top_k, nms, nms_threshold)
        n = int(out["num_poses"][b])
        assert n == len(sc) and 1 < n <= m
        np.testing.assert_allclose(out["scores"][b, :n], sc, rtol=1e-5)
        xy = np.clip(xy / scale[b], 0, 3999)  # into the image: x, y in [0, 3999]
        np.testing.assert_allclose(out["keypoints"][b, :n, :, :2], xy, rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(out["keypoints"][b, :n, :, 2], np.repeat(sc[:, None], 17, 1), rtol=1e-5)
        np.testing.assert_allclose(out["boxes"][b, :n], np.concatenate([xy.min(1), xy.max(1)], -1),
                                   rtol=1e-5, atol=1e-3)
        assert not out["scores"][b, n:].numpy().any() and not out["keypoints"][b, n:].numpy().any()
    # joints are clipped into the original image
    small = dec(tf.constant(poses, tf.float32), tf.constant(logits, tf.float32), tf.constant(scale),
                tf.constant([50, 80]))["keypoints"].numpy()
    assert small[..., 0].max() <= 79 and small[..., 1].max() <= 49 and small[..., :2].min() >= 0


def test_greedy_fixed_point_equals_the_sequential_loop():
    rng = np.random.default_rng(2)
    sim = rng.uniform(0, 1, (4, 40, 40)).astype("float32")
    valid = (rng.uniform(size=(4, 40)) > 0.2).astype("float32")
    keep = greedy_nms_tf(tf.constant(sim), tf.constant(valid), 0.7).numpy()
    for b in range(4):
        ref = np.zeros(40)
        for j in range(40):
            ref[j] = valid[b, j] and not any(ref[i] and sim[b, i, j] > 0.7 for i in range(j))
        np.testing.assert_array_equal(keep[b], ref)


def test_end_to_end_matches_the_network_and_predict_poses(tiny, image):
    e2e = tiny.end_to_end(SIZE, max_people=6, score_threshold=0.0, pre_nms_top_k=50)
    out = {k: np.asarray(v) for k, v in e2e(image[None]).items()}
    h, w = image.shape[:2]
    scale = min(SIZE[0] / h, SIZE[1] / w)
    nh, nw = round(h * scale), round(w * scale)
    canvas = np.zeros((1, *SIZE, 3), "float32")
    canvas[:, :nh, :nw] = tf.image.resize(image[None].astype("float32"), (nh, nw)).numpy()
    net = tiny(canvas)
    scores = 1 / (1 + np.exp(-net["logits"].numpy()[0, :, 0]))
    xy, sc = _numpy_decode(net["poses"].numpy()[0], scores, 0.0, 6, 50, "oks", 0.5)
    n = int(out["num_poses"][0])
    assert n == len(sc)
    np.testing.assert_allclose(out["scores"][0, :n], sc, rtol=1e-4)
    expected = np.clip(xy / scale, 0, [w - 1, h - 1])
    np.testing.assert_allclose(out["keypoints"][0, :n, :, :2], expected, rtol=1e-4, atol=0.02)
    got = tiny.predict_poses([image, image[:200, :300].copy()], input_size=SIZE, max_people=6, score_threshold=0.0,
                             pre_nms_top_k=50)
    np.testing.assert_allclose(got[0]["keypoints"], out["keypoints"][0, :n], atol=1e-3)
    assert got[1]["keypoints"].shape[1:] == (17, 3) and got[1]["keypoints"][..., 0].max() <= 299
    iou = tiny.end_to_end(SIZE, max_people=6, score_threshold=0.0, pre_nms_top_k=50, nms="iou")(image[None])
    assert int(iou["num_poses"][0]) >= 1


def test_loss_terms_on_a_known_case():
    codec = PoseDetCodec(max_people=3)
    rng = np.random.default_rng(4)
    kp = np.zeros((2, 17, 3))
    kp[0, :, :2] = rng.uniform(20, 60, (17, 2))
    kp[1, :, :2] = rng.uniform(70, 120, (17, 2))
    kp[..., 2] = 2
    kp[1, 5, 2] = 0
    boxes = np.concatenate([kp[:, :, :2].min(1), kp[:, :, :2].max(1)], -1)
    t = codec.encode(kp, boxes, SIZE, areas=[1500.0, 2000.0])
    y_true = codec.pack(t)["candidates"][None]
    locs, strides = codec.candidates(SIZE)
    a = len(locs)
    coarse = np.repeat(locs[:, None], 17, 1)  # every candidate: all joints on itself
    assigned = np.flatnonzero(t["gt_index"] >= 0)
    for cand in assigned:  # the assigned candidates' coarse poses hit their person exactly
        coarse[cand] = kp[t["gt_index"][cand], :, :2]
    refined = coarse + 3.0  # 3 px off on both axes
    logits = np.full((a, 1), -2.0)
    y_pred = np.concatenate([coarse.reshape(a, 34), refined.reshape(a, 34), logits], -1)[None].astype("float32")
    terms = posedet_loss_terms(tf.constant(y_true), tf.constant(y_pred), COCO17.sigmas)
    assert float(terms["coarse"][0]) == pytest.approx(0.0, abs=1e-4)
    # the two exact coarse poses have OKS 1: the refinement and classification positives
    assert float(terms["num_refine"]) == float(terms["num_cls"]) == float(terms["num_coarse"]) == 2
    labelled = kp[t["gt_index"][assigned], :, 2] > 0
    dist = np.sqrt(18.0) / (4.0 * strides[assigned])[:, None] * labelled
    assert float(terms["refine"][0]) == pytest.approx(dist.sum() / 2, rel=1e-4)
    p = 1 / (1 + np.exp(2.0))
    pos = 0.25 * (1 - p) ** 2 * -np.log(p)
    # every other candidate is a negative unless its coarse pose overlaps a person by OKS >= 0.5
    oks_all = oks(kp, [1500.0, 2000.0], np.concatenate([coarse, np.ones((a, 17, 1))], -1)).max(1)
    neg = 0.75 * p ** 2 * -np.log(1 - p) * (oks_all < 0.5).sum()
    assert float(terms["cls"][0]) == pytest.approx((2 * pos + neg) / 2, rel=1e-4)
    loss = PoseDetLoss(coarse_weight=0.5)
    again = PoseDetLoss.from_config(loss.get_config())
    y_true_t, y_pred_t = tf.constant(y_true), tf.constant(y_pred)
    assert float(again(y_true_t, y_pred_t)) == pytest.approx(float(loss(y_true_t, y_pred_t)))
    assert float(loss(y_true_t, y_pred_t)) == pytest.approx(0.2 * float(terms["refine"][0]) + float(terms["cls"][0]))
    graph_oks = candidate_oks(tf.constant(coarse[None], tf.float32), tf.constant(kp[None], tf.float32),
                              tf.constant([[1500.0, 2000.0]]), COCO17.sigmas).numpy()[0]
    np.testing.assert_allclose(graph_oks, oks(kp, [1500.0, 2000.0], np.concatenate([coarse, np.ones((a, 17, 1))],
                                                                                   -1)), atol=1e-5)


def test_bad_inputs_are_value_errors(tiny):
    with pytest.raises(ValueError, match="unknown PoseDet backbone 'vgg16'; accepted: resnet18, resnet50"):
        PoseDet("vgg16")
    with pytest.raises(ValueError, match="input height 100 is not accepted: it must be a positive multiple of 32"):
        PoseDet("resnet18", input_shape=(100, 128, 3), **TINY)
    with pytest.raises(ValueError, match="multiples of 32"):
        tiny.end_to_end((100, 128))
    with pytest.raises(ValueError, match="nms: expected one of oks, iou, got 'soft'"):
        tiny.end_to_end(SIZE, nms="soft")
    with pytest.raises(ValueError, match="levels: expected consecutive levels"):
        PoseDet("resnet18", levels=(3, 5), **TINY)
    with pytest.raises(ValueError, match="norm: expected one of group, batch, none"):
        PoseDet("resnet18", norm="layer", **TINY)
    with pytest.raises(ValueError, match="expected a uint8 image"):
        tiny.predict_poses([np.zeros((64, 64, 3), np.float32)], input_size=SIZE)
