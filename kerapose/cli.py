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
    from kerapose.models.registry import build_model, load_any_model, MODEL_BUILDERS

    hw = tuple(args.input_size) if args.input_size else None
    if args.model in MODEL_BUILDERS:
        shape = (*(hw or (None, None)), 3)
        model = build_model(args.model, input_shape=shape)
    else:
        model = load_any_model(args.model)
    info = model_info(model, input_hw=hw)
    info["model"] = args.model
    if args.json:
        print(json.dumps(info))
    else:
        print(format_table(info))
    return 0


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
    return p


def main(argv: list[str] | None = None) -> int:
    _quiet_tf()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"kerapose {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
