"""Training losses against numpy references, in model.fit with dict outputs, in float16."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from kerapose.losses import MaskedL2, RetinaFocalLoss, RetinaSmoothL1, pack_box_targets, pack_weights, prn_loss


def _np(x) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(x))


# ----------------------------------------------------------------- numpy references


def ref_masked_l2(pred, target, weight):
    return 0.5 * np.sum(weight * (pred.astype(np.float64) - target) ** 2) / pred.shape[0]


def ref_focal(labels, logits, alpha=0.25, gamma=2.0):
    x = logits.astype(np.float64)
    valid = labels != -1
    y = np.where(valid, labels, 0)
    log_p = -np.logaddexp(0, -x)  # log sigmoid(x)
    log_q = -np.logaddexp(0, x)  # log (1 - sigmoid(x))
    p = np.exp(log_p)
    per = np.where(y == 1, -alpha * (1 - p) ** gamma * log_p, -(1 - alpha) * p**gamma * log_q)
    return np.sum(per * valid) / max(1, np.sum(labels == 1))


def ref_smooth_l1(state, target, pred, sigma=3.0):
    pos = state == 1
    d = np.abs(pred.astype(np.float64) - target)[pos]
    s2 = sigma**2
    per = np.where(d < 1 / s2, 0.5 * s2 * d**2, d - 0.5 / s2)
    return per.sum() / max(1, pos.sum())


# ------------------------------------------------------------------------ MaskedL2


@pytest.mark.parametrize("weights", ["shared", "per_channel", "none"])
def test_masked_l2_matches_numpy(weights):
    rng = np.random.default_rng(0)
    pred = rng.normal(size=(3, 5, 6, 4)).astype(np.float32)
    target = rng.random((3, 5, 6, 4)).astype(np.float32)
    if weights == "shared":
        w = (rng.random((3, 5, 6, 1)) > 0.3).astype(np.float32)
        y_true = pack_weights(target, w[..., 0])  # [B, H, W] is expanded to one channel
        assert y_true.shape[-1] == 5
    elif weights == "per_channel":
        w = rng.random((3, 5, 6, 4)).astype(np.float32)
        y_true = pack_weights(target, w)
    else:
        w = np.ones_like(target)
        y_true = target
    got = float(MaskedL2()(y_true, pred))
    np.testing.assert_allclose(got, ref_masked_l2(pred, target, w), rtol=1e-5)
    # The weights matter: all-zero W gives zero loss.
    if weights != "none":
        assert float(MaskedL2()(pack_weights(target, np.zeros_like(w)), pred)) == 0.0


def test_masked_l2_rejects_bad_channels():
    with pytest.raises(ValueError, match="channels"):
        MaskedL2()(np.zeros((1, 2, 2, 7)), np.zeros((1, 2, 2, 4)))
    with pytest.raises(ValueError, match="weight"):
        pack_weights(np.zeros((1, 2, 2, 4)), np.zeros((1, 2, 2, 3)))
    with pytest.raises(ValueError, match="scale"):
        MaskedL2(scale=0)


def test_losses_cast_float16_to_float32():
    rng = np.random.default_rng(1)
    # Squared differences of 300 overflow float16 (max 65504); float32 holds them.
    pred = np.full((2, 3, 3, 2), 300.0, np.float16)
    target = np.zeros((2, 3, 3, 2), np.float16)
    w = np.ones((2, 3, 3, 1), np.float16)
    y_true = np.concatenate([target, w], axis=-1)
    loss = MaskedL2().call(y_true, pred)  # the raw per-sample values, before Keras' own cast
    assert loss.dtype == "float32" and np.isfinite(_np(loss)).all()
    np.testing.assert_allclose(float(MaskedL2()(y_true, pred)), ref_masked_l2(pred, target, w), rtol=1e-6)

    labels = rng.choice([-1.0, 0.0, 1.0], size=(2, 40, 1)).astype(np.float16)
    logits = rng.normal(scale=3, size=(2, 40, 1)).astype(np.float16)
    out = RetinaFocalLoss().call(labels, logits)
    assert out.dtype == "float32"
    np.testing.assert_allclose(float(RetinaFocalLoss()(labels, logits)), ref_focal(labels, logits), rtol=1e-4)

    state = rng.choice([-1.0, 0.0, 1.0], size=(2, 40)).astype(np.float16)
    box_t = rng.normal(size=(2, 40, 4)).astype(np.float16)
    box_p = rng.normal(size=(2, 40, 4)).astype(np.float16)
    y = np.concatenate([box_t, state[..., None]], -1)
    assert RetinaSmoothL1().call(y, box_p).dtype == "float32"
    np.testing.assert_allclose(float(RetinaSmoothL1()(y, box_p)), ref_smooth_l1(state, box_t, box_p), rtol=1e-5)

    probs = rng.dirichlet(np.ones(12), size=(2, 3)).reshape(2, 3, 4, 3).astype(np.float16)
    onehot = (rng.random((2, 3, 4, 3)) > 0.8).astype(np.float16)
    assert keras.backend.standardize_dtype(prn_loss()(onehot, probs).dtype) == "float32"


# ----------------------------------------------------------------------- RetinaNet


def test_focal_loss_matches_numpy():
    rng = np.random.default_rng(2)
    labels = rng.choice([-1.0, 0.0, 1.0], p=[0.2, 0.7, 0.1], size=(3, 200, 1)).astype(np.float32)
    logits = rng.normal(scale=2.5, size=(3, 200, 1)).astype(np.float32)
    got = float(RetinaFocalLoss()(labels, logits))
    np.testing.assert_allclose(got, ref_focal(labels, logits), rtol=1e-5)
    # Other alpha / gamma are honoured, and ignored anchors do not count whatever their logit.
    np.testing.assert_allclose(float(RetinaFocalLoss(alpha=0.5, gamma=0.0)(labels, logits)),
                               ref_focal(labels, logits, 0.5, 0.0), rtol=1e-5)
    moved = np.where(labels == -1, 50.0, logits).astype(np.float32)
    np.testing.assert_allclose(float(RetinaFocalLoss()(labels, moved)), got, rtol=1e-6)


def test_focal_loss_zero_positive_and_all_ignored():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(2, 30, 1)).astype(np.float32)
    negatives = np.zeros((2, 30, 1), np.float32)
    got = float(RetinaFocalLoss()(negatives, logits))
    assert np.isfinite(got) and got > 0
    np.testing.assert_allclose(got, ref_focal(negatives, logits), rtol=1e-5)  # normaliser 1
    ignored = np.full((2, 30, 1), -1.0, np.float32)
    assert float(RetinaFocalLoss()(ignored, logits)) == 0.0
    grad = _grad(RetinaFocalLoss(), ignored, logits)
    assert np.isfinite(grad).all() and not grad.any()


def test_smooth_l1_matches_numpy():
    rng = np.random.default_rng(4)
    state = rng.choice([-1.0, 0.0, 1.0], p=[0.2, 0.6, 0.2], size=(3, 100)).astype(np.float32)
    target = rng.normal(scale=0.3, size=(3, 100, 4)).astype(np.float32)
    pred = target + rng.normal(scale=0.15, size=(3, 100, 4)).astype(np.float32)  # both branches
    d = np.abs(pred - target)[state == 1]
    assert (d < 1 / 9).any() and (d > 1 / 9).any()
    y_true = pack_box_targets(target, state)
    np.testing.assert_allclose(float(RetinaSmoothL1()(y_true, pred)), ref_smooth_l1(state, target, pred), rtol=1e-5)
    np.testing.assert_allclose(float(RetinaSmoothL1(sigma=1.0)(y_true, pred)),
                               ref_smooth_l1(state, target, pred, sigma=1.0), rtol=1e-5)


def test_smooth_l1_zero_positive_and_garbage_targets():
    rng = np.random.default_rng(5)
    pred = rng.normal(size=(2, 20, 4)).astype(np.float32)
    state = np.zeros((2, 20), np.float32)
    state[0, :3] = -1
    # Non-positive anchors' targets never matter, not even NaN.
    target = np.full((2, 20, 4), np.nan, np.float32)
    y = pack_box_targets(target, state)
    assert float(RetinaSmoothL1()(y, pred)) == 0.0
    grad = _grad(RetinaSmoothL1(), y, pred)
    assert np.isfinite(grad).all() and not grad.any()
    with pytest.raises(ValueError, match=r"\[\.\.\., 5\]"):
        RetinaSmoothL1()(np.zeros((1, 3, 4)), np.zeros((1, 3, 4)))


def _grad(loss, y_true, y_pred):
    import tensorflow as tf

    x = tf.Variable(y_pred)
    with tf.GradientTape() as tape:
        value = loss(y_true, x)
    return tape.gradient(value, x).numpy()


# ----------------------------------------------------------------------------- PRN


def test_prn_loss_matches_numpy():
    rng = np.random.default_rng(6)
    b, h, w, k = 2, 8, 6, 3
    logits = rng.normal(size=(b, h * w, k))
    probs = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).reshape(b, h, w, k).astype(np.float32)
    target = np.zeros((b, h, w, k), np.float32)
    target[:, 2, 3, :] = 1.0
    p = np.clip(probs.astype(np.float64), 1e-7, 1 - 1e-7)
    ref = np.mean(-(target * np.log(p) + (1 - target) * np.log(1 - p)))
    np.testing.assert_allclose(float(prn_loss()(target, probs)), ref, rtol=1e-5)


# ------------------------------------------------------------------ Keras integration


def test_losses_in_model_fit_with_dict_outputs():
    """The MultiPoseNet output names, one packed target each; evaluate == numpy references."""
    keras.utils.set_random_seed(0)
    b, k = 4, 3
    inp = keras.Input((8, 8, 2), name="image")
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inp)
    outputs = {
        "heatmaps": keras.layers.Conv2D(k + 1, 1, name="heatmaps")(x),
        "heatmaps_k2": keras.layers.Conv2D(k + 1, 1, name="heatmaps_k2")(x),
        "person_logits": keras.layers.Reshape((64 * 2, 1), name="person_logits")(keras.layers.Conv2D(2, 1)(x)),
        "person_boxes": keras.layers.Reshape((64, 4), name="person_boxes")(keras.layers.Conv2D(4, 1)(x)),
    }
    model = keras.Model(inp, outputs)
    rng = np.random.default_rng(7)
    images = rng.normal(size=(b, 8, 8, 2)).astype(np.float32)
    heat = rng.random((b, 8, 8, k + 1)).astype(np.float32)
    w = (rng.random((b, 8, 8)) > 0.2).astype(np.float32)
    packed = np.asarray(pack_weights(heat, w))
    labels = rng.choice([-1.0, 0.0, 1.0], p=[0.2, 0.7, 0.1], size=(b, 128, 1)).astype(np.float32)
    state = rng.choice([0.0, 1.0], size=(b, 64)).astype(np.float32)
    boxes = rng.normal(scale=0.2, size=(b, 64, 4)).astype(np.float32)
    y = {"heatmaps": packed, "heatmaps_k2": packed, "person_logits": labels,
         "person_boxes": np.asarray(pack_box_targets(boxes, state))}
    model.compile(
        optimizer=keras.optimizers.SGD(1e-3),
        loss={"heatmaps": MaskedL2(), "heatmaps_k2": MaskedL2(), "person_logits": RetinaFocalLoss(),
              "person_boxes": RetinaSmoothL1()},
    )
    pred = model.predict(images, verbose=0)
    expected = (ref_masked_l2(pred["heatmaps"], heat, w[..., None])
                + ref_masked_l2(pred["heatmaps_k2"], heat, w[..., None])
                + ref_focal(labels, pred["person_logits"])
                + ref_smooth_l1(state, boxes, pred["person_boxes"]))
    got = model.evaluate(images, y, batch_size=b, verbose=0, return_dict=True)["loss"]
    np.testing.assert_allclose(got, expected, rtol=1e-4)
    hist = model.fit(images, y, batch_size=b, epochs=2, verbose=0)
    assert all(np.isfinite(hist.history["loss"]))


def test_losses_serialize_round_trip():
    for loss in (MaskedL2(scale=1.0, name="hm"), RetinaFocalLoss(alpha=0.3, gamma=1.5),
                 RetinaSmoothL1(sigma=2.0), prn_loss()):
        cfg = keras.saving.serialize_keras_object(loss)
        back = keras.saving.deserialize_keras_object(cfg)
        assert type(back) is type(loss) and back.get_config() == loss.get_config()
    assert keras.saving.get_registered_name(MaskedL2) == "kerapose>MaskedL2"
