"""The serving plan, on made-up machines and manifests: no model is loaded and no backend library imported."""

from __future__ import annotations

import pytest

from rerankrt.artifact import Manifest
from rerankrt.errors import ArtifactError, BackendUnavailableError
from rerankrt.families import get_family
from rerankrt.precision import Precision
from rerankrt.runtime.machine import Machine
from rerankrt.runtime.plan import BACKEND_CHOICES, Request, ServingPlan, Skipped, plan_serving
from tests.fakes import CPU, GPU, OPENVINO_BF16, OPENVINO_NO_BF16, engine, first, manifest, plans


def test_fp32_asked_on_a_gpu_selects_the_fp32_engine():
    m = manifest(engines=[engine("fp16"), engine("fp32")])
    assert first(m, GPU).engine.precision == Precision.FP16  # unasked: the fastest engine
    chosen = first(m, GPU, precision=Precision.FP32)
    assert (chosen.backend, chosen.precision) == ("tensorrt", Precision.FP32)
    assert chosen.engine.file == "model.fp32.sm90.plan"


def test_fp32_asked_without_an_fp32_engine_says_why_and_falls_back_in_fp32():
    m = manifest(engines=[engine("fp16")])
    candidates = plans(m, GPU, precision=Precision.FP32)
    assert isinstance(candidates[0], Skipped)
    assert "no fp32 TensorRT engine" in candidates[0].reason and "--precision fp32" in candidates[0].reason
    nxt = candidates[1]
    assert (nxt.backend, nxt.device, nxt.precision) == ("onnxruntime", "cuda", Precision.FP32)
    torch_cuda = candidates[2]
    assert (torch_cuda.backend, torch_cuda.precision) == ("torch", Precision.FP32)  # no silent bf16 when fp32 asked


def test_engines_of_another_gpu_or_tensorrt_are_not_used():
    m = manifest(engines=[engine("fp16", capability="8.0"), engine("fp16", version="10.9.0.1")])
    skipped = plans(m, GPU)[0]
    assert isinstance(skipped, Skipped) and "build one with: rerankrt build-engine" in skipped.reason


def test_cpu_plans_follow_the_artifact_precision():
    assert first(manifest("int8", ["int8"]), CPU).graphs == {"scorer": "model.int8.onnx"}
    fp32 = first(manifest("int8", ["int8"]), CPU, precision=Precision.FP32)
    assert (fp32.graphs, fp32.precision) == ({"scorer": "model.onnx"}, Precision.FP32)
    bf16 = first(manifest("bf16"), CPU)  # onnxruntime has no bf16 CPU kernels: torch carries bf16
    assert (bf16.backend, bf16.precision) == ("torch", Precision.BF16)
    assert first(manifest("fp16", ["fp16"]), GPU, backend="onnxruntime").graphs == {"scorer": "model.fp16.onnx"}
    assert first(manifest(), CPU).threads == 2 and first(manifest(), CPU, threads=1).threads == 1


def test_a_precision_the_artifact_lacks_is_refused_with_the_export_command():
    with pytest.raises(ArtifactError, match="--precision int8"):
        plans(manifest(), CPU, precision=Precision.INT8)


def test_a_named_backend_plans_only_itself():
    names = {p.backend for p in plans(manifest(), GPU, backend="torch")}
    assert names == {"torch"}


def test_a_family_without_tensorrt_support_is_skipped_with_its_reason():
    m = manifest(family="qwen3-vl-yes-no", engines=[engine("fp16")])
    skipped = plans(m, GPU)[0]
    assert isinstance(skipped, Skipped) and skipped.reason == get_family("qwen3-vl-yes-no").tensorrt_problem


def test_plain_model_folders_plan_torch_only():
    candidates = plan_serving(get_family("cross-encoder"), Request(), CPU, model_ref="/models/x")
    served = [p for p in candidates if isinstance(p, ServingPlan)]
    assert [(p.backend, p.device, p.weights) for p in served] == [("torch", "cpu", "/models/x")]
    with pytest.raises(ArtifactError, match="needs an artifact"):
        plan_serving(get_family("cross-encoder"), Request(precision=Precision.INT8), CPU, model_ref="/models/x")


def cpu_plans(m: Manifest, machine: Machine, **request) -> list[tuple]:
    """(backend, precision, graphs) of the CPU candidates in order; a Skipped one as (backend, 'skipped', reason)."""
    out = []
    for p in plans(m, machine, **request):
        if p.device != "cpu":
            continue
        out.append((p.backend, "skipped", p.reason) if isinstance(p, Skipped) else (p.backend, p.precision, p.graphs))
    return out


def test_openvino_serves_fp32_first_on_cpu_and_never_with_the_bf16_hint():
    fp32 = {"scorer": "model.onnx"}
    for machine in (OPENVINO_BF16, OPENVINO_NO_BF16):
        assert cpu_plans(manifest(), machine)[:2] == [("openvino", "fp32", fp32), ("onnxruntime", "fp32", fp32)]
        # fp32 asked on a bf16 artifact: fp32, even where the CPU computes bf16
        assert cpu_plans(manifest("bf16"), machine, precision=Precision.FP32)[0] == ("openvino", "fp32", fp32)
        # an fp16 (GPU) artifact on a CPU: the fp32 graph in fp32, as ONNX Runtime does
        assert cpu_plans(manifest("fp16", ["fp16"]), machine)[0] == ("openvino", "fp32", fp32)


