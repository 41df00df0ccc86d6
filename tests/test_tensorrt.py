"""TensorRT: the planning logic and the reduced-precision graphs everywhere; real engines where TensorRT and a GPU are.

No engine is mocked: the engine tests below build and run real ones, and skip (with
the reason) on machines without TensorRT or CUDA.
"""

import importlib.util
import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx.reference import ReferenceEvaluator

from rerankrt.artifact import MANIFEST_NAME, Engine, load_manifest, sha256_file
from rerankrt.errors import ArtifactError, BackendUnavailableError, RerankrtError
from rerankrt.export.precision import FP32_OPS, cast_graph, fp32_op_names
from rerankrt.families import get_family
from rerankrt.precision import Precision
from rerankrt.runtime import Reranker
from rerankrt.runtime.plan import ServingPlan
from rerankrt.runtime.tensorrt_backend import TensorRTBackend
from rerankrt.tensorrt_engines import (
    ModelShape,
    engine_file_name,
    plan_engine_profile,
    plan_profile,
    precision_problem,
    select_engine,
    sequence_bytes,
    split_rows,
    timing_cache_name,
)
from rerankrt.testing.reference import random_documents, random_text
from tests.conftest import QWEN_ARCHS
from tests.support import write_fake_artifact

HAVE_TENSORRT = importlib.util.find_spec("tensorrt") is not None
GPU_REASON = (
    "needs TensorRT (pip install 'rerankrt[gpu]')"
    if not HAVE_TENSORRT
    else "needs a CUDA GPU"
    if not torch.cuda.is_available()
    else ""
)
needs_gpu = pytest.mark.skipif(bool(GPU_REASON), reason=GPU_REASON or "-")


# --- profiles, names, choice, splitting ---------------------------------------------------------


def test_profile_defaults_and_limits():
    profile = plan_profile(max_batch=64, max_length=512)
    assert (profile.min, profile.opt, profile.max) == ((1, 1), (16, 256), (64, 512))
    assert plan_profile(8, 128).opt == (8, 128)  # opt never above max
    assert plan_profile(64, 8192, opt_batch=4, opt_length=1024).opt == (4, 1024)
    with pytest.raises(RerankrtError, match="opt batch 128"):
        plan_profile(64, 512, opt_batch=128)
    with pytest.raises(RerankrtError, match="opt length 0"):
        plan_profile(64, 512, opt_length=0)


def test_engine_and_timing_cache_names_carry_gpu_and_full_tensorrt_version():
    assert engine_file_name("model.onnx", "9.0", "11.4.0.106") == "model.sm90.trt11.4.0.106.plan"
    assert engine_file_name("model.fp16.onnx", "8.9", "10.13.0.35") == "model.fp16.sm89.trt10.13.0.35.plan"
    assert timing_cache_name("8.9", "10.13.0.35") == "tensorrt.sm89.trt10.13.0.35.timing-cache"
    assert timing_cache_name("9.0", "10.13.0.35") != timing_cache_name("8.9", "10.13.0.35")


def engine(precision, capability="9.0", version="11.4.0.106"):
    profile = plan_profile(64, 512)
    name = engine_file_name(f"model.{precision}.onnx", capability, version)
    return Engine(
        file=name, graph=f"model.{precision}.onnx", precision=precision, compute_capability=capability,
        tensorrt=version, profile=profile,
    )  # fmt: skip


def test_engine_choice_matches_gpu_and_exact_tensorrt_version():
    engines = [engine("fp32"), engine("fp16"), engine("fp16", capability="8.0"), engine("bf16", version="10.13.0.35")]
    assert select_engine(engines, "9.0", "11.4.0.106").precision == "fp16"  # fastest first
    assert select_engine(engines, "9.0", "11.4.0.106", precision="fp32").precision == "fp32"
    assert select_engine(engines, "9.0", "11.4.1.2") is None  # a patch release: engines do not load there, rebuild
    assert select_engine(engines, "9.0", "11.5.0") is None
    assert select_engine(engines, "8.6", "11.4.0.106") is None  # another GPU: rebuild
    assert select_engine(engines, "9.0", "10.13.0.35").precision == "bf16"


