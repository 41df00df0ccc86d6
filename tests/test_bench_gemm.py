"""bench/lib/gemm.py times one matrix product per precision and runtime: its graphs must compute that product
(a graph computing something cheaper would report a ceiling the machine does not have)."""

import numpy as np
import onnxruntime as ort
from onnx import numpy_helper

from bench.lib.gemm import SHAPES, matmul_graph, runners


def session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def weight(path, name):
    import onnx

    return next(numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer if t.name == name)


def test_each_graph_computes_the_product_of_its_precision(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 16)).astype(np.float32)
    fp32 = matmul_graph(tmp_path / "fp32.onnx", 16, 8)
    np.testing.assert_allclose(session(fp32).run(None, {"x": x})[0], x @ weight(fp32, "w"), rtol=1e-5, atol=1e-5)

    # activations below 128: on CPUs without VNNI, ONNX Runtime's u8 x s8 kernel (VPMADDUBSW) saturates a pair of
    # products past 32767, so wider inputs would be exact on this machine and not on an AVX2-only one
    integer = matmul_graph(tmp_path / "int8.onnx", 16, 8, "integer")
    x8 = rng.integers(0, 128, (5, 16)).astype(np.uint8)
    out = session(integer).run(None, {"x": x8})[0]
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, x8.astype(np.int32) @ weight(integer, "w").astype(np.int32))

    qdq = matmul_graph(tmp_path / "qdq.onnx", 16, 8, "qdq")
    x_low = -np.abs(x)  # quantized to at most 128 (zero point 128), for the same reason
    xq = np.clip(np.round(x_low / 0.05) + 128, 0, 255)
    expected = ((xq - 128) * 0.05) @ (weight(qdq, "wq").astype(np.float32) * weight(qdq, "ws"))
    np.testing.assert_allclose(session(qdq).run(None, {"x": x_low})[0], expected, rtol=1e-4, atol=1e-4)


def test_every_runtime_and_precision_is_timed(tmp_path):
    shape = next(iter(SHAPES["small"].values()))
    calls = runners(shape, tmp_path, threads=1)
    precisions = {precision for _, precision in calls}
    assert precisions == {"fp32", "bf16", "int8"}
    for call in calls.values():
        call()
