"""PoseDet trained by the shared runner on real coco-mini images, scored end to end by pycocotools."""

from __future__ import annotations

from pathlib import Path

from kerapose.training.recipe import load_recipe
from kerapose.training.runner import train

RECIPES = Path(__file__).resolve().parents[1] / "training" / "configs"
IDS = [30752, 37666, 234748]  # one person each, 640 x ~425: the letterbox fills a 2:3 input


def test_posedet_overfits_a_few_coco_images(coco_mini_root, coco_train, tmp_path):
    """The overfit recipe, shortened (three one-person images, 125 steps): the untrained model finds
    nobody (AP 0), the trained one finds the people again (letterbox -> network -> OKS-NMS ->
    pycocotools). The recipe's own run (six images, ten people, 400 steps) is in the README (PoseDet)."""
    import keras

    from kerapose.models.posedet.recipe import RECIPE, evaluate_posedet

    cfg = load_recipe(str(RECIPES / "posedet-overfit.yaml"), {"data_root": str(coco_mini_root)})
    assert cfg["model"]["backbone"] == "resnet18" and cfg["model"]["input_size"] == [128, 192]
    cfg["data"]["image_ids"] = IDS
    cfg["batch_size"] = 3
    # the positives of the classification and refinement terms appear once the coarse poses reach
    # OKS 0.6 with a person: the candidates loss stays near 1.2 for about 50 steps, then falls
    cfg["stages"][0].update(epochs=5, steps_per_epoch=25, lr_steps={"epochs": [4], "factor": 0.1})
    keras.utils.set_random_seed(cfg["seed"])  # the runner builds its model right after seeding the same way
    untrained = evaluate_posedet(RECIPE.build(cfg), coco_train, (128, 192), image_ids=IDS, progress=False,
                                 per_keypoint=False, max_people=10, score_threshold=0.05)
    metrics = train(cfg, str(tmp_path / "overfit"), verbose=0)
    hist = metrics["history"]["1-posedet"]
    print(f"\nPoseDet overfit on {IDS}: AP {untrained['AP']:.3f} -> {metrics['AP']:.3f} (AP50 {metrics['AP50']:.3f}, "
          f"{metrics['people']} people); candidates loss {hist['candidates_loss'][0]:.3f} -> "
          f"{hist['candidates_loss'][-1]:.3f}; fit {hist['seconds']:.0f} s")
    assert untrained["AP"] < 0.05
    assert hist["candidates_loss"][-1] < 0.2 * hist["candidates_loss"][0]
    assert metrics["images"] == len(IDS)
    # one run scored AP 1.0; three people move AP in large steps, so the bar leaves room for CPU
    # thread nondeterminism while an untrained or broken decoder (AP 0) still fails
    assert metrics["AP"] >= 0.4