def test_bf16_needs_compute_capability_8():
    assert "8.0" in precision_problem("bf16", "7.5") and "--precision fp16" in precision_problem("bf16", "7.5")
    assert precision_problem("bf16", "8.0") is None and precision_problem("bf16", "12.0") is None
    assert precision_problem("fp16", "7.5") is None and precision_problem("fp32", "7.0") is None


QWEN3_06B = ModelShape(hidden=1024, heads=16, intermediate=3072)
BGE_M3 = ModelShape(hidden=1024, heads=16, intermediate=4096)
GIB = 1 << 30


def test_profile_is_planned_from_gpu_memory_and_the_model():
    # Qwen3-0.6B at its 8192 tokens: one sequence's unfused scores are 16 x 8192^2 x 12 bytes (~12 GiB), so the
    # old default of 64 (~800 GiB) cannot build; an 80 GiB GPU gets 3, a 141 GiB one 5
    assert sequence_bytes(QWEN3_06B, 8192, "fp16") > 12 * GIB
    profile, why = plan_engine_profile(QWEN3_06B, 80 * GIB, int(1.2 * GIB), 8192, "fp16")
    assert profile.max == (3, 8192) and profile.opt == (3, 256) and profile.min == (1, 1)
    assert "max batch 3" in why and "16 heads" in why and "80 GiB" in why
    assert plan_engine_profile(QWEN3_06B, 141 * GIB, int(1.2 * GIB), 8192, "bf16")[0].max == (5, 8192)
    # a cross-encoder at 512 tokens fits many: capped at 64
    profile, why = plan_engine_profile(BGE_M3, 24 * GIB, int(1.1 * GIB), 512, "fp16")
    assert profile.max == (64, 512) and "capped at 64" in why
    # fp32 activations are twice the size
    assert sequence_bytes(BGE_M3, 512, "fp32") > sequence_bytes(BGE_M3, 512, "fp16")
    # asked for: kept, with the estimate said
    profile, why = plan_engine_profile(QWEN3_06B, 80 * GIB, GIB, 8192, "fp16", max_batch=16, opt_batch=4)
    assert profile.max == (16, 8192) and profile.opt == (4, 256) and "as asked" in why and "3 would fit" in why
    with pytest.raises(RerankrtError, match="one sequence of 8192 tokens does not fit.*--max-batch 1"):
        plan_engine_profile(QWEN3_06B, 16 * GIB, GIB, 8192, "fp16")


def test_model_shape_reads_config_json_and_nested_text_configs():
    config = {"hidden_size": 1024, "num_attention_heads": 16, "intermediate_size": 3072}
    assert ModelShape.from_config(config) == QWEN3_06B
    nested = {"text_config": config, "vision_config": {"hidden_size": 32}}  # the family says where the sizes are
    assert ModelShape.from_config(get_family("qwen3-vl-yes-no").export_hints.language_sizes(nested)) == QWEN3_06B
    assert ModelShape.from_config({"hidden_size": 32, "num_attention_heads": 4}).intermediate == 128


def test_oversized_batches_are_split_not_refused():
    assert split_rows(5, 64) == [slice(0, 5)]
    assert split_rows(130, 64) == [slice(0, 64), slice(64, 128), slice(128, 130)]
    assert sum(s.stop - s.start for s in split_rows(1000, 7)) == 1000


# --- manifest entries for engines ------------------------------------------------------------------


def with_engine(folder, entry: Engine, content=b"serialized engine bytes"):
    (folder / entry.file).write_bytes(content)
    data = json.loads((folder / MANIFEST_NAME).read_text())
    data["engines"].append(json.loads(entry.model_dump_json()))
    data["files"][entry.file] = sha256_file(folder / entry.file)
    (folder / MANIFEST_NAME).write_text(json.dumps(data))


