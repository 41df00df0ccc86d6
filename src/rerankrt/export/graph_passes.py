"""Graph analyses and rewrites for the reduced-precision and TensorRT graphs, found by what the nodes compute.

No pass looks at node names: a model family's export may name its nodes anything.

- `position_arithmetic`: the nodes that compute with positions (rotary angles: position ids made by
  Range, CumSum or taken as an integer input, cast to float, times the inverse frequencies, Sin/Cos,
  and the scaling of the result up to where it meets the activations). Half precision cannot hold
  them: fp16's spacing is 1 past position 1024 and 4 past 4096, bf16's 2 past 256, so angles lose
  whole radians. transformers computes this block in fp32 on purpose; the cast keeps it there.
- `fp32_islands`: float nodes wedged between two fp32 nodes (the `+ eps` between an RMS norm's
  ReduceMean and Sqrt), so a value never leaves fp32 inside a norm.
- `outer_products_as_mul`: MatMuls over a contraction dimension of 1 (the rotary angle table is
  inv_freq[:, None] @ positions[None, :]) as the broadcast Mul they are. A MatMul may run in TF32 on
  Ampere and later (10-bit mantissa, fp16's precision); an elementwise Mul never does.
- `drop_half_round_trips`: after onnxruntime's float16 converter, a value passed from one fp32 node to
  another no longer goes through fp16 (the converter casts every blocked node's output to fp16 and
  back, which rounds positions and overflows x² past 256).
- `float_cumsum`: integer CumSum (XLM-R's position ids: the cumulative sum of the INT32 padding mask)
  as Cast to FLOAT -> CumSum -> Cast back, the form onnx-tensorrt documents (CumSum: FP32, FP16, BF16
  in TensorRT 10.0-10.15). Exact: fp32 holds every integer below 2**24.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import onnx
from onnx import TensorProto, helper

FLOATS = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}
INTEGERS = {
    TensorProto.INT8, TensorProto.INT16, TensorProto.INT32, TensorProto.INT64,
    TensorProto.UINT8, TensorProto.UINT16, TensorProto.UINT32, TensorProto.UINT64,
}  # fmt: skip
POSITION_SOURCES = {"Range", "CumSum"}  # integer positions are made by these (arange, cumsum of the mask)
ANGLES = {"Sin", "Cos"}
LOOKUPS = {"Gather", "GatherElements", "GatherND"}  # a learned table's rows: weights, not arithmetic


def value_types(graph: onnx.GraphProto) -> dict[str, int]:
    """Tensor name -> element type, from the graph's inputs, outputs, value_info, initializers and Constant nodes."""
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.output, *graph.value_info]}
    types.update({i.name: i.data_type for i in graph.initializer})
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    types[node.output[0]] = attr.t.data_type
    return {name: t for name, t in types.items() if t}


