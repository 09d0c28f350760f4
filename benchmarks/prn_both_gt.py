"""Trained Pose Residual Network with ground-truth boxes and keypoints ("both GT") on coco-mini val.

MultiPoseNet's PRN assigns the keypoints found in a person box to that person. "Both GT" scores
the assignment alone: every val person with labelled keypoints gets its ground-truth box, and
the PRN sees the ground-truth keypoint heatmaps (``HeatmapCodec``, stride 4, everyone's
keypoints) cropped to that box (``PRNCodec.crop``, 56x36, 10 % margin); its output is decoded
with ``PRNCodec.decode`` and scored with pycocotools (keypoint AP, OKS). These are exactly the
inputs of the untrained "Max" baseline (``kerapose oracle --codec prn``: argmax of each cropped
channel), so the rows compare assignment methods on equal terms:

- ``max``: the Max baseline (no network);
- ``prn_untrained``: the PRN with its seeded initial weights (nearly Max: the residual passes the
  crop through, the random dense layers add little);
- ``prn_trained``: the same PRN trained with kerapose's stage-3 recipe: pairs from the train
  annotations (:func:`kerapose.data.pipeline.prn_dataset`: input = everyone's keypoints in the
  owner's box as Gaussians of ``input_sigma`` = 1 crop cell, target = the owner's keypoints,
  plus horizontal flips), Adam 1e-4, batch 32, binary cross-entropy, ``--steps`` steps, scored
  every ``--eval-every`` steps (the learning curve goes into the JSON).
  ``--train-inputs crops`` trains on the evaluation's own kind of input instead (the GT
  heatmap crops of the train people, same targets, flips), to separate the gap between the
  rendered training inputs and heatmap crops from overfitting.

Every row is also scored on train2017 (both GT): the people the PRN is trained on.

The paper's figure (Kocabas et al. 2018): 89.4 AP for the PRN with both GT on COCO val2017
(about 6,350 people, trained on COCO train2017's ~150k). coco-mini is tiny: 36 train images with
86 people with keypoints (172 pairs with flips) and 28 val images with 27 such people, so the
figures here carry a large sampling error (one person is ~4 % of val) and training sees ~1/1000
of COCO; they check the pipeline end to end, not the paper's number.

Usage: ``python benchmarks/prn_both_gt.py [--steps 1500] [--hidden 1024] [--batch 32] [--residual-scale 1]
[--data-root ../shared/data/coco-mini] [--out benchmarks/results/prn_both_gt.json]``
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

from _timing import write_json  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from kerapose.codecs.heatmap import HeatmapCodec
from kerapose.codecs.prn import PRNCodec, oracle_keypoints, pose_scores
from kerapose.data.coco import CocoKeypoints
from kerapose.data.pipeline import prn_dataset
from kerapose.evaluation import evaluate_keypoints, keypoint_results
from kerapose.heads.prn import pose_residual_network
from kerapose.losses import prn_loss

PAPER_AP = 0.894  # Kocabas et al. 2018, PRN with GT boxes and GT keypoints, COCO val2017
STRIDE = 4


def find_coco_mini() -> Path | None:
    """``../shared/data/coco-mini`` beside the checkout (or under ``$KERAPOSE_SHARED``)."""
    env = os.environ.get("KERAPOSE_SHARED")
    cands = [Path(env)] if env else [p / "shared" for p in Path(__file__).resolve().parents]
    for c in cands:
        if (c / "data" / "coco-mini").is_dir():
            return c / "data" / "coco-mini"
    return None


def both_gt_inputs(dataset: CocoKeypoints, codec: PRNCodec, heatmap_codec: HeatmapCodec) -> list[tuple]:
    """Per image with people: ``(image_id, GT boxes [M, 4], PRN inputs [M, 56, 36, K])``."""
    out = []
    for rec in dataset:
        # the people the Max baseline scores: non-crowd, at least one labelled keypoint
        persons = np.flatnonzero((rec.keypoints[..., 2] > 0).any(-1) & ~np.asarray(rec.iscrowd, bool))
        if not persons.size:
            continue
        heat = heatmap_codec.encode(rec.keypoints, (rec.height, rec.width))
        boxes = np.asarray(rec.boxes)[persons]
        out.append((rec.image_id, boxes, codec.crop(heat, boxes, heatmap_codec.stride)))
    return out


def score_prn(model: keras.Model, inputs: list[tuple], dataset: CocoKeypoints, codec: PRNCodec) -> dict:
    """pycocotools keypoint figures of ``model`` on :func:`both_gt_inputs` (pose score = mean joint score)."""
    results: list[dict] = []
    for image_id, boxes, crops in inputs:
        kp = codec.decode(np.asarray(model(crops, training=False)), boxes)
        results += keypoint_results(image_id, kp, pose_scores(kp))
    return evaluate_keypoints(dataset.coco, results, image_ids=dataset.image_ids, keypoint_set=codec.keypoint_set)


def score_max(dataset: CocoKeypoints, codec: PRNCodec, heatmap_codec: HeatmapCodec) -> dict:
    """The untrained Max baseline, as ``kerapose oracle --codec prn`` computes it."""
    results: list[dict] = []
    for rec in dataset:
        kp, scores = oracle_keypoints(codec, heatmap_codec, rec)
        keep = (kp[..., 2] > 0).any(-1) if len(kp) else np.zeros(0, bool)
        results += keypoint_results(rec.image_id, kp[keep], scores[keep])
    return evaluate_keypoints(dataset.coco, results, image_ids=dataset.image_ids, keypoint_set=codec.keypoint_set)


def build_prn(codec: PRNCodec, hidden: int, seed: int, learning_rate: float = 1e-4,
              residual_scale: float = 1.0) -> keras.Model:
    """The paper's PRN (``hidden`` units, dropout 0.5), seeded, compiled as kerapose's stage 3."""
    keras.utils.set_random_seed(seed)
    model = pose_residual_network(codec.num_channels, codec.input_hw, hidden=hidden, residual_scale=residual_scale)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=prn_loss())
    return model


def crop_dataset(train_inputs: list[tuple], train_set: CocoKeypoints, codec: PRNCodec, batch: int,
                 seed: int = 0) -> tuple[tf.data.Dataset, int]:
    """Like ``prn_dataset`` (same targets, same flips) but the inputs are GT heatmap crops."""
    x = np.concatenate([crops for _, _, crops in train_inputs]).astype(np.float32)
    y = np.concatenate([t for t in (codec.training_pairs(r)[1] for r in train_set) if len(t)]).astype(np.float32)
    if x.shape != y.shape:  # both list the same people (non-crowd, a labelled keypoint) in record order
        raise RuntimeError(f"{x.shape[0]} heatmap crops for {y.shape[0]} targets")
    perm = codec.keypoint_set.flip_index
    x, y = np.concatenate([x, x[:, :, ::-1][..., perm]]), np.concatenate([y, y[:, :, ::-1][..., perm]])
    ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    return ds.repeat().batch(batch).prefetch(tf.data.AUTOTUNE), len(x)


def train_prn(model: keras.Model, dataset: tf.data.Dataset, steps: int, eval_every: int | None = None,
              score=None) -> tuple[float, float, list[dict]]:
    """Fit ``steps`` batches; every ``eval_every`` steps record ``score(model)`` (a dict).

    Returns (training seconds, final loss, curve of ``{"step": s, **score(model)}``).
    """
    chunk = min(eval_every or steps, steps)
    done, seconds, loss, curve = 0, 0.0, float("nan"), []
    while done < steps:
        n = min(chunk, steps - done)
        t0 = time.perf_counter()
        hist = model.fit(dataset, epochs=1, steps_per_epoch=n, verbose=0)
        seconds += time.perf_counter() - t0
        done += n
        loss = float(hist.history["loss"][-1])
        if score is not None:
            curve.append({"step": done, "loss": loss, **score(model)})
    return seconds, loss, curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400, help="training steps (batches)")
    parser.add_argument("--eval-every", type=int, default=100, help="score val and train every N steps")
    parser.add_argument("--train-inputs", choices=["pairs", "crops"], default="pairs",
                        help="pairs: kerapose's prn_dataset (rendered Gaussians); crops: GT heatmap crops")
    parser.add_argument("--hidden", type=int, default=1024, help="PRN hidden units (paper: 1024)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--residual-scale", type=float, default=1.0,
                        help="weight of the PRN's residual in its logits (paper: 1; see pose_residual_network)")
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-root", default=None, help="COCO-layout root (default: ../shared/data/coco-mini)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "prn_both_gt.json"))
    args = parser.parse_args()
    if args.steps < 1:
        parser.error("--steps must be >= 1")
    root = args.data_root or find_coco_mini()
    if root is None:
        parser.error("coco-mini not found beside the checkout; pass --data-root or set KERAPOSE_SHARED")

    codec, hc = PRNCodec("coco17"), HeatmapCodec("coco17", stride=STRIDE)
    train_set, val_set = CocoKeypoints(str(root), "train2017"), CocoKeypoints(str(root), "val2017")
    val_inputs, train_inputs = both_gt_inputs(val_set, codec, hc), both_gt_inputs(train_set, codec, hc)
    val_people = sum(len(b) for _, b, _ in val_inputs)
    train_people = sum(len(b) for _, b, _ in train_inputs)

    rows = [{"method": "max", "val": score_max(val_set, codec, hc), "train": score_max(train_set, codec, hc)}]
    model = build_prn(codec, args.hidden, args.seed, args.learning_rate, args.residual_scale)
    rows.append({"method": "prn_untrained", "val": score_prn(model, val_inputs, val_set, codec),
                 "train": score_prn(model, train_inputs, train_set, codec)})
    if args.train_inputs == "pairs":
        dataset, pairs = prn_dataset(train_set, codec, args.batch, seed=args.seed)
    else:
        dataset, pairs = crop_dataset(train_inputs, train_set, codec, args.batch, seed=args.seed)

    def score(m):
        return {"val_AP": score_prn(m, val_inputs, val_set, codec)["AP"],
                "train_AP": score_prn(m, train_inputs, train_set, codec)["AP"]}

    seconds, loss, curve = train_prn(model, dataset, args.steps, args.eval_every, score)
    rows.append({"method": "prn_trained", "val": score_prn(model, val_inputs, val_set, codec),
                 "train": score_prn(model, train_inputs, train_set, codec),
                 "train_seconds": seconds, "final_loss": loss, "curve": curve})

    keys = ("AP", "AP50", "AP75", "APM", "APL", "AR")
    print(f"PRN both GT on coco-mini (val: {len(val_set)} images, {val_people} people; train: {len(train_set)} "
          f"images, {train_people} people, {pairs} pairs with flips); PRN hidden {args.hidden}, "
          f"{args.steps} steps of {args.batch} on {args.train_inputs} in {seconds:.0f} s on {os.cpu_count()} CPUs "
          f"(load average {os.getloadavg()[0]:.1f})\n")
    print("| method | " + " | ".join(f"val {k}" for k in keys) + " | train AP |")
    print("|---|" + "---:|" * (len(keys) + 1))
    for r in rows:
        print(f"| {r['method']} | " + " | ".join(f"{r['val'][k]:.3f}" for k in keys) + f" | {r['train']['AP']:.3f} |")
    print(f"| paper: PRN both GT, COCO val2017 | {PAPER_AP:.3f} | | | | | | |")
    print("\nlearning curve (step: val AP / train AP): " + ", ".join(
        f"{c['step']}: {c['val_AP']:.3f} / {c['train_AP']:.3f}" for c in curve))

    out = {
        "benchmark": "prn_both_gt",
        "data": {"root": os.path.relpath(root, Path(__file__).resolve().parents[1]), "val_images": len(val_set), "val_people": val_people,
                 "train_images": len(train_set), "train_people": train_people, "train_pairs_with_flips": pairs},
        "settings": {"steps": args.steps, "batch": args.batch, "hidden": args.hidden,
                     "residual_scale": args.residual_scale,
                     "train_inputs": args.train_inputs, "eval_every": args.eval_every,
                     "learning_rate": args.learning_rate, "seed": args.seed, "stride": STRIDE,
                     "prn_input_hw": list(codec.input_hw), "margin": codec.margin},
        "paper_ap_coco_val": PAPER_AP,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_average": os.getloadavg(),
                    "tensorflow": tf.__version__},
        "rows": [{"method": r["method"], **{k: v for k, v in r.items() if k not in ("method", "val", "train")},
                  "val": {k: r["val"][k] for k in keys}, "train": {k: r["train"][k] for k in keys}} for r in rows],
    }
    write_json(args.out, out)


if __name__ == "__main__":
    main()