def test_bf16_artifacts_get_the_bf16_hint_only_where_the_cpu_computes_bf16():
    on_bf16 = cpu_plans(manifest("bf16"), OPENVINO_BF16)
    assert [(b, p) for b, p, _ in on_bf16][:3] == [("openvino", "bf16"), ("torch", "bf16"), ("onnxruntime", "fp32")]
    assert on_bf16[0][2] == {"scorer": "model.onnx"}  # the fp32 graph, computed in bf16 by the hint
    # without BF16 instructions bf16 is emulated: OpenVINO serves the fp32 graph in fp32, ahead of torch's bf16
    on_avx2 = cpu_plans(manifest("bf16"), OPENVINO_NO_BF16)
    assert [(b, p) for b, p, _ in on_avx2][:3] == [("openvino", "fp32"), ("torch", "bf16"), ("onnxruntime", "fp32")]


def test_a_variant_artifact_falls_back_to_its_fp32_plans_unless_a_precision_is_asked_for():
    """What serves where the variant's plans fail to load or miss the self-check on this machine."""
    fp32, int8 = {"scorer": "model.onnx"}, {"scorer": "model.int8.onnx"}
    assert cpu_plans(manifest("int8", ["int8"]), OPENVINO_BF16) == [
        ("openvino", "int8", int8), ("onnxruntime", "int8", int8), ("torch", "fp32", {}),
        ("openvino", "fp32", fp32), ("onnxruntime", "fp32", fp32),
    ]  # fmt: skip
    on_bf16 = [(b, p) for b, p, _ in cpu_plans(manifest("bf16"), OPENVINO_BF16)]
    assert on_bf16[3:] == [("openvino", "fp32"), ("torch", "fp32")]  # onnxruntime fp32 is there already
    asked = cpu_plans(manifest("int8", ["int8"]), OPENVINO_BF16, precision=Precision.INT8)
    assert [(b, p) for b, p, _ in asked] == [("openvino", "int8"), ("onnxruntime", "int8"), ("torch", "fp32")]
    assert len(cpu_plans(manifest(), OPENVINO_BF16)) == 3  # an fp32 artifact: nothing to fall back to


def test_int8_artifacts_offer_their_int8_graph_to_openvino_then_onnxruntime():
    # OpenVINO loads the blockwise/mixed graphs; the dynamic one fails to load there and ONNX Runtime serves it
    candidates = cpu_plans(manifest("int8", ["int8"]), OPENVINO_BF16)
    assert candidates[:2] == [
        ("openvino", "int8", {"scorer": "model.int8.onnx"}),
        ("onnxruntime", "int8", {"scorer": "model.int8.onnx"}),
    ]
    assert cpu_plans(manifest("int8", ["int8"]), OPENVINO_BF16, precision=Precision.FP32)[0][:2] == ("openvino", "fp32")


def test_openvino_missing_is_skipped_with_the_install_command():
    candidates = cpu_plans(manifest(), CPU)
    assert candidates[0] == ("openvino", "skipped", "openvino is not installed: pip install openvino")
    assert candidates[1][:2] == ("onnxruntime", "fp32")
    only = plans(manifest(), GPU, backend="openvino")  # a GPU machine without it: the one CPU candidate, skipped
    assert [(p.backend, p.device, type(p)) for p in only] == [("openvino", "cpu", Skipped)]


def test_openvino_gets_every_graph_of_a_multi_graph_artifact():
    m = manifest(family="qwen3-vl-yes-no", roles=("vision", "scorer"))
    assert first(m, OPENVINO_BF16).graphs == {"vision": "vision.onnx", "scorer": "model.onnx"}
    assert first(m, OPENVINO_BF16, backend="openvino").backend == "openvino"


def test_backend_choices_are_the_same_everywhere():
    from typing import get_args

    from rerankrt.cli import build_parser
    from rerankrt.runtime.settings import RerankerSettings

    assert get_args(RerankerSettings.model_fields["backend"].annotation) == BACKEND_CHOICES
    rerank = build_parser()._subparsers._group_actions[0].choices["rerank"]
    assert next(a for a in rerank._actions if a.dest == "backend").choices == BACKEND_CHOICES


def test_a_backend_is_its_row(monkeypatch):
    """A new row is planned, ordered under auto, checked against the machine's packages and listed by `info`."""
    from rerankrt.runtime import plan as planning

    def echo_plan(inputs, device):
        return inputs.graph_plan("echo", device, Precision.FP32)

    row = planning.BackendRow("echo", ("cpu",), "echo_backend:EchoBackend", echo_plan, package="echo-runtime",
                              auto_rank=1, auto_rank_for={("cpu", Precision.INT8): 5})  # fmt: skip
    monkeypatch.setattr(planning, "BACKEND_TABLE", (*planning.BACKEND_TABLE, row))
    assert planning.auto_order(Precision.FP32)[3:] == (("openvino", "cpu"), ("onnxruntime", "cpu"), ("echo", "cpu"),
                                                       ("torch", "cpu"))  # fmt: skip
    assert planning.auto_order(Precision.INT8)[-1] == ("echo", "cpu")
    with_it = Machine(physical_cores=2, packages=(("echo-runtime", "1.0"),))
    chosen = plans(manifest(), with_it, backend="echo")
    assert [(p.backend, p.device, p.graphs) for p in chosen] == [("echo", "cpu", {"scorer": "model.onnx"})]
    missing = "echo-runtime is not installed: pip install echo-runtime"
    assert cpu_plans(manifest(), CPU)[2] == ("echo", "skipped", missing)
    assert planning.availability(with_it)["echo"] == {"cpu": "available"}
    with pytest.raises(BackendUnavailableError, match="unknown backend 'nope'; choose one of auto, .*, echo"):
        plans(manifest(), CPU, backend="nope")
