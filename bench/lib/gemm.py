"""The fastest matrix products this CPU runs at each precision, measured per runtime (bench/gemm_ceiling.py prints
them; bench/cpu_speed.py divides each row's arithmetic by them): what a reranker's forward pass, almost all matrix
products, can reach here. bench/lib/peak.py's peak is computed from the CPU's features and reported clock, which a VM
may understate (turbo); this is the measured counterpart.

Runtimes, each as rerankrt serves with it:
  fp32  OpenVINO (INFERENCE_PRECISION_HINT f32), ONNX Runtime, torch
  bf16  OpenVINO (the bf16 hint on the fp32 graph, what a bf16 artifact serves on CPU), torch (bf16 tensors)
  int8  ONNX Runtime MatMulInteger (uint8 x int8, what the dynamic recipe's products run),
        OpenVINO on a QuantizeLinear/DequantizeLinear MatMul (what the static and blockwise graphs become)
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bench.lib.results import log

SHAPES = {  # name -> (M, K, N)
    "full": {"ffn up, 8 pairs x 256 tokens (2048 x 768 -> 3072)": (2048, 768, 3072), "square 2048": (2048, 2048, 2048)},
    "small": {"small (128 x 64 -> 256)": (128, 64, 256)},
}


def matmul_graph(path: Path, k: int, n: int, quantized: str | None = None) -> Path:
    """An ONNX graph computing x (M x k) @ W (k x n), W an initializer: fp32 MatMul, `integer` (MatMulInteger on
    uint8 x int8, the dynamic recipe's kernel), or `qdq` (QuantizeLinear/DequantizeLinear around a MatMul)."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((k, n)).astype(np.float32)
    if quantized == "integer":
        x = helper.make_tensor_value_info("x", TensorProto.UINT8, ["m", k])
        y = helper.make_tensor_value_info("y", TensorProto.INT32, ["m", n])
        w = numpy_helper.from_array(rng.integers(-127, 128, (k, n)).astype(np.int8), "w")
        nodes, inits = [helper.make_node("MatMulInteger", ["x", "w"], ["y"])], [w]
    elif quantized == "qdq":
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", k])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", n])
        scale = np.float32(np.abs(weight).max() / 127)
        inits = [
            numpy_helper.from_array((weight / scale).round().astype(np.int8), "wq"),
            numpy_helper.from_array(scale, "ws"),
            numpy_helper.from_array(np.int8(0), "wz"),
            numpy_helper.from_array(np.float32(0.05), "xs"),
            numpy_helper.from_array(np.uint8(128), "xz"),
        ]
        nodes = [
            helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
            helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
            helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"]),
            helper.make_node("MatMul", ["xd", "wd"], ["y"]),
        ]
    else:
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", k])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", n])
        nodes, inits = [helper.make_node("MatMul", ["x", "w"], ["y"])], [numpy_helper.from_array(weight, "w")]
    model = helper.make_model(
        helper.make_graph(nodes, "matmul", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)]
    )
    model.ir_version = 8
    onnx.save(model, path)
    return path


def best_seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def runners(shape: tuple[int, int, int], folder: Path, threads: int) -> dict:
    """(label, precision) -> a call computing one product of `shape`."""
    import onnxruntime as ort
    import torch

    m, k, n = shape
    rng = np.random.default_rng(1)
    x32 = rng.standard_normal((m, k)).astype(np.float32)
    x8 = rng.integers(0, 256, (m, k)).astype(np.uint8)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    fp32_graph = matmul_graph(folder / "fp32.onnx", k, n)
    ort_fp32 = ort.InferenceSession(str(fp32_graph), options, providers=["CPUExecutionProvider"])
    ort_int8 = ort.InferenceSession(
        str(matmul_graph(folder / "int8.onnx", k, n, "integer")), options, providers=["CPUExecutionProvider"]
    )
    torch.set_num_threads(threads)
    a32, b32 = torch.from_numpy(x32), torch.randn(k, n)
    a16, b16 = a32.bfloat16(), b32.bfloat16()
    calls = {
        ("onnxruntime", "fp32"): lambda: ort_fp32.run(None, {"x": x32}),
        ("torch", "fp32"): lambda: torch.matmul(a32, b32),
        ("torch", "bf16"): lambda: torch.matmul(a16, b16),
        ("onnxruntime MatMulInteger", "int8"): lambda: ort_int8.run(None, {"x": x8}),
    }
    try:
        import openvino as ov
    except ImportError:
        return calls
    core = ov.Core()
    qdq_graph = matmul_graph(folder / "qdq.onnx", k, n, "qdq")
    for label, precision, graph, hint in (
        ("openvino", "fp32", fp32_graph, "f32"),
        ("openvino (bf16 hint)", "bf16", fp32_graph, "bf16"),
        ("openvino (QDQ graph)", "int8", qdq_graph, "f32"),
    ):
        config = {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_PRECISION_HINT": hint}  # fmt: skip
        compiled = core.compile_model(core.read_model(str(graph)), "CPU", config)
        calls[(label, precision)] = lambda compiled=compiled: compiled({0: x32})
    return calls


def measure_ceilings(shapes: dict[str, tuple[int, int, int]], threads: int, repeats: int) -> list[dict]:
    """Every runtime and precision on every shape: the best of `repeats` calls after a warm-up, in G ops/s (a
    multiply-add counts 2)."""
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for shape_name, shape in shapes.items():
            m, k, n = shape
            for (label, precision), call in runners(shape, Path(folder), threads).items():
                g_ops_per_s = 2 * m * k * n / best_seconds(call, repeats) / 1e9
                rows.append({"shape": shape_name, "runtime": label, "precision": precision, "g_ops_per_s": g_ops_per_s})
                log(f"{shape_name:52s} {label:28s} {precision}: {g_ops_per_s:7.1f} G ops/s")
    return rows


def best_by_precision(rows: list[dict]) -> dict[str, float]:
    """The highest G ops/s measured at each precision (any runtime, any shape)."""
    return {p: max(r["g_ops_per_s"] for r in rows if r["precision"] == p) for p in {r["precision"] for r in rows}}


def measured_ceiling(threads: int, repeats: int = 5) -> dict[str, float]:
    """The fastest matrix product at each precision on the full shapes, in ops/s: what a benchmark divides its rows'
    arithmetic by, measured in the same run."""
    rows = measure_ceilings(SHAPES["full"], threads, repeats)
    return {precision: g * 1e9 for precision, g in best_by_precision(rows).items()}
