import numpy as np
import pytest

from kerapose.skeleton import (
    COCO17, OPENPOSE18, KeypointSet, coco17_to_openpose18, get_keypoint_set, openpose18_to_coco17,
    register_keypoint_set,
)


def test_coco17_matches_official_category(coco_val):
    cat = coco_val.coco.loadCats([1])[0]
    assert list(COCO17.keypoints) == cat["keypoints"]
    official = {tuple(sorted((a - 1, b - 1))) for a, b in cat["skeleton"]}
    assert {tuple(sorted(l)) for l in COCO17.limbs} == official


def test_flip_index_is_an_involution_swapping_left_right():
    for ks in (COCO17, OPENPOSE18):
        p = ks.flip_index
        assert np.array_equal(p[p], np.arange(ks.num_keypoints))
        for i, name in enumerate(ks.keypoints):
            other = ks.keypoints[p[i]]
            assert other == name.replace("left", "X").replace("right", "left").replace("X", "right")


def test_spanning_tree_reaches_every_keypoint_in_order():
    for ks, root in ((COCO17, 0), (OPENPOSE18, 1)):
        tree, redundant = ks.spanning_tree(root)
        assert len(tree) == ks.num_keypoints - 1
        assert sorted(tree + redundant) == list(range(ks.num_limbs))
        reached = {root}
        for li in tree:
            a, b = ks.limbs[li]
            assert (a in reached) != (b in reached), "each tree limb adds exactly one new keypoint"
            reached |= {a, b}
        assert reached == set(range(ks.num_keypoints))


def test_openpose_mapping_round_trip_and_neck():
    kp = np.random.default_rng(0).uniform(0, 100, (3, 17, 3))
    kp[..., 2] = 2
    kp[1, 6, 2] = 0  # right shoulder missing -> no neck
    op = coco17_to_openpose18(kp)
    assert op.shape == (3, 18, 3)
    np.testing.assert_allclose(openpose18_to_coco17(op), kp)
    np.testing.assert_allclose(op[0, 1, :2], (kp[0, 5, :2] + kp[0, 6, :2]) / 2)
    assert op[1, 1, 2] == 0
    assert OPENPOSE18.num_heatmap_channels == 19 and OPENPOSE18.num_paf_channels == 38


def test_custom_keypoint_set_and_errors():
    hand = register_keypoint_set(KeypointSet("test_hand3", ("wrist", "thumb", "index"), (), ((0, 1), (0, 2)),
                                             (0.05, 0.03, 0.03)))
    assert get_keypoint_set("test_hand3") is hand and hand.index("thumb") == 1
    with pytest.raises(ValueError, match="sigmas has 2 entries"):
        KeypointSet("bad", ("a", "b", "c"), (), (), (0.1, 0.1))
    with pytest.raises(ValueError, match="limb"):
        KeypointSet("bad", ("a", "b"), (), ((0, 5),), (0.1, 0.1))
    with pytest.raises(ValueError, match="unknown keypoint set 'nope'"):
        get_keypoint_set("nope")
    with pytest.raises(ValueError, match="not in set"):
        COCO17.index("tail")


def test_keypoint_mapping_is_declared_by_names_and_derived_keypoints():
    from kerapose.skeleton import coco_results_set, convert_keypoints, keypoint_mapping

    to_coco = keypoint_mapping("openpose18", "coco17")
    assert [OPENPOSE18.keypoints[i] for (i,) in to_coco] == list(COCO17.keypoints)  # neck dropped
    to_op = keypoint_mapping(COCO17, OPENPOSE18)
    assert to_op[1] == (COCO17.index("left_shoulder"), COCO17.index("right_shoulder"))  # the neck, derived
    assert all(len(m) == 1 for j, m in enumerate(to_op) if j != 1)
    # the third channel (visibility or score): a derived keypoint takes the lower of its sources'
    kp = np.random.default_rng(1).uniform(1, 50, (2, 17, 3))
    op = convert_keypoints(kp.astype(np.float32), "coco17", "openpose18")
    assert op.dtype == np.float32 and op.shape == (2, 18, 3)
    np.testing.assert_allclose(op[:, 1, 2], np.minimum(kp[:, 5, 2], kp[:, 6, 2]), rtol=1e-6)
    five = convert_keypoints(np.ones((4, 18, 5)), "openpose18", "coco17")  # copies keep every channel
    assert five.shape == (4, 17, 5)
    with pytest.raises(ValueError, match="needs \\(x, y, v\\)"):
        convert_keypoints(np.ones((17, 2)), "coco17", "openpose18")
    with pytest.raises(ValueError, match=r"expected \[..., 17, C\]"):
        convert_keypoints(np.ones((18, 3)), "coco17", "openpose18")

    # a custom set: shares some names with COCO, derives a pelvis; a partial set keeps its own rows
    body = KeypointSet("test_body5", ("nose", "left_hip", "right_hip", "pelvis", "tail"), (), (), (0.1,) * 5,
                       derived=(("pelvis", ("left_hip", "right_hip")),))
    from_coco = convert_keypoints(kp, COCO17, body)
    np.testing.assert_allclose(from_coco[:, 3, :2], (kp[:, 11, :2] + kp[:, 12, :2]) / 2)
    assert (from_coco[:, 4] == 0).all()  # COCO has no tail: missing
    back = convert_keypoints(from_coco, body, COCO17)
    np.testing.assert_allclose(back[:, [0, 11, 12]], kp[:, [0, 11, 12]])
    assert (back[:, 1:11] == 0).all()
    assert coco_results_set(body) is body  # not every COCO keypoint: results stay in its own set
    assert coco_results_set(OPENPOSE18) is COCO17 and coco_results_set("coco17") is COCO17
    hand = KeypointSet("test_hand2", ("wrist", "thumb"), (), (), (0.1, 0.1))
    with pytest.raises(ValueError, match="share no keypoint"):
        convert_keypoints(np.ones((1, 2, 3)), hand, COCO17)
    with pytest.raises(ValueError, match="derived keypoint 'neck' is not in the set"):
        KeypointSet("bad", ("a",), (), (), (0.1,), derived=(("neck", ("a",)),))
    with pytest.raises(ValueError, match="derived entries"):
        KeypointSet("bad", ("a",), (), (), (0.1,), derived=(("a", ()),))
