"""Reduced-precision graphs, made from the exported fp32 one.

fp16/bf16 (for GPUs; TensorRT 11 networks are strongly typed, so the precision
must be in the graph): onnxruntime's float16 converter with normalisation,
softmax and the reductions and powers they are built from kept in fp32, the
position arithmetic (rotary angles, found by what the nodes compute:
`graph_passes`) kept in fp32, values passed between fp32 nodes never rounded
through half precision, and fp32 graph inputs and outputs. bf16 is the same
graph with every fp16 tensor re-typed as bf16 (weights rounded from the fp32
originals to nearest even).

int8 (for CPUs with AVX-512 VNNI / AVX2), four recipes (`quantize_int8`):
dynamic quantization of the fused graph (fastest), static QDQ (activation
ranges calibrated on sample batches; the int8 search's), blockwise 8-bit
weights (MatMulNBits; closer to fp32), or blockwise with the family's most
sensitive products also kept fp32 (mixed; docs/precision.md has the sensitivity
pass that chose them). Embedding lookups, products of two activations and the
layers named in `keep_float` stay fp32. `export/int8_search.py` searches each
model's own products to keep fp32.
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from rerankrt.export.graph_passes import (
    drop_half_round_trips,
    fp32_islands,
    name_nodes,
    outer_products_as_mul,
    position_arithmetic,
)

# Ops whose arithmetic stays fp32: layer/RMS norms (fused or decomposed) and softmax.
FP32_OPS = [
    "LayerNormalization",
    "SimplifiedLayerNormalization",
    "SkipLayerNormalization",
    "SkipSimplifiedLayerNormalization",
    "RMSNormalization",
    "Softmax",
    "ReduceMean",
    "ReduceSum",
    "Pow",
    "Sqrt",
    "Reciprocal",
]
ONNX_TYPES = {"fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16}
QUANTIZED_OPS = ["MatMul", "Attention"]  # not Gather: embedding lookups cost no arithmetic
QUANTIZE_METHODS = ("dynamic", "static", "blockwise", "mixed")  # static: the int8 search's (needs calibration)
RECIPE_OPS = {
    "dynamic": {"MatMul", "Gemm", "Attention"},
    "static": {"MatMul"},
    "blockwise": {"MatMul"},
    "mixed": {"MatMul"},
}
"""The weight products each recipe quantizes (dynamic's graph is fused: Attention holds Q/K/V)."""
INT8_BLOCK = 32

log = logging.getLogger(__name__)


def cast_graph(source: Path, target: Path, precision: str) -> Path:
    """Write `source` cast to `precision` ("fp16" or "bf16") as `target` (with external data when large)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    # The converter needs every tensor's type to put casts around the fp32 ops. Infer them from the file
    # (works past protobuf's 2 GB limit, unlike in-memory inference), beside it so external data resolves.
    with tempfile.NamedTemporaryFile(dir=source.parent, suffix=".onnx") as inferred:
        onnx.shape_inference.infer_shapes_path(str(source), inferred.name)
        model = onnx.load(inferred.name)
    if precision not in ONNX_TYPES:
        raise ValueError(f"precision {precision!r}: expected fp16 or bf16")
    keep = fp32_nodes(model)
    original_casts = {n.name for n in model.graph.node if n.op_type == "Cast"}
    model = convert_float_to_float16(
        model, keep_io_types=True, op_block_list=FP32_OPS, node_block_list=sorted(keep), disable_shape_infer=True
    )
    drop_half_round_trips(model, original_casts)
    if precision == "bf16":  # weights straight from fp32 (no double rounding through fp16)
        _fp16_to_bf16(model, {i.name: i for i in onnx.load(str(source)).graph.initializer})
    _sort_topologically(model.graph)  # the converter appends its casts; TensorRT's parser wants producers first
    large = model.ByteSize() > 1_900_000_000
    onnx.save(model, str(target), save_as_external_data=large, location=f"{target.name}.data" if large else None)
    return target


def fp32_nodes(model: onnx.ModelProto) -> set[str]:
    """Names of the nodes a cast keeps in fp32 besides FP32_OPS: the position arithmetic (rotary angles) and the
    float nodes between two fp32 nodes. Names every node first; rewrites the angles' outer products as Mul."""
    name_nodes(model.graph)
    _sort_topologically(model.graph)  # the analyses walk producers before consumers
    positions = position_arithmetic(model)
    products = outer_products_as_mul(model, positions)
    keep = fp32_islands(model, positions, FP32_OPS)
    log.info(
        "cast: %d position nodes (%d outer products as Mul) and %d nodes between fp32 ones kept fp32",
        len(positions), products, len(keep - positions),
    )  # fmt: skip
    return keep


def fp32_op_names(model: onnx.ModelProto) -> dict[str, str]:
    """Node name -> element type of its first output, for the ops that must stay fp32 (for checks)."""
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.output]}
    return {
        n.name: TensorProto.DataType.Name(types.get(n.output[0], 0)) for n in model.graph.node if n.op_type in FP32_OPS
    }


