"""Precision variants at export (int8, bf16, fp16): built, checked for fidelity, refused when bad, served."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from rerankrt.artifact import FIDELITY_NAME, MANIFEST_NAME, load_manifest, sha256_file
from rerankrt.errors import ArtifactError, ExportError, RerankrtError
from rerankrt.export import export_model
from rerankrt.runtime import Reranker
from rerankrt.runtime.fidelity import FIDELITY_THRESHOLDS, FidelityThresholds, sigmoid, tie_aware_agreement
from rerankrt.runtime.machine import Machine
from rerankrt.runtime.plan import AUTO_ORDER, auto_order
from rerankrt.testing.reference import random_documents

QUERY = "what is a panda bear"


class Variants(dict):
    """(arch, precision) -> the tiny model's artifact with that variant, exported on first use (so a `-k` selection
    exports only what it needs)."""

    def __init__(self, model_dirs, root):
        super().__init__()
        self.model_dirs, self.root = model_dirs, root

    def __missing__(self, key):
        arch, precision = key
        self[key] = self.root / f"{arch}-{precision}"
        export_model(str(self.model_dirs[arch]), self[key], precision=precision)
        return self[key]


@pytest.fixture(scope="module")
def variants(model_dirs, tmp_path_factory) -> Variants:
    return Variants(model_dirs, tmp_path_factory.mktemp("variants"))


def fp32_scores(artifact_dirs, arch, docs):
    return Reranker.load(str(artifact_dirs[arch]), backend="onnxruntime").logits(QUERY, docs)


@pytest.mark.integration
@pytest.mark.parametrize("arch", ["xlmr", "bert", "qwen3"])
def test_int8_variant_is_quantized_checked_and_served_on_cpu(variants, artifact_dirs, arch):
    """The fastest int8 recipe that passes the gate ships (the tiny Qwen3 needs the blockwise one)."""
    folder = variants[arch, "int8"]
    manifest = load_manifest(folder)
    assert manifest.precision == "int8"
    report = json.loads((folder / FIDELITY_NAME).read_text())
    assert FIDELITY_NAME in manifest.files and report["passed"] and not report["accepted"]
    graph = onnx.load(str(folder / manifest.graphs["scorer.int8"].file))
    ops = {node.op_type for node in graph.graph.node}
    quantized_ops = {"dynamic": {"MatMulInteger", "DynamicQuantizeMatMul", "QAttention"}, "blockwise": {"MatMulNBits"}}
    quantized_ops["mixed"] = quantized_ops["blockwise"]
    assert ops & quantized_ops[report["method"]], (report["method"], ops)
    lookups = {node.input[0] for node in graph.graph.node if node.op_type in ("Gather", "EmbedLayerNormalization")}
    lookups |= {node.input[i] for node in graph.graph.node if node.op_type == "EmbedLayerNormalization" for i in (2, 3)}
    tables = [i for i in graph.graph.initializer if i.name in lookups and len(i.dims) == 2]
    assert tables and all(i.data_type == onnx.TensorProto.FLOAT for i in tables)  # embedding lookups stay fp32

    # OpenVINO reads the blockwise/mixed graphs (standard operators), not the dynamic one's fused ONNX Runtime
    # operators: where it reads them, the gate checked its run too, and auto serves it first
    openvino_reads_it = report["method"] != "dynamic"
    runtimes = ["onnxruntime", "openvino"] if openvino_reads_it else []
    checked = [path["candidate"] for path in report["paths_checked"]]
    assert checked == [f"{runtime} int8 graph ({report['method']}), cpu" for runtime in runtimes]
    assert all(path["passed"] for path in report["paths_checked"])
    reranker = Reranker.load(str(folder))
    assert reranker.backend.name == ("openvino" if openvino_reads_it else "onnxruntime")
    # a decoder serves its prefix-reuse graph's int8 variant when the export made one (it reuses prefixes on it)
    role = "decoder" if "decoder.int8" in manifest.graphs else "scorer"
    assert reranker.model.plan.graphs == {role: manifest.graphs[f"{role}.int8"].file}
    docs = random_documents(np.random.default_rng(3), 12)
    fp32 = fp32_scores(artifact_dirs, arch, docs)
    # What holds on every CPU kind: each runtime's run of the int8 graph agrees with fp32 by the gate's rule on
    # this machine. Not that the two runtimes agree with each other: on a CPU without VNNI OpenVINO multiplies fp32
    # activations by the dequantized weights while ONNX Runtime quantizes the activations too, 0.13 logit apart on
    # the tiny Qwen3 (docs/precision.md, "Why runtimes differ by CPU").
    for backend in runtimes or ["onnxruntime"]:
        served = Reranker.load(str(folder), backend=backend)
        assert served.model.self_check.passed, served.model.self_check.summary()  # the golden set, gate's rule
        int8 = served.logits(QUERY, docs)
        assert not np.array_equal(int8, fp32)  # really another graph
        assert np.abs(sigmoid(int8) - sigmoid(fp32)).max() <= FIDELITY_THRESHOLDS.max_score_diff


@pytest.mark.integration
def test_bf16_variant_is_served_by_openvino_or_torch_with_bf16_weights_on_cpu(variants, artifact_dirs):
    folder = variants["xlmr", "bf16"]
    manifest = load_manifest(folder)
    assert manifest.precision == "bf16" and set(manifest.graphs) == {"scorer"}  # no CPU graph of its own
    report = json.loads((folder / FIDELITY_NAME).read_text())
    chosen = Reranker.load(str(folder))
    assert chosen.backend.name == "openvino"
    if Machine.detect().cpu_bf16:  # OpenVINO's bf16 hint serves it, so the export gate checked it too
        assert chosen.model.plan.precision == "bf16" and report["method"] == "torch, openvino bf16 hint"
        assert [p["candidate"] for p in report["paths_checked"]] == [
            "torch, bf16, cpu",
            "openvino bf16 hint on model.onnx, cpu",
        ]
        assert all(p["passed"] for p in report["paths_checked"])
    else:  # bf16 would be emulated: OpenVINO computes the fp32 graph in fp32, the gate checked torch's bf16 (golden)
        assert chosen.model.plan.precision == "fp32"
        assert report["method"] == "torch, golden set only (bf16 emulated on this CPU)"
    reranker = Reranker.load(str(folder), backend="torch")
    assert (reranker.backend.name, reranker.backend.dtype) == ("torch", torch.bfloat16)
    assert next(reranker.backend.scorer.parameters()).dtype == torch.bfloat16
    docs = random_documents(np.random.default_rng(4), 8)
    np.testing.assert_allclose(reranker.logits(QUERY, docs), fp32_scores(artifact_dirs, "xlmr", docs), atol=0.05)
    # asked for by name, onnxruntime still runs (the fp32 graph: it has no bf16 CPU kernels)
    assert Reranker.load(str(folder), backend="onnxruntime").model.plan.graphs["scorer"] == "model.onnx"


@pytest.mark.integration
def test_a_bf16_export_on_a_cpu_without_bf16_checks_the_golden_set_only_and_says_so(model_dirs, tmp_path, monkeypatch):
    """Where bf16 is emulated (an AVX2-only CPU: here made up by hiding the bf16 flags), the gate runs torch's bf16 on
    the golden set's pairs only, instead of minutes of emulated bf16 on its generated ones, and says what it left to
    the serving-time self-check; the artifact serves as ever."""
    from rerankrt.artifact import GOLDEN_NAME
    from rerankrt.runtime import machine
    from rerankrt.runtime.self_check import GoldenSet

    monkeypatch.setattr(machine, "cpu_flags", lambda: {"avx2", "fma"})
    folder = tmp_path / "xlmr-bf16"
    export_model(str(model_dirs["xlmr"]), folder, precision="bf16")
    report = json.loads((folder / FIDELITY_NAME).read_text())
    golden = GoldenSet.read(folder / GOLDEN_NAME)
    assert report["passed"] and report["method"] == "torch, golden set only (bf16 emulated on this CPU)"
    assert (report["pairs"], report["queries"]) == (golden.pairs, len(golden.groups))
    assert "serving-time self-check" in report["not_checked"]
    with Reranker.load(str(folder), backend="torch") as served:  # its self-check judges the bf16 plan
        assert served.model.plan.precision == "bf16" and served.model.self_check.passed


@pytest.mark.integration
def test_fp16_variant_is_a_gpu_graph_and_cpu_runs_fp32(variants):
    folder = variants["xlmr", "fp16"]
    manifest = load_manifest(folder)
    assert manifest.precision == "fp16" and "scorer.fp16" in manifest.graphs
    assert Reranker.load(str(folder), backend="onnxruntime").model.plan.graphs == {"scorer": "model.onnx"}


@pytest.mark.integration
def test_serving_precision_is_fp32_or_the_checked_variant(variants, model_dirs):
    folder = variants["xlmr", "int8"]
    assert Reranker.load(str(folder), precision="fp32").model.plan.graphs["scorer"] == "model.onnx"
    assert Reranker.load(str(folder), precision="int8").model.plan.graphs["scorer"] == "model.int8.onnx"
    with pytest.raises(ArtifactError, match="exported for int8.*--precision bf16"):
        Reranker.load(str(folder), precision="bf16")
    with pytest.raises(ArtifactError, match="needs an artifact"):
        Reranker.load(str(model_dirs["xlmr"]), precision="int8")


def test_backend_order_follows_the_precision():  # which graph runs per device: tests/test_plan.py
    assert auto_order("fp32") == auto_order("int8") == AUTO_ORDER
    bf16 = auto_order("bf16")
    assert bf16[:3] == AUTO_ORDER[:3] and bf16[3:] == (("openvino", "cpu"), ("torch", "cpu"), ("onnxruntime", "cpu"))


def corrupting_quantizer(source, target, model_type=None, keep_float=(), method="dynamic", sensitive=(), **options):
    """A broken 'quantizer': the fp32 graph with its classifier weights reversed and blown up."""
    model = onnx.load(str(source))
    for init in model.graph.initializer:
        if "out_proj.weight" in init.name:
            init.CopyFrom(numpy_helper.from_array(-50 * numpy_helper.to_array(init), init.name))
    onnx.save(model, str(target))
    return target


@pytest.mark.integration
def test_a_bad_variant_is_refused_unless_accepted(model_dirs, tmp_path, monkeypatch):
    monkeypatch.setattr("rerankrt.export.variants.quantize_int8", corrupting_quantizer)
    # every recipe, the search's too (its budget cut short: it cannot mend a corrupt quantizer), is refused
    with pytest.raises(ExportError, match="ranks too differently.*--accept-fidelity-loss"):
        export_model(str(model_dirs["xlmr"]), tmp_path / "bad", precision="int8", int8_search_budget_s=0.01)
    assert not (tmp_path / "bad").exists()

    manifest = export_model(str(model_dirs["xlmr"]), tmp_path / "ok", precision="int8", accept_fidelity_loss=True,
                            int8_search_budget_s=0.01)  # fmt: skip
    report = json.loads((tmp_path / "ok" / FIDELITY_NAME).read_text())
    assert (report["passed"], report["accepted"]) == (False, True) and report["failures"]
    assert load_manifest(tmp_path / "ok").precision == manifest.precision == "int8"

    # the same report without the acceptance is refused at load, naming the file
    report["accepted"] = False
    (tmp_path / "ok" / FIDELITY_NAME).write_text(json.dumps(report))
    listed = json.loads((tmp_path / "ok" / MANIFEST_NAME).read_text())
    listed["files"][FIDELITY_NAME] = sha256_file(tmp_path / "ok" / FIDELITY_NAME)
    (tmp_path / "ok" / MANIFEST_NAME).write_text(json.dumps(listed))
    with pytest.raises(ArtifactError, match="fidelity.json: the int8 variant failed"):
        load_manifest(tmp_path / "ok")


@pytest.mark.integration
def test_the_next_int8_recipe_is_tried_when_the_fastest_misses(model_dirs, tmp_path, monkeypatch, caplog):
    from rerankrt.export.precision import quantize_int8

    def dynamic_broken(source, target, model_type=None, keep_float=(), method="dynamic", sensitive=(), **options):
        if method == "dynamic":
            return corrupting_quantizer(source, target)
        return quantize_int8(source, target, model_type, keep_float, method, sensitive, **options)

    monkeypatch.setattr("rerankrt.export.variants.quantize_int8", dynamic_broken)
    export_model(str(model_dirs["xlmr"]), tmp_path / "art", precision="int8")
    report = json.loads((tmp_path / "art" / FIDELITY_NAME).read_text())
    assert report["passed"] and report["method"] == "blockwise"
    ops = {node.op_type for node in onnx.load(str(tmp_path / "art" / "model.int8.onnx")).graph.node}
    assert "MatMulNBits" in ops
    assert "int8 (dynamic) vs fp32" in caplog.text and "misses" in caplog.text


def test_tie_aware_agreement_counts_only_real_disagreements():
    ref = np.array([0.90, 0.895, 0.5, 0.2, 0.1])  # the two best are tied at tie 0.01
    top1, top3, swaps = tie_aware_agreement(ref, np.array([0.89, 0.9, 0.5, 0.2, 0.1]), 5, tie=0.01)
    assert (top1, top3, swaps) == (1.0, 1.0, 0.0)
    top1, top3, swaps = tie_aware_agreement(ref, ref[::-1].copy(), 5, tie=0.01)
    assert (top1, top3) == (0.0, 0.0) and swaps == 1.0
    assert FidelityThresholds().max_swap_rate < 0.1


def test_unknown_precision_and_multimodal_variants_are_refused_before_work(tokenizer_dirs, tmp_path):
    with pytest.raises(RerankrtError, match="precision 'int4'"):
        export_model(str(tokenizer_dirs["xlmr"]), tmp_path / "x", precision="int4")
    with pytest.raises(ExportError, match="fp32 only"):  # no weights in the folder: refused before reading them
        export_model(str(tokenizer_dirs["qwen3-vl"]), tmp_path / "vl", precision="int8")
    assert not list(tmp_path.iterdir())


@pytest.mark.integration
def test_info_reports_the_variant_its_fidelity_and_the_cpu_knobs(variants):
    from rerankrt.info import collect, physical_cores

    info = collect(variants["xlmr", "int8"])
    assert info["artifact"]["precision"] == "int8" and info["artifact"]["graphs"]["scorer.int8"] == "model.int8.onnx"
    assert info["artifact"]["fidelity"]["passed"] is True and 0 <= info["artifact"]["fidelity"]["swap_rate"] <= 1
    defaults = info["serving_defaults"]
    assert defaults["threads"] == physical_cores() == defaults["onnxruntime_session"]["intra_op_num_threads"]
    assert defaults["onnxruntime_session"]["inter_op_num_threads"] == 1 and "mkldnn_bf16" in defaults["torch"]
    openvino = defaults["openvino_compile"]
    assert openvino["fp32"]["INFERENCE_PRECISION_HINT"] == "f32" and openvino["fp32"]["NUM_STREAMS"] == "1"
    assert openvino["bf16"]["INFERENCE_PRECISION_HINT"] == ("bf16" if Machine.detect().cpu_bf16 else "f32")
    assert info["packages"]["openvino"]


def test_external_data_files_are_found_by_either_naming(tmp_path):
    from rerankrt.export.precision import external_data_files

    for name in ("model.onnx", "model.onnx_data", "model.int8.onnx", "model.int8.onnx.data", "other.onnx"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in external_data_files(tmp_path / "model.onnx")] == ["model.onnx_data"]
    assert [p.name for p in external_data_files(tmp_path / "model.int8.onnx")] == ["model.int8.onnx.data"]
    assert external_data_files(tmp_path / "other.onnx") == []


@pytest.mark.integration
@pytest.mark.parametrize("method", ["dynamic", "blockwise", "mixed"])
def test_int8_recipes_quantize_run_and_keep_the_named_products_fp32(model_dirs, artifact_dirs, tmp_path, method):
    """Each recipe really quantizes the tiny BERT, the graph runs in ONNX Runtime close to fp32, and keep-float
    regexes are honoured: the one-logit head (a Gemm the quantizer rewrites as MatMul) and, for mixed, the
    family's sensitive products stay fp32 weights."""
    from rerankrt.export.parity import check_fidelity
    from rerankrt.export.precision import quantize_int8
    from rerankrt.families import get_family
    from rerankrt.runtime.onnxruntime_backend import OnnxRuntimeBackend

    family = get_family("cross-encoder")
    source = artifact_dirs["bert"] / "model.onnx"
    keep = (*family.export_hints.int8_keep_float, r"layer\.0/attention/output/dense/")
    target = quantize_int8(
        source, tmp_path / "model.int8.onnx", "bert", keep, method, family.export_hints.int8_sensitive
    )
    graph = onnx.load(str(target)).graph
    quantized = {"dynamic": {"MatMulInteger", "QAttention"}, "blockwise": {"MatMulNBits"}, "mixed": {"MatMulNBits"}}
    nodes = {node.name: node.op_type for node in graph.node}
    assert set(nodes.values()) & quantized[method], sorted(set(nodes.values()))
    float_products = {name for name, op in nodes.items() if op in ("MatMul", "Gemm")}
    assert any("classifier" in name for name in float_products)  # the head: fp32
    assert any("layer.0/attention/output/dense" in name for name in float_products)
    assert not any("layer.1/attention/output/dense" in name for name in float_products)
    ffn_up = {name for name in float_products if "/intermediate/dense/" in name}
    assert bool(ffn_up) == (method == "mixed")  # the family's sensitive products: fp32 in mixed only

    encoder = family.load_encoder(artifact_dirs["bert"], 64)
    reference = family.load_scorer(model_dirs["bert"])
    run = OnnxRuntimeBackend(family, tmp_path, {"scorer": target.name}).run
    report = check_fidelity(encoder, reference, run, f"int8 {method}", "int8", queries=2)
    assert report.pairs == 16 and 0 < report.max_logit_diff < 0.5, report  # quantized, and still close
    fields = {"max_score_diff", "top1_agreement", "top3_agreement", "swap_rate", "mean_spearman"}
    assert fields <= report.to_dict().keys()
