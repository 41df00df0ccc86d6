"""The TensorRT builder and runner against a stand-in TensorRT (tests/fake_tensorrt.py), on CPU: which calls are
made, what each failure says, which engine and timing cache names a TensorRT version and GPU get, when an engine
is rebuilt. The real library's tests are in test_tensorrt.py (they skip without TensorRT and a GPU)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from rerankrt.artifact import MANIFEST_NAME, Engine, load_manifest, sha256_file
from rerankrt.errors import BackendUnavailableError, ExportError
from rerankrt.export import tensorrt as builder
from rerankrt.export.graph_passes import integer_cumsums
from rerankrt.runtime.tensorrt_backend import EngineError, EngineRunner
from rerankrt.tensorrt_engines import plan_profile
from tests.fake_tensorrt import BuilderFlag, DataType, FakeTensorRT, TensorIOMode
from tests.support import write_fake_artifact

L4 = builder.Gpu("8.9", "NVIDIA L4", 24 << 30)
T4 = builder.Gpu("7.5", "Tesla T4", 16 << 30)
VERSION = "10.13.0.35"


def tiny_artifact(folder):
    """A fake artifact whose model.onnx is a real (tiny) graph with XLM-R's integer CumSum, and a config.json."""
    write_fake_artifact(folder)
    i64, i32, f = TensorProto.INT64, TensorProto.INT32, TensorProto.FLOAT
    nodes = [
        helper.make_node("Cast", ["attention_mask"], ["mask32"], to=i32),
        helper.make_node("CumSum", ["mask32", "axis"], ["positions"]),
        helper.make_node("Cast", ["positions"], ["positions_f"], to=f),
        helper.make_node("Cast", ["input_ids"], ["ids_f"], to=f),
        helper.make_node("Add", ["positions_f", "ids_f"], ["summed"]),
        helper.make_node("ReduceSum", ["summed", "axes"], ["logits"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info(n, i64, ["batch", "sequence"]) for n in ("input_ids", "attention_mask")],
        [helper.make_tensor_value_info("logits", f, ["batch"])],
        initializer=[numpy_helper.from_array(np.array(1, np.int32), "axis"),
                     numpy_helper.from_array(np.array([1], np.int64), "axes")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(folder / "model.onnx"))
    (folder / "config.json").write_text(json.dumps({"hidden_size": 32, "num_attention_heads": 4}))
    data = json.loads((folder / MANIFEST_NAME).read_text())
    data["files"].update({name: sha256_file(folder / name) for name in ("model.onnx", "config.json")})
    (folder / MANIFEST_NAME).write_text(json.dumps(data))
    return folder


@pytest.fixture
def artifact(tmp_path):
    return tiny_artifact(tmp_path / "art")


def use(monkeypatch, trt: FakeTensorRT, gpu: builder.Gpu = L4) -> FakeTensorRT:
    monkeypatch.setattr(builder, "import_tensorrt", lambda: trt)
    monkeypatch.setattr(builder, "cuda_device", lambda: gpu)
    return trt


# --- building --------------------------------------------------------------------------------------------------


def test_build_names_engine_and_timing_cache_by_full_version_and_gpu_and_clears_tf32(artifact, monkeypatch):
    trt = use(monkeypatch, FakeTensorRT(VERSION))
    engine = builder.build_engine(artifact, "fp32")
    assert (engine.file, engine.tensorrt) == ("model.sm89.trt10.13.0.35.plan", VERSION)
    assert engine.compute_capability == "8.9"
    assert load_manifest(artifact).engines == [engine]  # listed and hashed
    assert trt.calls.cleared_flags == [BuilderFlag.TF32]  # fp32 means fp32
    assert trt.calls.memory_limits == []  # no workspace cap: TensorRT's default (the GPU's memory)
    assert trt.calls.shapes == {name: (engine.profile.min, engine.profile.opt, engine.profile.max) for name in
                                ("input_ids", "attention_mask")}  # fmt: skip
    cache = artifact / "tensorrt.sm89.trt10.13.0.35.timing-cache"
    assert cache.read_bytes() == b"timing cache written by 10.13.0.35" and trt.calls.timing_cache_in == [b""]

    patched = use(monkeypatch, FakeTensorRT("10.13.1.2"))  # a patch release: its own engine and cache
    again = builder.build_engine(artifact, "fp32")
    assert again.file == "model.sm89.trt10.13.1.2.plan" and patched.calls.timing_cache_in == [b""]
    assert cache.read_bytes() == b"timing cache written by 10.13.0.35"
    assert {e.file for e in load_manifest(artifact).engines} == {engine.file, again.file}

    same = use(monkeypatch, FakeTensorRT(VERSION))  # the same version and GPU: its cache is reused
    builder.build_engine(artifact, "fp16")
    assert same.calls.timing_cache_in == [b"timing cache written by 10.13.0.35"]
    assert same.calls.cleared_flags == [BuilderFlag.TF32]  # the fp32 parts of a half graph too


def test_integer_cumsum_reaches_the_parser_as_fp32_cumsum(artifact, monkeypatch):
    trt = use(monkeypatch, FakeTensorRT(VERSION))
    builder.build_engine(artifact, "fp32")
    [(how, data, path)] = trt.calls.parsed
    assert how == "bytes" and path == str(artifact / "model.onnx")  # the path locates external data
    parsed = onnx.load_from_string(data)
    assert integer_cumsums(parsed) == [] and "CumSum" in {n.op_type for n in parsed.graph.node}


def test_a_graph_without_integer_cumsum_is_parsed_from_its_file(artifact, monkeypatch):
    model = onnx.load(str(artifact / "model.onnx"))
    for node in model.graph.node:
        if node.op_type == "CumSum":
            node.op_type = "Identity"
            del node.input[1]
    onnx.save(model, str(artifact / "model.onnx"))
    data = json.loads((artifact / MANIFEST_NAME).read_text())
    data["files"]["model.onnx"] = sha256_file(artifact / "model.onnx")
    (artifact / MANIFEST_NAME).write_text(json.dumps(data))
    trt = use(monkeypatch, FakeTensorRT(VERSION))
    builder.build_engine(artifact, "fp32")
    assert trt.calls.parsed == [("file", str(artifact / "model.onnx"))]


def test_bf16_is_refused_below_compute_capability_8_before_anything_is_built(artifact, monkeypatch):
    trt = use(monkeypatch, FakeTensorRT(VERSION), gpu=T4)
    with pytest.raises(ExportError, match=r"bf16 engines need .*compute capability 8\.0.*7\.5.*--precision fp16"):
        builder.build_engine(artifact, "bf16")
    assert trt.calls.builders == 0 and not (artifact / "model.bf16.onnx").exists()
    assert "scorer.bf16" not in load_manifest(artifact).graphs
    assert builder.build_engine(artifact, "fp16").compute_capability == "7.5"  # fp16 builds there

    ampere = use(monkeypatch, FakeTensorRT(VERSION), gpu=builder.Gpu("8.0", "NVIDIA A100", 80 << 30))
    assert builder.build_engine(artifact, "bf16").precision == "bf16" and ampere.calls.builders == 1


@pytest.mark.parametrize(
    "failure, message",
    [
        ("create_network", "TensorRT failed to create a network definition"),
        ("create_builder_config", "TensorRT failed to create a builder config"),
        ("parse", r"could not parse model.onnx \(2 errors\):\n  1\. In node 1 \(CumSum\).*\n  2\. In node 5"),
        ("set_shape", r"refused the profile for input 'input_ids' \(min \(1, 1\).*inconsistent"),
        ("add_optimization_profile", r"refused the optimization profile .*add_optimization_profile -1"),
        ("build", "TensorRT failed to build an engine from model.onnx"),
    ],
)
def test_each_failing_build_step_is_named(artifact, monkeypatch, failure, message):
    trt = use(monkeypatch, FakeTensorRT(VERSION))
    trt.calls.fail.add(failure)
    trt.calls.parse_errors = ["In node 1 (CumSum): UNSUPPORTED_NODE: INT32", "In node 5 (ReduceSum): INVALID_NODE"]
    with pytest.raises(ExportError, match=message):
        builder.build_engine(artifact, "fp32")
    assert load_manifest(artifact).engines == [] and not list(artifact.glob("*.plan"))


def test_a_timing_cache_tensorrt_refuses_is_replaced_by_a_new_one(artifact, monkeypatch, caplog):
    cache = artifact / "tensorrt.sm89.trt10.13.0.35.timing-cache"
    cache.write_bytes(b"written on another GPU")
    trt = use(monkeypatch, FakeTensorRT(VERSION))
    trt.calls.fail.add("set_timing_cache")
    builder.build_engine(artifact, "fp32")
    assert trt.calls.timing_cache_in == [b"written on another GPU", b""]
    assert "not usable here" in caplog.text and cache.read_bytes() == b"timing cache written by 10.13.0.35"


# --- before serving: build, keep or rebuild --------------------------------------------------------------------


def listed_engine(folder, version: str, precision: str = "fp16") -> Engine:
    entry = Engine(
        file=f"model.{precision}.sm89.trt{version}.plan", graph="model.onnx", precision=precision,
        compute_capability="8.9", tensorrt=version, profile=plan_profile(8, 512),
    )  # fmt: skip
    (folder / entry.file).write_bytes(b"an engine")
    data = json.loads((folder / MANIFEST_NAME).read_text())
    data["engines"].append(json.loads(entry.model_dump_json()))
    data["files"][entry.file] = sha256_file(folder / entry.file)
    (folder / MANIFEST_NAME).write_text(json.dumps(data))
    return entry


@pytest.fixture
def builds(monkeypatch) -> list:
    calls = []
    monkeypatch.setattr(builder, "build_engine", lambda artifact, precision: calls.append(precision))
    return calls


def test_an_engine_that_loads_is_kept(artifact, monkeypatch, builds):
    use(monkeypatch, FakeTensorRT(VERSION))
    listed_engine(artifact, VERSION)
    builder.ensure_engine(artifact)
    assert builds == []


def test_an_engine_that_does_not_deserialize_is_rebuilt_with_a_log_line(artifact, monkeypatch, builds, caplog):
    trt = use(monkeypatch, FakeTensorRT(VERSION))
    trt.calls.fail.add("deserialize")
    listed_engine(artifact, VERSION, precision="bf16")
    builder.ensure_engine(artifact)
    assert builds == ["bf16"]  # the same precision again
    assert "model.bf16.sm89.trt10.13.0.35.plan (built with TensorRT 10.13.0.35) does not load" in caplog.text
    assert "rebuilding it" in caplog.text


def test_a_patch_upgrade_builds_a_new_engine(artifact, monkeypatch, builds, caplog):
    use(monkeypatch, FakeTensorRT("10.13.1.2"))
    listed_engine(artifact, VERSION)
    builder.ensure_engine(artifact, precision="fp16")
    assert builds == ["fp16"]
    assert "no TensorRT engine for compute capability 8.9 and TensorRT 10.13.1.2" in caplog.text
    assert "it has model.fp16.sm89.trt10.13.0.35.plan (TensorRT 10.13.0.35" in caplog.text


# --- running ---------------------------------------------------------------------------------------------------

ENTRY = Engine(
    file="model.sm89.trt10.13.0.35.plan", graph="model.onnx", precision="fp32", compute_capability="8.9",
    tensorrt=VERSION, profile=plan_profile(4, 512),
)  # fmt: skip
BATCH = {"input_ids": np.arange(15, dtype=np.int64).reshape(3, 5), "attention_mask": np.ones((3, 5), np.int64)}


def test_inputs_are_converted_to_the_types_the_engine_declares():
    trt = FakeTensorRT(
        VERSION,
        engine_tensors=[
            ("input_ids", TensorIOMode.INPUT, DataType.INT32),  # an engine whose graph took int32
            ("attention_mask", TensorIOMode.INPUT, DataType.INT64),
            ("logits", TensorIOMode.OUTPUT, DataType.HALF),
        ],
    )
    runner = EngineRunner(trt, torch, b"engine", ENTRY, device="cpu")
    out = runner.execute(BATCH, slice(1, 3), stream_handle=0)
    assert runner.bound["input_ids"].dtype == torch.int32 and runner.bound["attention_mask"].dtype == torch.int64
    np.testing.assert_array_equal(runner.bound["input_ids"].numpy(), BATCH["input_ids"][1:3])
    assert out.dtype == torch.float16 and tuple(out.shape) == (2,)
    assert trt.calls.bound == {"input_ids": (2, 5), "attention_mask": (2, 5)}


@pytest.mark.parametrize(
    "failure, error, message",
    [
        ("deserialize", BackendUnavailableError, r"TensorRT 10\.13\.0\.35 could not load model.sm89.trt10.13.0.35.plan "
         r"\(built with TensorRT 10\.13\.0\.35 .*rerankrt build-engine"),
        ("create_execution_context", BackendUnavailableError, r"could not create an execution context .*max batch 4"),
        ("set_input_shape", EngineError, r"refused shape \(3, 5\) for input 'input_ids' .*set_input_shape"),
        ("set_tensor_address", EngineError, r"refused the address of 'input_ids' .*set_tensor_address"),
        ("execute", EngineError, r"execution of model.sm89.trt10.13.0.35.plan failed \(execute_async_v3\)"),
    ],
)  # fmt: skip
def test_each_failing_run_step_is_named(failure, error, message):
    trt = FakeTensorRT(VERSION)
    trt.calls.fail.add(failure)
    with pytest.raises(error, match=message):
        EngineRunner(trt, torch, b"engine", ENTRY, device="cpu").execute(BATCH, slice(0, 3), stream_handle=0)


def test_an_engine_tensor_of_an_unknown_type_is_refused_at_load():
    trt = FakeTensorRT(VERSION, engine_tensors=[("input_ids", TensorIOMode.INPUT, "DataType.FP8"),
                                                ("logits", TensorIOMode.OUTPUT, DataType.FLOAT)])  # fmt: skip
    with pytest.raises(BackendUnavailableError, match="tensor 'input_ids' has type DataType.FP8"):
        EngineRunner(trt, torch, b"engine", ENTRY, device="cpu")


# --- the built engine's self-check -----------------------------------------------------------------------------


def test_an_engine_that_misses_the_self_check_is_deleted_and_not_listed(artifact, monkeypatch):
    use(monkeypatch, FakeTensorRT(VERSION))

    def misses(folder, manifest, engine, gpu):
        raise ExportError(f"self-check: {engine.file} misses on this machine ({gpu}): max |Δlogit| 0.5 > 0.0001")

    monkeypatch.setattr(builder, "self_check_engine", misses)
    with pytest.raises(ExportError, match=r"misses on this machine \(NVIDIA L4\): max \|Δlogit\| 0\.5"):
        builder.build_engine(artifact, "fp32")
    assert not list(artifact.glob("*.plan")) and load_manifest(artifact).engines == []


@pytest.mark.integration
def test_the_self_check_runs_the_engine_plan_on_the_golden_set_by_the_export_rule(artifact_dirs, monkeypatch):
    """`self_check_engine` opens the engine's plan and judges it on the golden set: a runner standing in for the
    engine (the artifact's fp32 graph on ONNX Runtime, its logits moved as another GPU's kernels might move them)."""
    from rerankrt.runtime.onnxruntime_backend import OnnxRuntimeBackend

    folder = artifact_dirs["xlmr"]
    manifest = load_manifest(folder)
    engine = Engine(file="model.fp32.sm89.plan", graph="model.onnx", precision="fp32", compute_capability="8.9",
                    tensorrt=VERSION, profile=plan_profile(8, 512))  # fmt: skip
    opened = []

    def open_as_engine(plan, family, shift):
        opened.append(plan)
        graph = OnnxRuntimeBackend(family, folder, {"scorer": "model.onnx"})
        return type("Engine", (), {"run": lambda self, batch: graph.run(batch) + shift})()

    monkeypatch.setattr(builder, "open_backend", lambda plan, family: open_as_engine(plan, family, 0.0))
    builder.self_check_engine(folder, manifest, engine, "NVIDIA L4")  # passes: the same function
    assert (opened[0].backend, opened[0].engine) == ("tensorrt", engine)
    monkeypatch.setattr(builder, "open_backend", lambda plan, family: open_as_engine(plan, family, 1e-3))
    with pytest.raises(ExportError, match=r"tensorrt on cuda, fp32, model.fp32.sm89.plan misses.*NVIDIA L4.*0\.001"):
        builder.self_check_engine(folder, manifest, engine, "NVIDIA L4")


class CpuStream:
    """Stands in for a CUDA stream (torch.cuda.stream accepts it on a machine without CUDA)."""

    cuda_stream = 0

    def synchronize(self):
        pass


def test_the_engine_runs_as_the_family_graph_in_profile_sized_executions(monkeypatch):
    """TensorRT runs the family's serving pipeline like every backend: the engine is the graph of the role the plan
    names (`EngineGraph`), a batch over the profile's rows split into several executions."""
    from rerankrt.families import get_family
    from rerankrt.runtime.tensorrt_backend import EngineGraph

    runner = EngineRunner(FakeTensorRT(VERSION), torch, b"engine", ENTRY, device="cpu")  # at most 4 rows
    executed = []
    execute = runner.execute
    monkeypatch.setattr(runner, "execute", lambda feeds, rows, handle: executed.append(rows) or execute(feeds, rows, 0))
    run = get_family("qwen3-yes-no").serving_pipeline(None, {"scorer": EngineGraph(runner, CpuStream())})
    batch = {"input_ids": np.ones((10, 5), np.int64), "attention_mask": np.ones((10, 5), np.int64),
             "prefix_length": np.full(10, 3, np.int64)}  # fmt: skip
    logits = run(batch)
    assert logits.shape == (10,) and logits.dtype == np.float32
    assert executed == [slice(0, 4), slice(4, 8), slice(8, 10)]
    assert set(runner.bound) == {"input_ids", "attention_mask"}  # the graph's own inputs only
