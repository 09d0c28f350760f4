"""`kerapose oracle`: encode ground truth, decode it, score it with pycocotools."""

import json

import pytest

from kerapose.cli import main as cli_main


def _oracle(capsys, root, codec, *extra):
    assert cli_main(["oracle", "--codec", codec, "--data-root", str(root), "--split", "val2017", "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize(
    "codec,lo,hi",
    [
        ("heatmap", 0.99, 1.0),  # stride 4: peaks + sub-pixel refinement lose nothing measurable
        ("boxes", 0.95, 1.0),
        # GT boxes + GT heatmaps with per-box maxima: crowded boxes pick other people's joints
        ("prn", 0.75, 0.95),
        # greedy grouping with OpenPose's thresholds; bounded by people with < 4 connected parts
        ("paf", 0.80, 0.90),
    ],
)
def test_oracle_json(capsys, coco_mini_root, codec, lo, hi):
    res = _oracle(capsys, coco_mini_root, codec)
    assert res["codec"] == codec and res["images"] == 28
    assert lo <= res["AP"] <= hi, res
    for key in ("AP50", "AP75", "APM", "APL", "AR"):
        assert 0.0 <= res[key] <= 1.0
    if codec != "boxes":
        assert set(res["per_keypoint"]) >= {"nose", "left_ankle"}


def test_oracle_bad_input(capsys, tmp_path, coco_mini_root):
    assert cli_main(["oracle", "--codec", "heatmap", "--data-root", str(tmp_path), "--split", "val2017"]) == 2
    err = capsys.readouterr().err
    assert "person_keypoints_val2017.json" in err and "not found" in err
    with pytest.raises(SystemExit):
        cli_main(["oracle", "--codec", "nope", "--data-root", str(coco_mini_root), "--split", "val2017"])
