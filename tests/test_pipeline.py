"""tf.data pipeline: shapes, determinism, sharding, corrupt images skipped and counted."""

import os
import shutil

import cv2
import numpy as np
import pytest

from kerapose.data.augment import AugmentConfig
from kerapose.data.coco import CocoKeypoints
from kerapose.data.pipeline import MultiPoseNetTargets, SkipCounter, keypoint_dataset, prn_dataset, read_image
from kerapose.data.synthetic import generate_synthetic_coco
from kerapose.codecs.prn import PRNCodec

SIZE = (64, 64)


@pytest.fixture(scope="module")
def syn_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn") / "data"
    generate_synthetic_coco(str(root), num_train=8, num_val=4, image_size=SIZE, seed=3, progress=False)
    return root


def _cfg():
    return AugmentConfig(output_size=SIZE, rotation_deg=15, center="image", fit_image=True)


def test_batches_match_model_outputs(syn_root):
    from kerapose.models import MultiPoseNet

    ds = CocoKeypoints(str(syn_root), "train")
    targets = MultiPoseNetTargets("coco17", SIZE)
    images, t = next(iter(keypoint_dataset(ds, targets, _cfg(), batch_size=4)))
    assert images.shape == (4, *SIZE, 3) and images.dtype.name == "float32"
    model = MultiPoseNet("resnet18", input_shape=(*SIZE, 3), fpn_size=16, keypoint_fuse_size=16, prn_hidden=8)
    for name, target in t.items():
        out = model.output[name]
        assert tuple(target.shape[1:-1]) == tuple(out.shape[1:-1]), name
    # heatmaps: K heatmaps + person mask + shared W; the Gaussians peak at 1
    heat = t["heatmaps"].numpy()
    assert heat.shape[-1] == 17 + 2
    assert 0.9 < heat[..., :17].max() <= 1.0 + 1e-6
    assert set(np.unique(heat[..., 18])) <= {0.0, 1.0}
    states = np.unique(t["person_logits"].numpy())
    assert set(states) <= {-1.0, 0.0, 1.0} and 1.0 in states


def test_deterministic_and_seeded(syn_root):
    ds = CocoKeypoints(str(syn_root), "train")
    targets = MultiPoseNetTargets("coco17", SIZE, person_targets=False)

    def first(seed):
        d = keypoint_dataset(ds, targets, _cfg(), batch_size=4, seed=seed, deterministic=True, num_parallel_calls=2)
        return next(iter(d))[0].numpy()

    np.testing.assert_array_equal(first(1), first(1))
    assert np.abs(first(1) - first(2)).max() > 0


def test_evaluation_pipelines_run_without_autotuning(syn_root):
    # Keras rebuilds the validation iterator every epoch; deleting one that tf.data autotunes
    # waits for the autotuning thread (stalls of 24-28 s per epoch measured in the quickstart).
    ds = CocoKeypoints(str(syn_root), "val")
    targets = MultiPoseNetTargets("coco17", SIZE, person_targets=False)
    val = keypoint_dataset(ds, targets, _cfg(), batch_size=3, shuffle=False, repeat=False)
    assert val.options().autotune.enabled is False
    assert sum(int(b[0].shape[0]) for b in val) == len(ds.image_ids)  # every image once, last batch kept
    train = keypoint_dataset(ds, targets, _cfg(), batch_size=3)
    assert train.options().autotune.enabled is not False
    codec = PRNCodec("coco17")
    prn_val, n = prn_dataset(ds, codec, batch_size=4, shuffle=False, flip=False, repeat=False)
    assert prn_val.options().autotune.enabled is False
    assert sum(int(b[0].shape[0]) for b in prn_val) == n
    assert prn_dataset(ds, codec, batch_size=4)[0].options().autotune.enabled is not False


def test_shards_partition_the_images(syn_root):
    ds = CocoKeypoints(str(syn_root), "train")
    targets = MultiPoseNetTargets("coco17", SIZE, person_targets=False)
    counts = []
    for index in range(2):
        d = keypoint_dataset(ds, targets, _cfg(), batch_size=1, repeat=False, shuffle=False, shard=(2, index))
        counts.append(sum(1 for _ in d))
    assert counts == [4, 4]


