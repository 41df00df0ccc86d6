"""The fastest matrix products this CPU runs at each precision, measured: what a reranker's forward pass (almost all
matrix products) can reach here, per runtime. bench/lib/peak.py's peak is computed from the CPU's features and its
reported clock, which a VM may understate (turbo) or the vendor's pipes may not reach; this measures it.

One MatMul of the shape a base-size encoder's FFN does on a batch (M tokens x K hidden -> N), and a square one,
on 2 threads, each runtime the way rerankrt serves with it:
  fp32  OpenVINO (INFERENCE_PRECISION_HINT f32), ONNX Runtime, torch
  bf16  OpenVINO (the bf16 hint on the fp32 graph, what a bf16 artifact serves on CPU), torch (bf16 tensors)
  int8  ONNX Runtime MatMulInteger (uint8 x int8, what the dynamic recipe's products run),
        OpenVINO on a QuantizeLinear/DequantizeLinear MatMul (what the static and blockwise graphs become)
Each row: the best of `--repeats` calls after a warm-up, G operations/s (a multiply-add counts 2), and its share of
bench/lib/peak.py's figure for the precision.

    .venv/bin/python -m bench.gemm_ceiling                 # ~1 min on 2 cores
    .venv/bin/python -m bench.gemm_ceiling --size small --results /tmp/gc     # checks the script in seconds

Results: bench/results/gemm_ceiling.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bench.lib.peak import peak, this_cpu
from bench.lib.results import RESULTS, log, machine, markdown_table, write_result

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=list(SHAPES), default="full")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    cpu = this_cpu()
    peaks = {precision: peak(cpu, precision) for precision in ("fp32", "bf16", "int8")}
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for shape_name, shape in SHAPES[args.size].items():
            m, k, n = shape
            for (label, precision), call in runners(shape, Path(folder), args.threads).items():
                ops_per_s = 2 * m * k * n / best_seconds(call, args.repeats)
                top = peaks[precision]["ops_per_s"]
                share = ops_per_s / top if top else None
                rows.append({"shape": shape_name, "runtime": label, "precision": precision,
                             "g_ops_per_s": ops_per_s / 1e9, "share_of_peak": share})  # fmt: skip
                log(f"{shape_name:52s} {label:28s} {precision}: {ops_per_s / 1e9:7.1f} G ops/s")
    best = {p: max(r["g_ops_per_s"] for r in rows if r["precision"] == p) for p in peaks}
    data = {"benchmark": "gemm_ceiling", "machine": machine(), "threads": args.threads, "peak": peaks, "rows": rows,
            "best_g_ops_per_s": best}  # fmt: skip
    write_result("gemm_ceiling", data, args.results)
    table = [[r["shape"], r["runtime"], r["precision"], f"{r['g_ops_per_s']:.1f}",
              "" if r["share_of_peak"] is None else f"{r['share_of_peak']:.0%}"] for r in rows]  # fmt: skip
    print(markdown_table(["product", "runtime", "precision", "G ops/s", "of peak.py's peak"], table))


if __name__ == "__main__":
    main()
