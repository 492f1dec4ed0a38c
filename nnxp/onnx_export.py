"""Export a Sequential model to ONNX (optional extra ``onnx``).

Each Dense layer becomes Gemm (x @ W + b) followed by its activation node;
Flatten becomes ONNX Flatten (axis 1), so a model declared on images takes
them as (N, 28, 28); Dropout and Input are the identity at inference and are left out. GELU uses the same tanh
approximation as nnxp, spelled out in elementary ONNX ops so any runtime has it.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from .errors import NnxpError, NotCompiledError
from .layers import Activation, Dense, Dropout, Flatten, InputLayer
from .ops.activation import ELU_ALPHA, LEAKY_RELU_SLOPE

OPSET = 17


def _onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise NnxpError('ONNX export needs the onnx package: pip install "nnxp[onnx]"') from None
    return onnx


def _activation_nodes(onnx: Any, name: str, x: str, prefix: str, inits: list) -> tuple[list, str]:
    """Nodes computing activation `name` of tensor `x`; returns (nodes, output name)."""
    h = onnx.helper
    out = f"{prefix}_{name}"
    simple = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "softplus": "Softplus"}
    if name == "linear":
        return [], x
    if name in simple:
        return [h.make_node(simple[name], [x], [out])], out
    if name == "leaky_relu":
        return [h.make_node("LeakyRelu", [x], [out], alpha=LEAKY_RELU_SLOPE)], out
    if name == "elu":
        return [h.make_node("Elu", [x], [out], alpha=ELU_ALPHA)], out
    if name == "softmax":
        return [h.make_node("Softmax", [x], [out], axis=-1)], out
    if name == "silu":  # x * sigmoid(x)
        return [h.make_node("Sigmoid", [x], [f"{prefix}_sig"]), h.make_node("Mul", [x, f"{prefix}_sig"], [out])], out
    if name == "gelu":
        # 0.5 x (1 + tanh(c (x + 0.044715 x^3)))
        consts = {"half": 0.5, "one": 1.0, "c": math.sqrt(2 / math.pi), "k": 0.044715, "three": 3.0}
        for key, value in consts.items():
            inits.append(onnx.numpy_helper.from_array(np.array(value, np.float32), f"{prefix}_{key}"))
        p = lambda s: f"{prefix}_{s}"  # noqa: E731
        nodes = [
            h.make_node("Pow", [x, p("three")], [p("x3")]),
            h.make_node("Mul", [p("x3"), p("k")], [p("kx3")]),
            h.make_node("Add", [x, p("kx3")], [p("inner")]),
            h.make_node("Mul", [p("inner"), p("c")], [p("scaled")]),
            h.make_node("Tanh", [p("scaled")], [p("t")]),
            h.make_node("Add", [p("t"), p("one")], [p("t1")]),
            h.make_node("Mul", [x, p("t1")], [p("xt1")]),
            h.make_node("Mul", [p("xt1"), p("half")], [out]),
        ]
        return nodes, out
    raise NnxpError(f"activation {name!r} has no ONNX export")


def export_onnx(model: Any, path: str | os.PathLike) -> str:
    """Write `model` as an ONNX graph with input ``x`` (N, input_dim), or (N, *input_shape) after a Flatten,
    and output ``y``; returns the path."""
    onnx = _onnx()
    h = onnx.helper
    if not model.get_weights():  # builds the weights when the input size is known (what Sequential.export_onnx checks)
        raise NotCompiledError("the model has no weights yet: give the first layer `input_dim` or call fit")
    if model.dtype != np.float32:
        raise NnxpError(f"ONNX export supports float32 models. Received: dtype={model.dtype}")
    weights = model.get_weights()
    nodes: list = []
    inits: list = []
    current, w_index = "x", 0
    for i, layer in enumerate(model.layers):
        prefix = f"l{i}"
        if isinstance(layer, (Dropout, InputLayer)):
            continue
        if isinstance(layer, Flatten):
            nodes.append(h.make_node("Flatten", [current], [f"{prefix}_flat"], axis=1))
            current = f"{prefix}_flat"
            continue
        if isinstance(layer, Dense):
            kernel = weights[w_index]
            bias = weights[w_index + 1] if layer.use_bias else np.zeros(layer.units, np.float32)
            w_index += 2 if layer.use_bias else 1
            inits += [onnx.numpy_helper.from_array(kernel, f"{prefix}_W"),
                      onnx.numpy_helper.from_array(bias, f"{prefix}_b")]
            nodes.append(h.make_node("Gemm", [current, f"{prefix}_W", f"{prefix}_b"], [f"{prefix}_z"]))
            current = f"{prefix}_z"
        elif not isinstance(layer, Activation):
            raise NnxpError(f"layer {type(layer).__name__} has no ONNX export")
        act_nodes, current = _activation_nodes(onnx, layer.activation, current, prefix, inits)
        nodes += act_nodes
    nodes.append(h.make_node("Identity", [current], ["y"]))
    first = model.layers[0]
    sample = getattr(first, "input_shape", None) if isinstance(first, (Flatten, InputLayer)) else None
    sample = list(sample) if sample else [model.input_dim]
    graph = h.make_graph(
        nodes,
        model.name,
        [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", *sample])],
        [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", model.output_dim])],
        initializer=inits,
    )
    proto = h.make_model(graph, opset_imports=[h.make_opsetid("", OPSET)], producer_name="nnxp")
    proto.ir_version = 8  # readable by onnxruntime releases of the last few years
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return str(path)