def test_corrupt_image_is_skipped_and_counted(syn_root, tmp_path):
    root = tmp_path / "broken"
    shutil.copytree(syn_root, root)
    ds = CocoKeypoints(str(root), "train")
    victim = ds.record(ds.image_ids[2]).path
    with open(victim, "wb") as f:
        f.write(b"not a jpeg")
    skips = SkipCounter()
    targets = MultiPoseNetTargets("coco17", SIZE, person_targets=False)
    d = keypoint_dataset(ds, targets, _cfg(), batch_size=1, repeat=False, skips=skips)
    assert sum(1 for _ in d) == len(ds) - 1
    assert skips.counts == {"unreadable image": 1}
    assert os.path.basename(victim) in skips.report()


def test_every_image_corrupt_fails_loudly(syn_root, tmp_path):
    root = tmp_path / "allbroken"
    shutil.copytree(syn_root, root)
    for name in os.listdir(root / "train"):
        (root / "train" / name).write_bytes(b"")
    ds = CocoKeypoints(str(root), "train")
    d = keypoint_dataset(ds, MultiPoseNetTargets("coco17", SIZE, person_targets=False), _cfg(), batch_size=2)
    with pytest.raises(Exception, match="every image was skipped"):
        next(iter(d))


def test_read_image_converts_odd_formats(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "rgb.png"), rgb[..., ::-1])
    np.testing.assert_array_equal(read_image(str(tmp_path / "rgb.png")), rgb)
    cv2.imwrite(str(tmp_path / "gray.png"), rgb[..., 0])
    assert read_image(str(tmp_path / "gray.png")).shape == (5, 7, 3)
    rgba = np.dstack([rgb[..., ::-1], np.full((5, 7), 255, np.uint8)])
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba)
    np.testing.assert_array_equal(read_image(str(tmp_path / "rgba.png")), rgb)
    cv2.imwrite(str(tmp_path / "deep.png"), rgb[..., ::-1].astype(np.uint16) * 257)
    np.testing.assert_array_equal(read_image(str(tmp_path / "deep.png")), rgb)
    (tmp_path / "text.jpg").write_text("hello")
    with pytest.raises(ValueError, match="text.jpg: not a readable image"):
        read_image(str(tmp_path / "text.jpg"))


def test_prn_pairs_with_flips(syn_root):
    ds = CocoKeypoints(str(syn_root), "train")
    codec = PRNCodec("coco17")
    d, n = prn_dataset(ds, codec, batch_size=4, repeat=False, shuffle=False)
    _, n_noflip = prn_dataset(ds, codec, batch_size=4, repeat=False, flip=False)
    assert n == 2 * n_noflip > 0
    x, y = next(iter(d))
    assert x.shape[1:] == (56, 36, 17) and y.shape == x.shape
    # targets are one-hot per labelled channel
    sums = y.numpy().sum(axis=(1, 2))
    assert set(np.round(np.unique(sums), 5)) <= {0.0, 1.0}


class _GroundTruthHeatmaps:
    """Stands in for a trained keypoint subnet: returns the heatmap codec's encoding of each
    image's ground truth (at the network scale), and records the images it was given."""

    def __init__(self, records, scale, size, stride=4):
        from kerapose.codecs.heatmap import HeatmapCodec

        codec = HeatmapCodec("coco17", stride=stride)
        self.maps = []
        for rec in records:
            kp = rec.keypoints.astype(np.float64).copy()
            kp[..., :2] *= scale
            self.maps.append(np.concatenate([codec.encode(kp, size), np.zeros((*codec.output_size(size), 1))], -1))
        self.seen = []

    def __call__(self, images, training=False):
        n = len(self.seen)
        self.seen += list(np.asarray(images))
        return {"heatmaps": np.stack(self.maps[n:n + len(images)]).astype(np.float32)}