def _bf16_bits(values: np.ndarray) -> np.ndarray:
    bits = values.astype(np.float32).view(np.uint32)
    rounded = bits + 0x7FFF + ((bits >> 16) & 1)  # round to nearest, ties to even
    return (rounded >> 16).astype(np.uint16)


def _to_bf16_tensor(tensor: TensorProto) -> TensorProto:
    values = numpy_helper.to_array(tensor).astype(np.float32)
    return helper.make_tensor(tensor.name, TensorProto.BFLOAT16, values.shape, _bf16_bits(values).tobytes(), raw=True)


def _fp16_to_bf16(model: onnx.ModelProto, fp32_initializers: dict[str, TensorProto]) -> None:
    graph = model.graph
    for i, init in enumerate(graph.initializer):
        if init.data_type == TensorProto.FLOAT16:
            graph.initializer[i].CopyFrom(_to_bf16_tensor(fp32_initializers.get(init.name, init)))
    for value in [*graph.value_info, *graph.input, *graph.output]:
        if value.type.tensor_type.elem_type == TensorProto.FLOAT16:
            value.type.tensor_type.elem_type = TensorProto.BFLOAT16
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT16:
                attr.i = TensorProto.BFLOAT16
            elif attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT16:
                attr.t.CopyFrom(_to_bf16_tensor(attr.t))


def _sort_topologically(graph: onnx.GraphProto) -> None:
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise ValueError(f"graph has a cycle or a missing input near {pending[0].name}")
        for node in ready:
            available.update(node.output)
        ordered.extend(ready)
        ready_ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ready_ids]
    graph.ClearField("node")
    graph.node.extend(ordered)


