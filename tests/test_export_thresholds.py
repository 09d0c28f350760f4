"""End-to-end exports keep the model's own person threshold unless told one.

Exports used to fix ``score_threshold=0.3`` for every family, so a StrongPose export (its own
default 0: a person's score is the mean of its 17 keypoint scores) dropped people that the Keras
model, ``kerapose predict`` and ``eval`` keep, and PAF exports overrode the grouping's own
``min_person_score``. These build the end-to-end graphs (no conversion) and read the threshold
that their decoding layers hold.
"""

from __future__ import annotations

import pytest


def _decoder_threshold(e2e, layer: str, key: str) -> float:
    return float(e2e.get_layer(layer).get_config()[key])


@pytest.fixture(scope="module")
def models():
    from kerapose.models.multiposenet.network import MultiPoseNet
    from kerapose.models.registry import load_any_model
    from kerapose.models.strongpose.network import StrongPose

    return {
        "strongpose": (StrongPose("resnet18", backbone_width=0.25), (128, 128), "decoder", "score_threshold"),
        "multiposenet": (MultiPoseNet("resnet18", backbone_width=0.25, fpn_size=16, keypoint_head_size=16,
                                      keypoint_fuse_size=16, prn_hidden=8, input_shape=(128, 128, 3)),
                         (128, 128), "decoder", "score_threshold"),
        "paf": (load_any_model("paf-mobilenetv2-small"), (64, 64), "grouping", "min_person_score"),
    }


@pytest.mark.parametrize("family, own", [("strongpose", 0.0), ("multiposenet", 0.3), ("paf", None)])
def test_end_to_end_export_keeps_the_models_own_threshold_or_the_one_given(models, family, own):
    from kerapose.export.savedmodel import serving_model

    model, size, layer, key = models[family]
    e2e, _, meta = serving_model(model, True, size)
    keras_default = model.end_to_end(size)  # what predict / eval build for the Keras model
    assert _decoder_threshold(e2e, layer, key) == _decoder_threshold(keras_default, layer, key)
    assert meta["score_threshold"] == own  # null: the PAF grouping's own min_person_score
    if own is not None:
        assert _decoder_threshold(e2e, layer, key) == own

    e2e, _, meta = serving_model(model, True, size, score_threshold=0.45)
    assert _decoder_threshold(e2e, layer, key) == pytest.approx(0.45) and meta["score_threshold"] == 0.45


def test_cli_refuses_a_score_threshold_for_a_raw_export(tmp_path, capsys):
    from kerapose.cli import main

    rc = main(["export", "--model", "paf-mobilenetv2-small", "--format", "tflite", "--raw", "--score-threshold",
               "0.2", "--output", str(tmp_path / "raw.tflite")])
    assert rc == 2
    assert "--score-threshold is fixed in end-to-end exports" in capsys.readouterr().err
    assert not (tmp_path / "raw.tflite").exists()
