"""TF-Serving-compatible REST serving for kerapose SavedModels: server, model loading, client.

``kerapose serve`` = :func:`add_serve_arguments` + :func:`serve_main`. This package's top level
imports no TensorFlow (the client and the argument parser stay light); the server modules
(``server``, ``models``, ``batching``) load when :func:`serve_main` runs.
"""

from __future__ import annotations

from kerapose.serving.arguments import add_serve_arguments
from kerapose.serving.client import PoseClient, ServingError, people_from_outputs


def serve_main(models_dir: str, host: str = "127.0.0.1", port: int = 8501, **options) -> None:
    """Run the embedded server (see :func:`kerapose.serving.server.serve_main`)."""
    from kerapose.serving.server import serve_main as _serve_main

    _serve_main(models_dir, host=host, port=port, **options)


__all__ = ["PoseClient", "ServingError", "people_from_outputs", "serve_main", "add_serve_arguments"]