def test_network_prn_pairs_crop_the_models_heatmaps(syn_root, tmp_path):
    """PRN pairs from a keypoint model's heatmaps: the images go in letterboxed (tf.image.resize
    as the reference), each annotated person gives one crop at its ground-truth box, and the
    crops of a model that outputs the ground-truth heatmaps decode (PRN codec, per-channel
    argmax) back to the owner's keypoints; targets equal the annotation pairs' targets."""
    import tensorflow as tf

    from kerapose.data.pipeline import annotation_prn_pairs, network_prn_pairs

    ds = CocoKeypoints(str(syn_root), "train")
    codec = PRNCodec("coco17")
    size = (2 * SIZE[0], 2 * SIZE[1])  # the network runs at twice the image size: boxes scale by 2
    records = [rec for rec in ds if len(codec.training_pairs(rec)[2])]  # the images with a PRN pair
    fake = _GroundTruthHeatmaps(records, 2.0, size)
    x, y = network_prn_pairs(ds, codec, fake, size, stride=4, batch_size=3, progress=False)
    _, y_ref = annotation_prn_pairs(ds, codec)
    np.testing.assert_array_equal(y, y_ref)
    assert x.shape == y.shape and x.shape[1:] == (56, 36, 17)
    for rec, seen in zip(records, fake.seen, strict=True):
        ref = tf.image.resize(read_image(rec.path).astype(np.float32), size, method="bilinear").numpy()
        np.testing.assert_allclose(seen, ref, atol=1e-3)
    # a crop holds every person's peaks inside the box, all of height 1: each decoded keypoint is
    # the owner's or, where people overlap, another person's keypoint of the same type
    boxes, owners, everyone = [], [], []
    for rec in records:
        _, _, persons = codec.training_pairs(rec)
        boxes.append(rec.boxes[persons])
        owners.append(rec.keypoints[persons])
        labelled = np.where(rec.keypoints[..., 2:] > 0, rec.keypoints[..., :2], np.inf)
        everyone += [labelled] * len(persons)
    boxes, owners = np.concatenate(boxes), np.concatenate(owners)
    decoded = codec.decode(x, boxes * 2.0)[..., :2] / 2.0
    own = np.linalg.norm(decoded - owners[..., :2], axis=-1)[owners[..., 2] > 0]
    nearest = np.stack([np.linalg.norm(d[None] - e, axis=-1).min(0) for d, e in zip(decoded, everyone)])
    nearest = nearest[owners[..., 2] > 0]
    assert np.median(own) < 1.0 and np.mean(own < 2.0) > 0.5
    assert np.mean(nearest < 2.0) > 0.95

    # an unreadable image is skipped and counted, the others still give their pairs
    broken = tmp_path / "data"
    shutil.copytree(syn_root, broken)
    victim = CocoKeypoints(str(broken), "train")
    kept = [rec for rec in victim if len(codec.training_pairs(rec)[2])]
    with open(kept[0].path, "wb") as f:
        f.write(b"not an image")
    skips = SkipCounter()
    x2, y2 = network_prn_pairs(victim, codec, _GroundTruthHeatmaps(kept[1:], 2.0, size), size, skips=skips,
                               progress=False)
    assert skips.counts == {"unreadable image": 1}
    assert len(x2) == len(y2) == len(x) - len(codec.training_pairs(kept[0])[2])
    np.testing.assert_array_equal(x2, x[len(x) - len(x2):])


class _GroundTruthDetections(_GroundTruthHeatmaps):
    """Also stands in for the person subnet: its outputs encode given boxes (network pixels),
    per image, as logits +-10 at the BoxCodec's positive / other anchors and exact deltas."""

    def __init__(self, records, scale, size, boxes):
        super().__init__(records, scale, size)
        from kerapose.codecs.boxes import BoxCodec

        self.person = []
        for b in boxes:
            cls, deltas = BoxCodec().encode(b, size)
            self.person.append((np.where(cls > 0, 10.0, -10.0).astype(np.float32), deltas))

    def __call__(self, images, training=False):
        n = len(self.seen)
        out = super().__call__(images, training)
        out["person_logits"] = np.stack([p[0] for p in self.person[n:n + len(images)]])
        out["person_boxes"] = np.stack([p[1] for p in self.person[n:n + len(images)]])
        return out