def quantize_int8(
    source: Path,
    target: Path,
    fusion: str | None = None,
    keep_float: Sequence[str] = (),
    method: str = "dynamic",
    sensitive: Sequence[str] = (),
    calibration: Sequence[Mapping[str, np.ndarray]] = (),
) -> Path:
    """Write `source` with int8 weight matrix products as `target`; `keep_float`: regexes of node names to skip.

    dynamic: the graph fused first when `fusion` names onnxruntime's optimizer model type for it (the family's
    `ExportHints.fusion_type`, e.g. "bert"), weights per output channel, activations per tensor at run time
    (MatMulInteger): the fastest on VNNI/AVX2 CPUs.
    static: QDQ, weights per output channel, activations per tensor with ranges calibrated (min/max) on the graph
    feeds `calibration`: int8 x int8 products with no run-time range (VNNI), and OpenVINO reads it.
    blockwise: weights in blocks of INT8_BLOCK input rows with a scale each, activations quantized per block at run
    time (MatMulNBits, 8 bits, int8 compute): slower, markedly closer to fp32 on sensitive models.
    mixed: blockwise, with the products named by `sensitive` (regexes) also kept fp32.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if method not in QUANTIZE_METHODS:
        raise ValueError(f"int8 method {method!r}: expected one of {', '.join(QUANTIZE_METHODS)}")
    if method == "static" and not calibration:
        raise ValueError("int8 method 'static' needs calibration feeds")
    if method == "mixed":
        keep_float = (*keep_float, *sensitive)
    large = bool(external_data_files(source))
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".quantize-") as tmp:
        graph = _fuse(source, Path(tmp) / "fused.onnx", fusion, large) if method == "dynamic" else source
        excluded, quantized = _int8_exclusions(onnx.load(str(graph), load_external_data=False).graph, keep_float)
        log.info("int8 %s: %d weight matrix products quantized, %d kept fp32", method, quantized, len(excluded))
        if method == "dynamic":
            quantize_dynamic(
                graph,
                target,
                op_types_to_quantize=QUANTIZED_OPS,
                per_channel=True,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=excluded,
                use_external_data_format=large,
                extra_options={"DefaultTensorType": TensorProto.FLOAT},  # fused ops carry no type for the quantizer
            )
        elif method == "static":
            _quantize_static(graph, target, excluded, calibration, large)
        else:  # blockwise, mixed
            from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

            quantizer = MatMulNBitsQuantizer(
                onnx.load(str(graph)),
                bits=8,
                block_size=INT8_BLOCK,
                is_symmetric=True,
                accuracy_level=4,  # int8 arithmetic
                nodes_to_exclude=excluded,
            )
            quantizer.process()
            quantizer.model.save_model_to_file(str(target), use_external_data_format=large)
    return target


def _quantize_static(
    source: Path, target: Path, excluded: list[str], calibration: Sequence[Mapping[str, np.ndarray]], large: bool
) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Feeds(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter(calibration)

        def get_next(self):
            return next(self.feeds, None)

    quantize_static(
        source,
        target,
        Feeds(),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=sorted(RECIPE_OPS["static"]),
        per_channel=True,
        activation_type=QuantType.QUInt8,  # u8 x s8: what VNNI multiplies
        weight_type=QuantType.QInt8,
        nodes_to_exclude=excluded,
        use_external_data_format=large,
        extra_options={"MatMulConstBOnly": True, "WeightSymmetric": True},
    )


def int8_products(graph: Path, method: str, keep_float: Sequence[str] = ()) -> list[str]:
    """Names of the weight products `method` quantizes in `graph` (those `keep_float` names excepted)."""
    nodes = onnx.load(str(graph), load_external_data=False).graph
    excluded = set(_int8_exclusions(nodes, keep_float)[0])
    return [n.name for n in nodes.node if n.op_type in RECIPE_OPS[method] and n.name not in excluded]


def fuse_for_int8(source: Path, target: Path, fusion: str | None) -> Path:
    """The graph the dynamic recipe quantizes: `source` fused as onnxruntime's model type `fusion` (or itself)."""
    return _fuse(source, target, fusion, bool(external_data_files(source)))


def external_data_files(graph: Path) -> list[Path]:
    """The files beside `graph` holding its external data (optimum writes model.onnx_data, onnx model.onnx.data)."""
    return sorted(p for p in graph.parent.glob(f"{graph.name}*") if p.name != graph.name)


def _int8_exclusions(graph: onnx.GraphProto, keep_float: Sequence[str]) -> tuple[list[str], int]:
    """Nodes to keep fp32: MatMuls of two activations (attention scores, rotary tables: int8 there costs accuracy
    for little speed) and the weight products (MatMul, Gemm, fused Attention) named in `keep_float`. Also the
    number of weight products left to quantize."""
    weights = {init.name for init in graph.initializer}
    excluded, quantized = [], 0
    for node in graph.node:
        if node.op_type not in ("MatMul", "Gemm", "Attention"):
            continue
        if node.input[1] not in weights or any(re.search(pattern, node.name) for pattern in keep_float):
            # the quantizer rewrites a Gemm as a MatMul named <name>_MatMul before it quantizes
            excluded.extend([node.name, f"{node.name}_MatMul"] if node.op_type == "Gemm" else [node.name])
        else:
            quantized += 1
    return excluded, quantized


def _fuse(source: Path, target: Path, fusion: str | None, large: bool = False) -> Path:
    """The graph with attention/GELU/layer-norm fused by onnxruntime's optimizer as model type `fusion`, or `source`
    when there is none."""
    if fusion is None or large:  # the optimizer's save fails past 2 GB; fusion buys int8 little (README)
        return source
    from onnxruntime.transformers.optimizer import MODEL_TYPES, optimize_model

    if fusion not in MODEL_TYPES:  # the optimizer would return the graph unfused, with a warning only
        raise ValueError(f"{fusion!r} is not a model type of onnxruntime's optimizer ({', '.join(MODEL_TYPES)})")
    optimized = optimize_model(str(source), model_type=fusion, num_heads=0, hidden_size=0, opt_level=1)
    fused = {op: n for op, n in optimized.get_fused_operator_statistics().items() if n}
    log.info("fused with onnxruntime's optimizer: %s", fused)
    optimized.save_model_to_file(str(target))
    return target
