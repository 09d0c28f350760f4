"""End-to-end MultiPoseNet: uint8 image of any size in, people out, all in one TF graph.

Follows DESIGN.md's serving contract: input ``image`` uint8 [B, H, W, 3] RGB; outputs
``keypoints`` [B, M, K, 3] (x, y, score), ``scores`` [B, M], ``boxes`` [B, M, 4] and
``num_poses`` [B], in the original image's pixels, padded to M people. Resize, padding,
normalisation, anchor decoding + NMS, the RoI crop, the PRN and its decoding happen inside
the graph, with ops that convert to TFLite builtins (no crop_and_resize, no
combined_non_max_suppression).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from kerapose.codecs.boxes import BoxCodec
from kerapose.codecs.prn import PRNCodec
from kerapose.layers import Letterbox
from kerapose.models.multiposenet.constants import KEYPOINT_STRIDE, SIZE_MULTIPLE, check_pose_score
from kerapose.skeleton import get_keypoint_set

__all__ = ["MultiPoseNetDecoder", "HeatmapTestTimeAugment", "multiposenet_end_to_end"]


@keras.saving.register_keras_serializable(package="kerapose")
class MultiPoseNetDecoder(keras.layers.Layer):
    """Network outputs -> people: box decoding + NMS, RoI crop, PRN, keypoint decoding.

    Args:
        prn: the Pose Residual Network (``MultiPoseNet.prn``).
        input_size: the network input size (H, W) the outputs come from.
        keypoint_set: the keypoint set's name (K comes from it).
        max_people: M, the padded number of people per image.
        score_threshold, iou_threshold: person detection thresholds.
        prn_margin: box enlargement of the PRN crop (as in training).
        pose_score: ``"box"``: a pose's score is its box's; ``"box_keypoints"``: the box's score
            times the mean of the pose's keypoint scores (PRN peaks), and the poses re-sorted by
            it; a box that holds a weak or diffuse pose then ranks below a clean one.
    """

    keeps_float = True  # int8 export keeps it float32: coordinates and scores are never int8

    def __init__(self, prn: keras.Model, input_size, keypoint_set: str = "coco17", max_people: int = 20,
                 score_threshold: float = 0.3, iou_threshold: float = 0.5, prn_margin: float = 0.1,
                 pose_score: str = "box", **kwargs):
        super().__init__(**kwargs)
        self.pose_score = check_pose_score(pose_score)
        self.prn = prn
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.keypoint_set = get_keypoint_set(keypoint_set).name
        self.num_keypoints = get_keypoint_set(keypoint_set).num_keypoints
        self.max_people = int(max_people)
        self.score_threshold = float(score_threshold)
        self.iou_threshold = float(iou_threshold)
        self.prn_margin = float(prn_margin)
        self.box_codec = BoxCodec()
        self.prn_codec = PRNCodec(self.keypoint_set, margin=prn_margin)

    def call(self, heatmaps, person_logits, person_boxes, scale):
        m, k = self.max_people, self.num_keypoints
        boxes, scores, num = self.box_codec.decode_tf(
            person_logits, person_boxes, self.input_size, max_detections=m,
            score_threshold=self.score_threshold, iou_threshold=self.iou_threshold)
        batch = tf.shape(boxes)[0]
        # the PRN (two large dense layers: 8.8 M weights each in the quickstart model) runs on the
        # people found, not on all M slots:
        # n = the most people of any image of the batch, at least 1 (no zero-sized tensors)
        n = tf.maximum(tf.reduce_max(num), 1)
        flat_boxes = tf.reshape(boxes[:, :n], [-1, 4])
        box_idx = tf.repeat(tf.range(batch), n)
        crops = self.prn_codec.crop_tf(heatmaps[..., :k], flat_boxes, KEYPOINT_STRIDE, box_indices=box_idx)
        kp = self.prn_codec.decode_tf(self.prn(crops, training=False), flat_boxes)
        kp = tf.reshape(tf.pad(tf.reshape(kp, [batch, n, k, 3]), [[0, 0], [0, m - n], [0, 0], [0, 0]]),
                        [batch, m, k, 3])
        valid = tf.sequence_mask(num, m, dtype=tf.float32)  # [B, M]
        inv = (1.0 / scale)[:, None]
        kp_xy = kp[..., :2] * inv[..., None, None] * valid[..., None, None]
        keypoints = tf.concat([kp_xy, kp[..., 2:] * valid[..., None, None]], axis=-1)
        scores, boxes = scores * valid, boxes * inv[..., None] * valid[..., None]
        if self.pose_score == "box_keypoints":
            scores = scores * tf.reduce_mean(keypoints[..., 2], axis=-1)
            # padding (score 0) stays behind every detection: scores are >= 0, ties keep order
            order = tf.argsort(scores, axis=1, direction="DESCENDING", stable=True)
            scores, boxes, keypoints = (tf.gather(t, order, batch_dims=1) for t in (scores, boxes, keypoints))
        return {"keypoints": keypoints, "scores": scores, "boxes": boxes, "num_poses": num}

    def compute_output_spec(self, heatmaps, person_logits, person_boxes, scale):
        b, m, k = heatmaps.shape[0], self.max_people, self.num_keypoints
        return {
            "keypoints": keras.KerasTensor((b, m, k, 3), "float32"),
            "scores": keras.KerasTensor((b, m), "float32"),
            "boxes": keras.KerasTensor((b, m, 4), "float32"),
            "num_poses": keras.KerasTensor((b,), "int32"),
        }

    def get_config(self):
        return {
            **super().get_config(),
            "prn": keras.saving.serialize_keras_object(self.prn),
            "input_size": list(self.input_size),
            "keypoint_set": self.keypoint_set,
            "max_people": self.max_people,
            "score_threshold": self.score_threshold,
            "iou_threshold": self.iou_threshold,
            "prn_margin": self.prn_margin,
            "pose_score": self.pose_score,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["prn"] = keras.saving.deserialize_keras_object(config["prn"])
        return cls(**config)


@keras.saving.register_keras_serializable(package="kerapose")
class HeatmapTestTimeAugment(keras.layers.Layer):
    """Average the keypoint heatmaps over a horizontal flip and/or extra scales.

    Flip: the network runs on the mirrored image; its heatmaps are mirrored back and the
    left/right channels swapped (the keypoint set's ``flip_index``; the segmentation channel
    stays). With W a multiple of the stride, cell j maps exactly onto cell W/s - 1 - j.
    Scales: the network runs on the image resized by each factor (to multiples of 32); the
    heatmaps are resized back to the base grid. Person boxes come from the base pass only.
    """

    keeps_float = True  # int8 export keeps it float32: decoding-time flips and averages

    def __init__(self, network: keras.Model, flip_index, flip: bool = False, scales=(), **kwargs):
        super().__init__(**kwargs)
        self.network = network
        self.flip_index = [int(i) for i in flip_index]
        self.flip = bool(flip)
        self.scales = tuple(float(s) for s in scales)

    def call(self, image, heatmaps):
        k = len(self.flip_index)
        maps = [heatmaps]
        if self.flip:
            mirrored = self.network(tf.reverse(image, axis=[2]), training=False)["heatmaps"]
            mirrored = tf.reverse(tf.cast(mirrored, tf.float32), axis=[2])
            perm = self.flip_index + list(range(k, int(heatmaps.shape[-1])))
            maps.append(tf.gather(mirrored, perm, axis=-1))
        hw = tf.shape(image)[1:3]
        grid = tf.shape(heatmaps)[1:3]
        for s in self.scales:
            size = tf.cast(tf.round(tf.cast(hw, tf.float32) * s / SIZE_MULTIPLE), tf.int32) * SIZE_MULTIPLE
            size = tf.maximum(size, SIZE_MULTIPLE)
            out = self.network(tf.image.resize(image, size), training=False)["heatmaps"]
            maps.append(tf.image.resize(tf.cast(out, tf.float32), grid))
        return tf.add_n(maps) / float(len(maps))

    def compute_output_spec(self, image, heatmaps):
        return keras.KerasTensor(heatmaps.shape, "float32")


def multiposenet_end_to_end(
    model: keras.Model,
    input_size: tuple[int, int] = (480, 480),
    max_people: int = 20,
    score_threshold: float = 0.3,
    iou_threshold: float = 0.5,
    prn_margin: float = 0.1,
    flip_test: bool = False,
    scales: tuple[float, ...] = (),
    pose_score: str | None = None,
) -> keras.Model:
    """Wrap a MultiPoseNet into the end-to-end serving model (see module docstring).

    ``input_size`` is the network's input (multiples of 32); images of any size are
    letterboxed into it and the results mapped back to their own pixels. ``flip_test`` and
    ``scales`` (extra scale factors, e.g. ``(0.75, 1.25)``) average the heatmaps over test-time
    augmentations (:class:`HeatmapTestTimeAugment`); extra scales need a model built with
    input_shape (None, None, 3). ``pose_score`` (see :class:`MultiPoseNetDecoder`): None takes
    the model's own (``MultiPoseNet(pose_score=...)``, saved with it).
    """
    h, w = (int(v) for v in input_size)
    if h % SIZE_MULTIPLE or w % SIZE_MULTIPLE or h <= 0 or w <= 0:
        raise ValueError(f"input_size {input_size} is not accepted: both sides must be positive multiples of 32")
    if max_people < 1:
        raise ValueError(f"max_people must be >= 1, got {max_people}")
    image = keras.Input(shape=(None, None, 3), dtype="uint8", name="image")
    # float32 whatever the global policy: decoding under mixed_float16 would lose pixel precision
    resized, scale = Letterbox((h, w), name="letterbox", dtype="float32")(image)
    out = model(resized)
    heatmaps = out["heatmaps"]
    scales = tuple(float(x) for x in scales if float(x) != 1.0)
    if any(x <= 0 for x in scales):
        raise ValueError(f"scales must be positive factors, got {scales}")
    if scales and any(d is not None for d in model.input_shape[1:3]):
        raise ValueError(f"multi-scale inference needs a model built with input_shape (None, None, 3); this one has "
                         f"{tuple(model.input_shape[1:])}")
    if flip_test or scales:
        heatmaps = HeatmapTestTimeAugment(model, model.keypoint_set.flip_index, flip=flip_test, scales=scales,
                                          name="test_time_augment", dtype="float32")(resized, heatmaps)
    decoder = MultiPoseNetDecoder(model.prn, (h, w), model.keypoint_set.name, max_people=max_people,
                                  score_threshold=score_threshold, iou_threshold=iou_threshold,
                                  prn_margin=prn_margin, pose_score=pose_score or model.pose_score, name="decoder",
                                  dtype="float32")
    people = decoder(heatmaps, out["person_logits"], out["person_boxes"], scale)
    people = {k: keras.layers.Identity(name=k, dtype=v.dtype)(v) for k, v in people.items()}
    return keras.Model(image, people, name=f"{model.name}_end_to_end")