def test_manifest_lists_and_verifies_engines(tmp_path):
    folder = write_fake_artifact(tmp_path / "art")
    entry = engine("fp16")
    with_engine(folder, entry)
    assert load_manifest(folder).engines == [entry]
    (folder / entry.file).write_bytes(b"another engine")
    with pytest.raises(ArtifactError, match=f"{entry.file}: sha256 does not match"):
        load_manifest(folder)


def test_unlisted_engine_is_refused(tmp_path):
    folder = write_fake_artifact(tmp_path / "art")
    with_engine(folder, engine("fp16"))
    data = json.loads((folder / MANIFEST_NAME).read_text())
    del data["files"][data["engines"][0]["file"]]
    (folder / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="is not listed with a hash"):
        load_manifest(folder)


@pytest.mark.skipif(not bool(GPU_REASON), reason="checks the message on machines without TensorRT or a GPU")
def test_tensorrt_backend_says_why_it_cannot_run_here(tmp_path):
    folder = write_fake_artifact(tmp_path / "art")
    with pytest.raises(BackendUnavailableError, match="TensorRT is not installed|no CUDA device"):
        TensorRTBackend(ServingPlan("tensorrt", "cuda", Precision.FP16, folder=folder))


@pytest.mark.integration
def test_multimodal_artifacts_are_refused_with_the_reason_everywhere(qwen3_vl_artifact):
    """Engines cover one-graph scorers: build-engine and the plan say so before touching TensorRT."""
    from rerankrt.export.tensorrt import build_engine

    with pytest.raises(RerankrtError, match="multimodal"):
        build_engine(qwen3_vl_artifact)
    with pytest.raises(BackendUnavailableError, match="multimodal"):
        Reranker.load(str(qwen3_vl_artifact), backend="tensorrt")
    assert load_manifest(qwen3_vl_artifact).engines == []


# --- reduced-precision graphs (checked on CPU with ONNX Runtime) -----------------------------------


def scores(session, batch):
    feeds = {i.name: batch[i.name] for i in session.get_inputs()}
    return session.run(None, feeds)[0].reshape(-1)


@pytest.mark.integration
@pytest.mark.parametrize("arch", ["xlmr", *QWEN_ARCHS])
def test_fp16_graph_keeps_norms_and_softmax_fp32_and_scores_close(artifact_dirs, tmp_path, arch):
    source = artifact_dirs[arch] / "model.onnx"
    target = cast_graph(source, tmp_path / "model.fp16.onnx", "fp16")
    onnx.checker.check_model(str(target))  # also: nodes in topological order, as TensorRT's parser wants
    model = onnx.shape_inference.infer_shapes(onnx.load(str(target)))
    kept = fp32_op_names(model)
    assert kept, "the graph has norm/softmax ops"
    assert set(kept.values()) == {"FLOAT"}, {k: v for k, v in kept.items() if v != "FLOAT"}
    assert {i.data_type for i in model.graph.initializer if len(i.dims) == 2} == {onnx.TensorProto.FLOAT16}
    assert [o.type.tensor_type.elem_type for o in model.graph.output] == [onnx.TensorProto.FLOAT]  # fp32 logits out

    reranker = Reranker.load(str(artifact_dirs[arch]))
    rng = np.random.default_rng(5)
    batch = reranker.encoder.collate(reranker.encoder.encode(random_text(rng, 2, 8), random_documents(rng, 12)))
    reference = scores(ort.InferenceSession(str(source)), batch)
    half = scores(ort.InferenceSession(str(target)), batch)
    assert np.abs(half - reference).max() < 5e-2  # stated bound for fp16 on these random-weight models
    assert np.corrcoef(np.argsort(np.argsort(half)), np.argsort(np.argsort(reference)))[0, 1] > 0.9


