"""The ``kerapose serve`` command-line options (no TensorFlow import: the parser stays light)."""

from __future__ import annotations

import argparse

__all__ = ["add_serve_arguments"]


def add_serve_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``kerapose serve`` arguments; ``serve_main(**vars(args))`` runs them (their ``dest``
    names are :func:`serve_main`'s keywords; extra keys such as ``func`` are ignored)."""
    parser.add_argument("models_dir", help="model base path: MODELS_DIR/NAME/VERSION/saved_model.pb")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: local only)")
    parser.add_argument("--port", type=int, default=8501, help="REST port (TF Serving's is 8501)")
    parser.add_argument(
        "--poll-interval", type=float, default=2.0, help="seconds between scans for new versions (0: off)"
    )
    parser.add_argument("--max-body-mb", type=float, default=32.0, help="request body limit in MiB (413 above)")
    parser.add_argument(
        "--max-image-pixels", type=int, default=40_000_000, help="decoded image limit H*W (413 above)"
    )
    parser.add_argument("--request-timeout", type=float, default=30.0, help="seconds per request (504 above)")
    parser.add_argument("--threads", type=int, default=4, help="model-call thread pool size")
    parser.add_argument("--enable-batching", action="store_true", help="group concurrent requests into batches")
    parser.add_argument(
        "--batching-config", default=None, help="TF Serving batching.config (implies --enable-batching)"
    )
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--batch-timeout-micros", type=int, default=2000)
    parser.add_argument("--num-batch-threads", type=int, default=2)
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    return parser