def test_network_prn_pairs_at_detected_boxes(syn_root):
    """boxes="detections": each person's crop and target use the detection that overlaps its
    box (here its box shifted by 3 px and widened by 20 %), a person without one keeps its
    ground-truth box, and a model without person outputs is refused by name."""
    from dataclasses import replace

    from kerapose.codecs.boxes import BoxCodec, box_iou
    from kerapose.data.pipeline import network_prn_pairs

    ds = CocoKeypoints(str(syn_root), "train")
    codec = PRNCodec("coco17")
    size = (2 * SIZE[0], 2 * SIZE[1])
    records = [rec for rec in ds if len(codec.pair_persons(rec))]
    # Each image detects its pair persons' boxes shifted and widened (network pixels), all of
    # them or, where NMS would merge two or a person's best match would be another's box, none
    # (and never in the first image): those images keep their ground-truth boxes.
    detected = []  # per image: {person index: moved box}
    for n, rec in enumerate(records):
        persons = codec.pair_persons(rec)
        b = rec.boxes[persons].astype(np.float64) * 2.0
        cx, w = (b[:, 0] + b[:, 2]) / 2 + 3.0, (b[:, 2] - b[:, 0]) * 1.2
        m = np.stack([cx - w / 2, b[:, 1], cx + w / 2, b[:, 3]], -1).clip(0, size[1])
        apart = (box_iou(m, m) <= 0.5).sum() == len(m)
        own = (box_iou(b, m).argmax(1) == np.arange(len(m))).all()
        detected.append(dict(zip(persons.tolist(), m)) if n and apart and own else {})
    assert sum(map(len, detected)) >= 3
    fake = _GroundTruthDetections(records, 2.0, size,
                                  [np.array(list(d.values())).reshape(-1, 4) for d in detected])
    x, y = network_prn_pairs(ds, codec, fake, size, stride=4, batch_size=3, progress=False, boxes="detections")
    # the reference: the pairs of records whose boxes are the decoded detections (image pixels)
    ref_x, ref_y = [], []
    heat = _GroundTruthHeatmaps(records, 2.0, size)
    for i, rec in enumerate(records):
        logits, deltas = fake.person[i]
        found, _ = BoxCodec().decode(logits, deltas, size)
        assert len(found) == len(detected[i])
        boxes = rec.boxes.copy()
        for j, m in detected[i].items():  # the decoded box equals the moved one up to rounding
            near = found[np.abs(found - m).sum(-1).argmin()]
            np.testing.assert_allclose(near, m, atol=1e-3)
            boxes[j] = near / 2.0
        target, persons = codec.training_targets(replace(rec, boxes=boxes))
        ref_y.append(target)
        ref_x.append(codec.crop(heat.maps[i].astype(np.float32)[..., :17], boxes[persons] * 2.0, 4))
    np.testing.assert_allclose(y, np.concatenate(ref_y), atol=1e-6)
    np.testing.assert_allclose(x, np.concatenate(ref_x), atol=1e-4)
    n0 = len(codec.pair_persons(records[0]))
    np.testing.assert_array_equal(y[:n0], codec.training_targets(records[0])[0])
    assert not np.allclose(y[n0:], np.concatenate([codec.training_targets(r)[0] for r in records[1:]]))

    with pytest.raises(ValueError, match="person_logits and person_boxes"):
        network_prn_pairs(ds, codec, _GroundTruthHeatmaps(records, 2.0, size), size, progress=False,
                          boxes="detections")
    with pytest.raises(ValueError, match="boxes: expected one of annotations, detections, got 'gt'"):
        network_prn_pairs(ds, codec, fake, size, progress=False, boxes="gt")
