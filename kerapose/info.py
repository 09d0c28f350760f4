"""Parameter and FLOP tables per module, for `kerapose info`.

Modules are the model's top-level sub-models (``backbone``, ``keypoint_fpn``, ``prn``, ...),
as every kerapose model is composed of named functional sub-models. FLOPs come from
TensorFlow's graph profiler on the model traced at a fixed input size: it counts two FLOPs
per multiply-add of a convolution or matmul plus element-wise ops. ``macs`` counts only the
multiply-adds of convolutions and matmuls, the figure most papers (OpenPose, FTN) quote as
"FLOPs".
"""

from __future__ import annotations

import re

import keras
import numpy as np

__all__ = ["count_weights", "model_info", "format_table"]

_MAC_OPS = ("Conv2D", "DepthwiseConv2dNative", "MatMul", "BatchMatMulV2", "Conv2DBackpropInput")


def count_weights(layer_or_model) -> tuple[int, int]:
    """(all parameters, parameters that are not biases) of a layer or model."""
    total = without_bias = 0
    for v in layer_or_model.weights:
        n = int(np.prod(v.shape))
        total += n
        if not v.path.split("/")[-1].startswith("bias"):
            without_bias += n
    return total, without_bias


def _modules(model: keras.Model) -> list[tuple[str, object]]:
    mods = [(layer.name, layer) for layer in model.layers if isinstance(layer, keras.Model)]
    seen = {id(m) for _, m in mods}
    # sub-models held as attributes but not called in the graph (MultiPoseNet.prn)
    for attr in ("prn",):
        sub = getattr(model, attr, None)
        if isinstance(sub, keras.Model) and id(sub) not in seen:
            mods.append((sub.name, sub))
    return mods


def _profile_flops(fn, input_specs) -> dict[str, tuple[int, int]]:
    """Op name -> (float ops, MAC float ops) of a traced function, from TF's profiler."""
    import tensorflow as tf

    concrete = tf.function(fn).get_concrete_function(*input_specs)
    graph = concrete.graph
    opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    types = {op.name: op.type for op in graph.get_operations()}
    by_name: dict[str, int] = {}
    stack = [tf.compat.v1.profiler.profile(graph, cmd="scope", options=opts)]
    while stack:
        node = stack.pop()
        if node.name in types:
            by_name[node.name] = node.float_ops
        stack.extend(node.children)
    out: dict[str, tuple[int, int]] = {}
    for name, flops in by_name.items():
        mac = flops // 2 if types.get(name) in _MAC_OPS else 0
        out[name] = (int(flops), int(mac))
    return out


def model_info(model: keras.Model, input_hw: tuple[int, int] | None = None) -> dict:
    """Per-module parameters and FLOPs of a built model.

    Args:
        model: a kerapose model (or any functional Keras model with one image input).
        input_hw: size for the FLOP count; default the model's own fixed size, else 368x432.
    """
    import tensorflow as tf

    params, wo_bias = count_weights(model)
    modules = []
    for name, sub in _modules(model):
        p, w = count_weights(sub)
        modules.append({"name": name, "params": p, "weights_without_bias": w, "flops": 0, "macs": 0})
    other_p = params - sum(m["params"] for m in modules)
    other_w = wo_bias - sum(m["weights_without_bias"] for m in modules)

    flops_total = macs_total = 0
    other_flops = other_macs = 0
    per_module = {m["name"]: m for m in modules}
    specs = []
    for inp in model.inputs:
        shape = list(inp.shape)
        if len(shape) == 4 and shape[-1] == 3 and (shape[1] is None or shape[2] is None):
            h, w = input_hw or (368, 432)
            shape = [1, h, w, 3]
        elif input_hw is not None and len(shape) == 4 and shape[-1] == 3:
            shape = [1, *input_hw, 3]
        shape[0] = 1
        specs.append(tf.TensorSpec(shape, tf.float32))
    size = tuple(specs[0].shape[1:3]) if specs else None

    def fn(*xs):
        return model(xs[0] if len(xs) == 1 else list(xs), training=False)

    op_flops = _profile_flops(fn, specs)
    # The PRN is not in the image graph; profile it on its own input (one RoI).
    extra = {}
    for name, sub in _modules(model):
        if sub not in model.layers:
            spec = [tf.TensorSpec([1, *sub.inputs[0].shape[1:]], tf.float32)]
            extra[name] = _profile_flops(lambda x, s=sub: s(x, training=False), spec)
    names = sorted(per_module, key=len, reverse=True)
    pattern = re.compile(r"^(?:%s)(?:_\d+)?$" % "|".join(re.escape(n) for n in names)) if names else None
    for op_name, (f, m) in op_flops.items():
        flops_total += f
        macs_total += m
        owner = None
        if pattern is not None:
            for part in op_name.split("/"):
                hit = pattern.match(part)
                if hit:
                    owner = re.sub(r"_\d+$", "", part) if part not in per_module else part
                    break
        if owner in per_module:
            per_module[owner]["flops"] += f
            per_module[owner]["macs"] += m
        else:
            other_flops += f
            other_macs += m
    for name, ops in extra.items():
        per_module[name]["flops"] = sum(f for f, _ in ops.values())
        per_module[name]["macs"] = sum(m for _, m in ops.values())
        per_module[name]["note"] = "per RoI (not in the image graph)"
    if other_p or other_flops:
        modules.append({"name": "(other)", "params": other_p, "weights_without_bias": other_w,
                        "flops": other_flops, "macs": other_macs})
    return {
        "name": model.name,
        "class": type(model).__name__,
        "input_size": list(size) if size else None,
        "params": params,
        "trainable_params": int(sum(int(np.prod(v.shape)) for v in model.trainable_weights)),
        "weights_without_bias": wo_bias,
        "flops": flops_total,
        "macs": macs_total,
        "modules": modules,
    }


def _human(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return str(int(n))


def format_table(info: dict) -> str:
    """A plain-text table of :func:`model_info`'s result."""
    rows = [("module", "params", "w/o bias", "GMACs", "GFLOPs")]
    for m in info["modules"]:
        rows.append((m["name"] + (" *" if m.get("note") else ""), f"{m['params']:,}",
                     f"{m['weights_without_bias']:,}", f"{m['macs'] / 1e9:.3f}", f"{m['flops'] / 1e9:.3f}"))
    rows.append(("total", f"{info['params']:,}", f"{info['weights_without_bias']:,}",
                 f"{info['macs'] / 1e9:.3f}", f"{info['flops'] / 1e9:.3f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = [f"{info['class']} '{info['name']}' at input {info['input_size']}"]
    for i, r in enumerate(rows):
        lines.append("  ".join(c.ljust(widths[j]) if j == 0 else c.rjust(widths[j]) for j, c in enumerate(r)))
        if i == 0 or i == len(rows) - 2:
            lines.append("  ".join("-" * w for w in widths))
    if any(m.get("note") for m in info["modules"]):
        lines.append("* " + next(m["note"] for m in info["modules"] if m.get("note")) + "; not in the total FLOPs")
    return "\n".join(lines)