@pytest.mark.integration
@pytest.mark.parametrize("arch", ["xlmr", "qwen3"])
def test_bf16_graph_retypes_every_half_tensor(artifact_dirs, tmp_path, arch):
    target = cast_graph(artifact_dirs[arch] / "model.onnx", tmp_path / "model.bf16.onnx", "bf16")
    model = onnx.load(str(target))
    onnx.checker.check_model(model)
    types = {i.data_type for i in model.graph.initializer if len(i.dims) == 2}
    assert types == {onnx.TensorProto.BFLOAT16}
    casts = [a.i for n in model.graph.node if n.op_type == "Cast" for a in n.attribute if a.name == "to"]
    assert onnx.TensorProto.FLOAT16 not in casts and onnx.TensorProto.BFLOAT16 in casts
    blocked = [n for n in model.graph.node if n.op_type in FP32_OPS]
    assert blocked  # still there, fed by casts back to fp32
    # ONNX Runtime has no CPU kernels for bf16: onnx's reference evaluator runs it instead
    reranker = Reranker.load(str(artifact_dirs[arch]))
    rng = np.random.default_rng(6)
    batch = reranker.encoder.collate(reranker.encoder.encode(random_text(rng, 2, 8), random_documents(rng, 6)))
    reference = scores(ort.InferenceSession(str(artifact_dirs[arch] / "model.onnx")), batch)
    evaluator = ReferenceEvaluator(str(target))
    with np.errstate(invalid="ignore"):  # its softmax over fully masked padding rows
        bf16 = evaluator.run(None, {i: batch[i] for i in evaluator.input_names})[0].reshape(-1)
    # stated bound for bf16 (8 mantissa bits) on these random-weight models, whose activations run large;
    # their scores are too flat for rank agreement to mean much (the engine test checks ranks on a GPU)
    assert np.abs(bf16 - reference).max() < 0.5
    # the weights are the fp32 ones rounded to bf16 (8 bits of mantissa)
    fp32 = {
        i.name: onnx.numpy_helper.to_array(i)
        for i in onnx.load(str(artifact_dirs[arch] / "model.onnx")).graph.initializer
    }
    for init in model.graph.initializer:
        if init.data_type == onnx.TensorProto.BFLOAT16 and init.name in fp32:
            bits = np.frombuffer(init.raw_data, dtype=np.uint16).astype(np.uint32) << 16
            values = bits.view(np.float32).reshape(fp32[init.name].shape)
            np.testing.assert_allclose(values, fp32[init.name], rtol=2**-8, atol=1e-30)


# --- real engines (GPU with TensorRT only) -----------------------------------------------------------


@pytest.mark.integration
@needs_gpu
@pytest.mark.parametrize("arch", ["xlmr", "qwen3"])
@pytest.mark.parametrize("precision, bound", [("fp32", 1e-4), ("fp16", 5e-2), ("bf16", 0.5)])
def test_engine_equals_torch_fp32(artifact_dirs, tmp_path, arch, precision, bound):
    from rerankrt.export.tensorrt import build_engine

    folder = shutil.copytree(artifact_dirs[arch], tmp_path / "art")
    built = build_engine(folder, precision=precision, max_batch=8)
    assert load_manifest(folder).engines == [built]
    trt_reranker = Reranker.load(str(folder), backend="tensorrt")
    torch_reranker = Reranker.load(str(folder), backend="torch")
    torch_reranker.backend.scorer.float()  # the fp32 reference, on the GPU
    rng = np.random.default_rng(9)
    query, docs = random_text(rng, 2, 10), random_documents(rng, 21)  # 21 > max_batch 8: split
    got, want = trt_reranker.logits(query, docs), torch_reranker.logits(query, docs)
    assert np.abs(got - want).max() <= bound  # fp32 exact; fp16/bf16 within their stated bounds
