"""The graph passes behind the fp16/bf16 casts and TensorRT builds, on CPU: positions and rotary angles stay fp32
(found by what the nodes compute), values between fp32 nodes never round through half precision, integer CumSum
becomes the fp32 form TensorRT documents. The long-position tests run the tiny models past position 4096."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from rerankrt.export.graph_passes import float_cumsum, integer_cumsums, position_arithmetic
from rerankrt.export.precision import cast_graph
from rerankrt.testing import tiny_models

LONG = 4160  # positions 0..4159: past 4096, where fp16 rounds positions to multiples of 4 and bf16 to 32
SHORT = 32  # the second row's real tokens: at the end of the long row's positions under left padding
MAX_POSITIONS = 4608
# the precision bounds the docs state for the cast graphs on these random-weight models (logits)
BOUNDS = {"fp16": 0.05, "bf16": 0.5}
FAR_ROW = {"qwen3": np.s_[1:], "xlmr": np.s_[:1]}  # the row whose real tokens reach past position 4096


@pytest.fixture(scope="module")
def long_position_artifacts(tmp_path_factory) -> dict:
    """Tiny Qwen3 (rotary positions) and XLM-R (learned positions from a CumSum) that take 4608 positions."""
    from rerankrt.export import export_model

    root = tmp_path_factory.mktemp("long")
    models = {
        "qwen3": tiny_models.build_qwen3(root / "m-qwen3", max_positions=MAX_POSITIONS),
        "xlmr": tiny_models.build_xlmr(root / "m-xlmr", max_positions=MAX_POSITIONS + 2),
    }
    for arch, folder in models.items():
        export_model(str(folder), root / arch)
    return {arch: root / arch for arch in models}


def long_batch(arch: str, folder: Path) -> dict[str, np.ndarray]:
    """Two rows of LONG positions: one all tokens, one with SHORT real tokens (left-padded for the decoder, so its
    tokens sit at positions past 4096; right-padded for the cross-encoder), ids clear of the special tokens."""
    vocab = json.loads((folder / "config.json").read_text())["vocab_size"]
    rng = np.random.default_rng(7)
    ids = rng.integers(5, vocab - 8, size=(2, LONG)).astype(np.int64)
    mask = np.ones_like(ids)
    pad = {"qwen3": 0, "xlmr": 1}[arch]
    padded = np.s_[1, : LONG - SHORT] if arch == "qwen3" else np.s_[1, SHORT:]
    ids[padded], mask[padded] = pad, 0
    return {"input_ids": ids, "attention_mask": mask}


def angle_inputs_are_fp32(model: onnx.ModelProto) -> list[str]:
    """Every float tensor a Sin/Cos is computed from, found by walking back from it, that is not fp32."""
    model = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.input]}
    types.update({i.name: i.data_type for i in model.graph.initializer})
    producer = {o: n for n in model.graph.node for o in n.output}
    floats = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16}
    wrong, seen = [], set()
    pending = [n.input[0] for n in model.graph.node if n.op_type in ("Sin", "Cos")]
    assert pending, "the graph computes rotary angles"
    while pending:
        name = pending.pop()
        if name in seen or types.get(name) not in floats:
            continue
        seen.add(name)
        if types[name] != TensorProto.FLOAT:
            wrong.append(f"{name}: {TensorProto.DataType.Name(types[name])}")
        if name in producer:
            pending.extend(producer[name].input)
    return wrong


@pytest.mark.integration
@pytest.mark.parametrize("arch", ["qwen3", "xlmr"])
def test_half_precision_graphs_score_past_position_4096(long_position_artifacts, tmp_path, arch):
    """fp16 (ONNX Runtime CPU) and bf16 (onnx's reference evaluator) within their bounds of fp32 at positions up
    to 4159, rotary angles computed in fp32. The cast before graph_passes failed it for Qwen3: 9 half-precision
    tensors fed Sin/Cos, and the logits were off by 0.11 (fp16) and 1.06 (bf16); now 0.002 and 0.055."""
    source = long_position_artifacts[arch] / "model.onnx"
    batch = long_batch(arch, long_position_artifacts[arch])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    reference = ort.InferenceSession(str(source), options).run(None, batch)[0].reshape(-1)
    for precision, bound in BOUNDS.items():
        target = cast_graph(source, tmp_path / f"model.{precision}.onnx", precision)
        model = onnx.load(str(target))
        if arch == "qwen3":
            assert angle_inputs_are_fp32(model) == []
        if precision == "fp16":
            got = ort.InferenceSession(str(target), options).run(None, batch)[0].reshape(-1)
            want = reference
        else:  # ONNX Runtime has no bf16 CPU kernels; the (slow) reference evaluator runs the row past 4096
            row = FAR_ROW[arch]
            evaluator = ReferenceEvaluator(model)
            with np.errstate(invalid="ignore", over="ignore"):  # its softmax over fully masked padding rows
                got = evaluator.run(None, {k: v[row] for k, v in batch.items()})[0].reshape(-1)
            want = reference[row]
        assert np.isfinite(got).all()
        assert np.abs(got - want).max() < bound, (precision, got, want)


@pytest.mark.integration
def test_integer_cumsum_becomes_the_fp32_form_tensorrt_documents(long_position_artifacts, tmp_path):
    """XLM-R's position ids (cumulative sum of the INT32 mask): rewritten, no integer CumSum is left, and the
    logits are the same bits past position 4096."""
    source = long_position_artifacts["xlmr"] / "model.onnx"
    model = onnx.load(str(source))
    assert [TensorProto.INT32] == [_type(model, n.input[0]) for n in integer_cumsums(model)]
    assert float_cumsum(model) == 1
    onnx.checker.check_model(model)
    assert integer_cumsums(model) == []
    assert [n for n in model.graph.node if n.op_type == "CumSum" and _type(model, n.input[0]) == TensorProto.FLOAT]
    onnx.save(model, str(tmp_path / "rewritten.onnx"))
    batch = long_batch("xlmr", long_position_artifacts["xlmr"])
    before = ort.InferenceSession(str(source)).run(None, batch)[0]
    after = ort.InferenceSession(str(tmp_path / "rewritten.onnx")).run(None, batch)[0]
    np.testing.assert_array_equal(after, before)


def _type(model: onnx.ModelProto, name: str) -> int:
    inferred = onnx.shape_inference.infer_shapes(model)
    return next(
        v.type.tensor_type.elem_type for v in [*inferred.graph.value_info, *inferred.graph.input] if v.name == name
    )


# --- small hand-built graphs (unit tier) --------------------------------------------------------------------------


def rotary_like_graph(position_input: bool = False) -> onnx.ModelProto:
    """hidden [1, L, 4] scaled by cos/sin of positions x inverse frequencies; positions from Range over the
    sequence (or an INT64 input); a float mask from attention_mask; nodes named to mean nothing."""
    f, i64 = TensorProto.FLOAT, TensorProto.INT64
    nodes = [
        helper.make_node("Shape", ["hidden"], ["shape"], name="a1"),
        helper.make_node("Gather", ["shape", "one"], ["length"], axis=0, name="a2"),
    ]
    if not position_input:
        nodes.append(helper.make_node("Range", ["zero", "length", "one"], ["pos"], name="a3"))
    nodes += [
        helper.make_node(
            "Unsqueeze", ["pos" if not position_input else "position_ids", "axes1"], ["pos_col"], name="a4"
        ),
        helper.make_node("Cast", ["pos_col"], ["pos_f"], to=f, name="a5"),
        helper.make_node("MatMul", ["pos_f", "inv_freq"], ["angles"], name="a6"),  # [L, 1] x [1, 4]
        helper.make_node("Cos", ["angles"], ["cos"], name="a7"),
        helper.make_node("Sin", ["angles"], ["sin"], name="a8"),
        helper.make_node("Mul", ["cos", "scale"], ["cos_scaled"], name="a9"),
        helper.make_node("Mul", ["hidden", "cos_scaled"], ["h_cos"], name="b1"),
        helper.make_node("Mul", ["hidden", "sin"], ["h_sin"], name="b2"),
        helper.make_node("Add", ["h_cos", "h_sin"], ["rotated"], name="b3"),
        # mask arithmetic: attention_mask -> float -> (1 - m) * big: not positions
        helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=f, name="c1"),
        helper.make_node("Sub", ["one_f", "mask_f"], ["inverted"], name="c2"),
        helper.make_node("Mul", ["inverted", "big"], ["bias"], name="c3"),
        helper.make_node("Add", ["rotated", "bias"], ["out"], name="c4"),
        # a causal mask from positions goes through booleans: a mask, not arithmetic
        helper.make_node("Less", ["pos_col", "limit"], ["causal"], name="d1"),
        helper.make_node("Where", ["causal", "zero_f", "one_f"], ["causal_bias"], name="d2"),
        helper.make_node("Add", ["out", "causal_bias"], ["logits"], name="d3"),
    ]
    inputs = [
        helper.make_tensor_value_info("hidden", f, [1, "L", 4]),
        helper.make_tensor_value_info("attention_mask", i64, [1, "L", 1]),
    ]
    if position_input:
        inputs.append(helper.make_tensor_value_info("position_ids", i64, ["L"]))
    inits = [
        numpy_helper.from_array(np.array(0, np.int64), "zero"),
        numpy_helper.from_array(np.array(1, np.int64), "one"),
        numpy_helper.from_array(np.array([1], np.int64), "axes1"),
        numpy_helper.from_array(np.array([[1.0, 0.1, 0.01, 0.001]], np.float32), "inv_freq"),
        numpy_helper.from_array(np.array(1.0, np.float32), "scale"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one_f"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero_f"),
        numpy_helper.from_array(np.array(-1e4, np.float32), "big"),
        numpy_helper.from_array(np.array([[2048]], np.int64), "limit"),
    ]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("logits", f, None)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return onnx.shape_inference.infer_shapes(model)


@pytest.mark.parametrize("position_input", [False, True], ids=["range", "position-ids-input"])
def test_position_arithmetic_is_found_by_what_it_computes(position_input):
    found = position_arithmetic(rotary_like_graph(position_input))
    assert {"a5", "a6", "a7", "a8", "a9"} <= found  # cast, angle product, cos/sin, their scaling
    assert not found & {"b1", "b2", "b3", "c1", "c2", "c3", "c4", "d2", "d3"}  # activations and masks


def test_cast_keeps_angles_fp32_and_matches_fp32_past_4096(tmp_path):
    model = rotary_like_graph()
    onnx.save(model, str(tmp_path / "model.onnx"))
    rng = np.random.default_rng(0)
    length = 4100
    feeds = {
        "hidden": rng.normal(size=(1, length, 4)).astype(np.float32),
        "attention_mask": np.ones((1, length, 1), np.int64),
    }
    want = ort.InferenceSession(str(tmp_path / "model.onnx")).run(None, feeds)[0]
    for precision in ("fp16", "bf16"):
        cast = onnx.load(str(cast_graph(tmp_path / "model.onnx", tmp_path / f"{precision}.onnx", precision)))
        assert angle_inputs_are_fp32(cast) == []
        assert "Mul" in {n.op_type for n in cast.graph.node if n.name == "a6"}  # no TF32 MatMul on the angles
        if precision == "fp16":
            got = ort.InferenceSession(str(tmp_path / "fp16.onnx")).run(None, feeds)[0]
            # hidden and its products are fp16 (relative 1e-3); the angles are exact, so cos/sin are too
            np.testing.assert_allclose(got, want, atol=2e-2)


def test_values_between_fp32_nodes_stay_fp32(tmp_path):
    """An RMS norm's x² -> mean -> + eps -> sqrt: no fp16 in between (x² of 300 overflows fp16)."""
    f = TensorProto.FLOAT
    nodes = [
        helper.make_node("Pow", ["x", "two"], ["sq"], name="n1"),
        helper.make_node("ReduceMean", ["sq", "axes"], ["var"], keepdims=1, name="n2"),
        helper.make_node("Add", ["var", "eps"], ["var_eps"], name="n3"),
        helper.make_node("Sqrt", ["var_eps"], ["rms"], name="n4"),
        helper.make_node("Div", ["x", "rms"], ["y"], name="n5"),
    ]
    inits = [
        numpy_helper.from_array(np.array(2.0, np.float32), "two"),
        numpy_helper.from_array(np.array([-1], np.int64), "axes"),
        numpy_helper.from_array(np.array(1e-6, np.float32), "eps"),
    ]
    graph = helper.make_graph(
        nodes, "norm", [helper.make_tensor_value_info("x", f, [2, 8])], [helper.make_tensor_value_info("y", f, None)],
        initializer=inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(tmp_path / "norm.onnx"))
    cast = onnx.load(str(cast_graph(tmp_path / "norm.onnx", tmp_path / "norm.fp16.onnx", "fp16")))
    producer = {o: n for n in cast.graph.node for o in n.output}
    for name in ("n2", "n3", "n4"):  # each reads its fp32 predecessor directly
        node = next(n for n in cast.graph.node if n.name == name)
        assert producer[node.input[0]].op_type != "Cast", name
    x = np.full((2, 8), 300.0, np.float32)
    x[1] = np.linspace(-2, 2, 8)
    got = ort.InferenceSession(str(tmp_path / "norm.fp16.onnx")).run(None, {"x": x})[0]
    want = x / np.sqrt((x**2).mean(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(got, want, atol=2e-3)  # before: x² = 90000 overflowed to inf, y = 0


@pytest.mark.parametrize("dtype", [TensorProto.INT32, TensorProto.INT64])
def test_float_cumsum_is_exact_for_integer_sums(dtype):
    graph = helper.make_graph(
        [helper.make_node("CumSum", ["x", "axis"], ["y"], name="s")], "c",
        [helper.make_tensor_value_info("x", dtype, [2, "L"])], [helper.make_tensor_value_info("y", dtype, [2, "L"])],
        initializer=[numpy_helper.from_array(np.array(1, np.int32), "axis")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    x = np.random.default_rng(1).integers(0, 2, size=(2, 9000)).astype(onnx.helper.tensor_dtype_to_np_dtype(dtype))
    want = ReferenceEvaluator(model).run(None, {"x": x})[0]
    assert float_cumsum(model) == 1 and integer_cumsums(model) == []
    onnx.checker.check_model(model, full_check=True)
    got = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)
