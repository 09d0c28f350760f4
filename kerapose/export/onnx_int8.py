"""int8 ONNX through ONNX Runtime's static quantization: the network in int8 (QDQ), the
decoding and the layers that declare ``keeps_float = True`` in float32.

The float ONNX graph (tf2onnx) is quantized with ``onnxruntime.quantization.quantize_static``
(:data:`QUANT_SETTINGS`), calibrated on real images fed exactly as inference feeds them. Which
nodes stay float is found from their names: tf2onnx names a node after its TensorFlow op, whose
name holds the Keras layer path (``.../backbone_1/block_1_expand_BN_1/mul``, each scope with a
``_N`` suffix). The nodes tf2onnx adds itself (``Conv__3627`` for a separable convolution,
``Transpose__4035`` for a layout change) carry no path; they belong where their inputs come from.
Every node downstream of a decoding layer that reads the network (grouping, NMS, PRN, the
coordinate transform, the outputs) stays float, and so do the control-flow bodies (``Loop``),
which ORT's static quantizer leaves alone. :func:`decoder_qdq_leaks` checks the quantized graph:
no decoder value passes through a QuantizeLinear/DequantizeLinear pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

from onnxruntime.quantization import CalibrationDataReader

from kerapose.export.int8 import layer_name_pattern

__all__ = [
    "NETWORK_OP_TYPES",
    "QUANT_SETTINGS",
    "NodeClasses",
    "classify_nodes",
    "decoder_qdq_leaks",
    "pre_process",
    "qdq_summary",
    "quantize_static_int8",
]

# The op types ORT may quantize, of those the network has: the float nodes are excluded by name
# anyway, but ORT's calibrator records the range of every tensor of these types, float or not.
NETWORK_OP_TYPES = ("Conv", "ConvTranspose", "MatMul", "Gemm", "Add", "Mul", "Concat", "Relu", "Clip", "MaxPool",
                    "AveragePool", "GlobalAveragePool", "Resize", "Pad", "Transpose", "Reshape", "Squeeze",
                    "Unsqueeze", "Flatten", "Split", "Slice")

# What quantize_static is asked for, stored in the export's metadata. ONNX Runtime's guidance
# for x86 CPUs (quantize_static's docstring in onnxruntime 1.32): QDQ format, uint8 activations
# with int8 weights, reduce_range only on CPUs without VNNI (not set: the file must not depend on
# the machine that exports it). Per-channel weights: the docstring's choice for convolutions whose
# channels differ, at a small speed cost. MinMax calibration: one pass, ranges that cover every
# calibration value (Entropy and Percentile keep a histogram of every tensor to clip outliers).
QUANT_SETTINGS = {"format": "QDQ", "activation_type": "QUInt8", "weight_type": "QInt8", "per_channel": True,
                  "reduce_range": False, "calibrate_method": "MinMax"}

_QDQ = ("QuantizeLinear", "DequantizeLinear")
_NETWORK, _FLOAT, _DECODING = "network", "float", "decoding"


def _subgraphs(node) -> Iterator:
    import onnx

    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def _inputs(node) -> list[str]:
    """A node's inputs, including the outer-scope tensors its control-flow bodies read."""
    names = [t for t in node.input if t]
    stack = list(_subgraphs(node))
    while stack:
        graph = stack.pop()
        local = {t.name for t in graph.initializer} | {t.name for t in graph.input}
        local |= {o for n in graph.node for o in n.output}
        for n in graph.node:
            names += [t for t in n.input if t and t not in local]
            stack += list(_subgraphs(n))
    return names


@dataclass(frozen=True)
class NodeClasses:
    """The main-graph nodes of a float ONNX model by role (node names)."""

    network: set[str]  # quantizable
    kept_float: set[str]  # keeps_float layers, the letterbox, and all of ``decoder``
    decoder: set[str]  # the decoding after the network, and every node after it
    network_outputs: set[str]  # the tensors the network hands the decoder


def classify_nodes(model_proto, decoding_layers: Iterable[str], float_layers: Iterable[str]) -> NodeClasses:
    """Sort the main-graph nodes of a tf2onnx model into network / float / decoder.

    ``decoding_layers``: the end-to-end model's own float layers (letterbox, decoder, output
    layers: :func:`kerapose.export.int8.float_layer_names`'s first set); ``float_layers``: the other
    ``keeps_float`` layers (per-image statistics, masks) that the network reads back."""
    graph = model_proto.graph
    dec_pattern, float_pattern = layer_name_pattern(decoding_layers), layer_name_pattern(float_layers)
    producer: dict[str, str] = {}
    label: dict[str, str] = {}
    after_network: set[str] = set()  # nodes downstream of a network node
    decoder: set[str] = set()
    network_outputs: set[str] = set()
    for node in graph.node:  # ONNX graphs are topologically sorted (onnx.checker enforces it)
        sources = [producer[t] for t in _inputs(node) if t in producer]
        if dec_pattern is not None and dec_pattern.search(node.name):
            kind = _DECODING
        elif float_pattern is not None and float_pattern.search(node.name):
            kind = _FLOAT
        elif "/" in node.name:
            kind = _NETWORK
        else:  # added by tf2onnx: part of the network when it reads the network
            kind = _NETWORK if any(label[s] == _NETWORK for s in sources) else _FLOAT
        if kind == _NETWORK or any(s in after_network for s in sources):
            after_network.add(node.name)
        if (kind == _DECODING and node.name in after_network) or any(s in decoder for s in sources):
            decoder.add(node.name)
            network_outputs |= {t for t in _inputs(node) if t in producer and label[producer[t]] == _NETWORK
                                and producer[t] not in decoder}
            kind = _DECODING
        label[node.name] = kind
        for out in node.output:
            producer[out] = node.name
    network = {n for n, k in label.items() if k == _NETWORK and n not in decoder}
    return NodeClasses(network, set(label) - network, decoder, network_outputs)