def name_nodes(graph: onnx.GraphProto) -> None:
    """Give every node a unique name (the float16 converter blocks nodes by name)."""
    seen: set[str] = set()
    for i, node in enumerate(graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_rerankrt_{i}"
        seen.add(node.name)


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    out = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            if name:
                out[name].append(node)
    return out


def _propagate(graph: onnx.GraphProto, types: dict[str, int], seeds: set[str]) -> tuple[set[str], set[str]]:
    """Numeric tensors computed from `seeds` (and constants and shapes) without touching an activation, and the
    float activations. Booleans stop it: a mask built by comparing positions is a mask, not arithmetic."""
    activation = {i.name for i in graph.input if types.get(i.name) in FLOATS}
    positional = set(seeds)
    for node in graph.node:
        inputs = [i for i in node.input if i]
        outputs = [o for o in node.output if o]
        float_outputs = [o for o in outputs if types.get(o) in FLOATS]
        if node.op_type in LOOKUPS or any(i in activation for i in inputs if types.get(i) in FLOATS):
            activation.update(float_outputs)
            continue
        if any(i in positional for i in inputs if types.get(i) in FLOATS | INTEGERS):
            positional.update(o for o in outputs if types.get(o) in FLOATS | INTEGERS)
    return positional, activation


def position_arithmetic(model: onnx.ModelProto) -> set[str]:
    """Names of the float nodes that compute with positions, and the constants they read (see the module doc).

    `model` must carry inferred types (value_info) and nodes in topological order.
    """
    graph = model.graph
    types = value_types(graph)
    producer = {o: n for n in graph.node for o in n.output if o}
    sources = {n.output[0] for n in graph.node if n.op_type in POSITION_SOURCES and types.get(n.output[0])}
    positional, activation = _propagate(graph, types, sources)
    positional -= activation  # a cumulative sum over activations is not a position
    # position ids given as an integer input (a decoder exported with position_ids): those that reach Sin/Cos
    angles = {o for n in graph.node if n.op_type in ANGLES for o in n.output}
    for graph_input in graph.input:
        if types.get(graph_input.name) in INTEGERS:
            reached, _ = _propagate(graph, types, {graph_input.name})
            if reached & angles:
                positional |= reached - activation
    kept = {
        producer[name].name
        for name in positional
        if name in producer and types.get(name) in FLOATS and producer[name].op_type not in LOOKUPS
    }
    # and everything float those nodes read (inverse frequencies, scales): constants or positions, never activations
    pending = [producer[n] for n in producer if producer[n].name in kept]
    while pending:
        node = pending.pop()
        for name in node.input:
            source = producer.get(name)
            if source is None or source.name in kept or types.get(name) not in FLOATS or name in activation:
                continue
            kept.add(source.name)
            pending.append(source)
    return kept


def fp32_islands(model: onnx.ModelProto, fp32_nodes: set[str], fp32_ops: Iterable[str]) -> set[str]:
    """Float nodes fed by an fp32 node (and otherwise by constants), or Constant nodes, whose outputs all go to
    fp32 nodes: they join them, so a value stays fp32 between two fp32 nodes."""
    graph = model.graph
    types = value_types(graph)
    fp32_ops = set(fp32_ops)
    producer = {o: n for n in graph.node for o in n.output if o}
    consumers = _consumers(graph)
    constant = {i.name for i in graph.initializer} | {
        o for n in graph.node if n.op_type == "Constant" for o in n.output
    }
    graph_outputs = {o.name for o in graph.output}
    kept = set(fp32_nodes) | {n.name for n in graph.node if n.op_type in fp32_ops}
    changed = True
    while changed:
        changed = False
        for node in graph.node:
            outputs = [o for o in node.output if o]
            if node.name in kept or not outputs or not all(types.get(o) in FLOATS for o in outputs):
                continue
            float_inputs = [i for i in node.input if i and types.get(i) in FLOATS]
            from_fp32 = [i for i in float_inputs if i in producer and producer[i].name in kept]
            fed = all(i in constant or i in from_fp32 for i in float_inputs) and (from_fp32 or not node.input)
            feeds = all(o not in graph_outputs and consumers[o] for o in outputs) and all(
                c.name in kept for o in outputs for c in consumers[o]
            )
            if fed and feeds:
                kept.add(node.name)
                changed = True
    return kept - {n.name for n in graph.node if n.op_type in fp32_ops}


def outer_products_as_mul(model: onnx.ModelProto, nodes: set[str]) -> int:
    """Rewrite the MatMuls among `nodes` whose contraction dimension is 1 as Mul; return how many."""
    shapes = {
        v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
        for v in [*model.graph.value_info, *model.graph.input]
        if v.type.tensor_type.HasField("shape")
    }
    shapes.update({i.name: list(i.dims) for i in model.graph.initializer})
    rewritten = 0
    for node in model.graph.node:
        if node.op_type != "MatMul" or node.name not in nodes:
            continue
        a, b = shapes.get(node.input[0]), shapes.get(node.input[1])
        if a and b and len(a) >= 2 and len(b) >= 2 and 1 in (a[-1], b[-2]):
            node.op_type = "Mul"  # [..., M, 1] x [..., 1, N]: the same broadcast product, elementwise
            rewritten += 1
    return rewritten


def drop_half_round_trips(model: onnx.ModelProto, original_casts: set[str]) -> int:
    """Remove fp32 -> half -> fp32 Cast pairs added by the float16 converter (not in `original_casts`)."""
    graph = model.graph
    types = value_types(graph)
    producer = {o: n for n in graph.node for o in n.output if o}
    half = {TensorProto.FLOAT16, TensorProto.BFLOAT16}
    replaced: dict[str, str] = {}
    for node in graph.node:
        if node.op_type != "Cast" or node.name in original_casts or _cast_to(node) != TensorProto.FLOAT:
            continue
        first = producer.get(node.input[0])
        if first is None or first.op_type != "Cast" or first.name in original_casts or _cast_to(first) not in half:
            continue
        if types.get(first.input[0]) == TensorProto.FLOAT:
            replaced[node.output[0]] = first.input[0]
    graph_outputs = {o.name for o in graph.output}
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in replaced and name not in graph_outputs:
                node.input[i] = replaced[name]
    _drop_unused(graph, lambda n: n.op_type == "Cast" and n.name not in original_casts)
    return len(replaced)


def _cast_to(node: onnx.NodeProto) -> int | None:
    return next((a.i for a in node.attribute if a.name == "to"), None)


def _drop_unused(graph: onnx.GraphProto, removable) -> None:
    while True:
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if removable(n) and not any(o in used for o in n.output)]
        if not dead:
            return
        for node in dead:
            graph.node.remove(node)


def _inferred_types(model: onnx.ModelProto) -> dict[str, int]:
    """`value_types`, with onnx's type inference where the graph does not say (the model is not changed)."""
    types = value_types(model.graph)
    cumsum_inputs = [n.input[0] for n in model.graph.node if n.op_type == "CumSum"]
    if all(name in types for name in cumsum_inputs):
        return types
    return value_types(onnx.shape_inference.infer_shapes(model).graph) | types


def integer_cumsums(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The CumSum nodes over an integer tensor (outside onnx-tensorrt's documented types)."""
    types = _inferred_types(model)
    return [n for n in model.graph.node if n.op_type == "CumSum" and types.get(n.input[0]) in INTEGERS]


def float_cumsum(model: onnx.ModelProto) -> int:
    """Rewrite each integer CumSum as Cast(FLOAT) -> CumSum -> Cast(back); return how many.
    Exact while the sums stay below 2**24 (positions do)."""
    types = _inferred_types(model)
    graph = model.graph
    rewritten = 0
    for node in integer_cumsums(model):
        position = list(graph.node).index(node)
        data, out = node.input[0], node.output[0]
        as_float, summed = f"{data}_rerankrt_float", f"{out}_rerankrt_float"
        cast_in = helper.make_node("Cast", [data], [as_float], to=TensorProto.FLOAT, name=f"{node.name}_to_float")
        cast_out = helper.make_node("Cast", [summed], [out], to=types[data], name=f"{node.name}_to_int")
        node.input[0], node.output[0] = as_float, summed
        graph.node.insert(position, cast_in)
        graph.node.insert(position + 2, cast_out)
        rewritten += 1
    return rewritten