class _Feeds(CalibrationDataReader):
    """ORT's calibration reader over ready inputs (one ``{input name: array}`` per run)."""

    def __init__(self, feeds: Sequence[dict]):
        self._feeds = list(feeds)
        self._iter = iter(self._feeds)

    def get_next(self) -> dict | None:
        return next(self._iter, None)

    def __len__(self) -> int:
        return len(self._feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._iter = iter(self._feeds[start_index:end_index])


def pre_process(float_path: str, output_path: str) -> None:
    """ORT's ``quant_pre_process``, which its quantization guide recommends before quantizing:
    graph optimisation (its transpose optimiser removes most of the layout Transposes tf2onnx
    leaves around NHWC ops) and ONNX shape inference. Symbolic shape inference is skipped: it
    needs sympy, which kerapose does not depend on, and its docstring says it is most effective
    with transformer models."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(float_path, output_path, skip_symbolic_shape=True)


def quantize_static_int8(float_path: str, output_path: str, feeds: Sequence[dict], nodes_to_exclude: Iterable[str],
                         op_types: Iterable[str] = NETWORK_OP_TYPES) -> None:
    """Quantize the float ONNX file ``float_path`` into ``output_path`` with :data:`QUANT_SETTINGS`,
    calibrated on ``feeds`` (one ``{input name: array}`` per run), leaving ``nodes_to_exclude`` float.
    ``op_types``: the op types to quantize (ORT calibrates every tensor of these types)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    quantize_static(float_path, output_path, _Feeds(feeds), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=sorted(op_types), per_channel=QUANT_SETTINGS["per_channel"],
                    reduce_range=QUANT_SETTINGS["reduce_range"], activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, nodes_to_exclude=sorted(nodes_to_exclude),
                    calibrate_method=CalibrationMethod.MinMax)


def decoder_qdq_leaks(quantized_proto, decoder: Iterable[str]) -> list[str]:
    """Where the quantized model lets a decoder value pass through Q/DQ (empty: nowhere).

    ``decoder``: :attr:`NodeClasses.decoder` of the float model (ORT keeps node names). Found:
    a decoder node gone (replaced by a quantized one), a QuantizeLinear reading a decoder node's
    output, a decoder node reading a dequantized weight, a graph output made by Q/DQ, a Q/DQ node
    inside a control-flow body. The decoder reading the network's dequantized maps is the
    intended boundary."""
    graph = quantized_proto.graph
    decoder = set(decoder)
    nodes = {n.name: n for n in graph.node}
    producer = {o: n for n in graph.node for o in n.output}
    initializers = {t.name for t in graph.initializer}
    leaks = [f"decoder node {name} is no longer in the graph" for name in sorted(decoder - set(nodes))]
    for node in graph.node:
        stack = list(_subgraphs(node))
        while stack:
            sub = stack.pop()
            for inner in sub.node:
                if inner.op_type in _QDQ:
                    leaks.append(f"{inner.op_type} {inner.name} inside the body of {node.op_type} {node.name}")
                stack += list(_subgraphs(inner))
        if node.op_type == "QuantizeLinear" and node.input[0] in producer \
                and producer[node.input[0]].name in decoder:
            leaks.append(f"QuantizeLinear {node.name} quantizes {node.input[0]} of the decoder")
        if node.name in decoder:
            for t in node.input:
                src = producer.get(t)
                if src is not None and src.op_type == "DequantizeLinear" and src.input[0] in initializers:
                    leaks.append(f"decoder node {node.name} reads the dequantized constant {src.input[0]}")
    if decoder:
        for out in graph.output:
            src = producer.get(out.name)
            if src is not None and src.op_type in _QDQ:
                leaks.append(f"output {out.name} is made by {src.op_type} {src.name}")
    return leaks


def qdq_summary(quantized_proto) -> dict:
    """Counts of the quantized graph: Q and DQ nodes, convolutions and how many read int8 weights."""
    graph = quantized_proto.graph
    producer = {o: n for n in graph.node for o in n.output}
    int8_weights = {t.name for t in graph.initializer if t.data_type in (2, 3)}  # UINT8, INT8

    def int8_weight(node) -> bool:
        src = producer.get(node.input[1]) if len(node.input) > 1 else None
        return src is not None and src.op_type == "DequantizeLinear" and src.input[0] in int8_weights

    convs = [n for n in graph.node if n.op_type == "Conv"]
    return {"quantize_linear": sum(n.op_type == "QuantizeLinear" for n in graph.node),
            "dequantize_linear": sum(n.op_type == "DequantizeLinear" for n in graph.node),
            "conv": len(convs), "conv_int8": sum(int8_weight(n) for n in convs)}
