import logging
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from rerankrt.artifact import load_manifest
from rerankrt.errors import BackendUnavailableError
from rerankrt.precision import Precision
from rerankrt.runtime import Reranker, loader
from rerankrt.runtime.onnxruntime_backend import OnnxRuntimeBackend
from rerankrt.runtime.plan import AUTO_ORDER, ServingPlan
from rerankrt.runtime.torch_backend import TorchBackend
from rerankrt.testing.reference import cross_encoder_logits, random_documents, random_text
from tests.conftest import ARCHS


def fresh_inputs(seed: int) -> tuple[str, list[str]]:
    rng = np.random.default_rng(seed)
    return random_text(rng, 2, 12), random_documents(rng, 19)


@pytest.mark.integration
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "torch"])
def test_artifact_backends_equal_the_model_card_logits(artifact_dirs, model_dirs, arch, backend):
    reranker = Reranker.load(str(artifact_dirs[arch]), backend=backend, max_batch_size=8)
    assert reranker.backend.name == backend
    for seed in (1, 2):
        query, docs = fresh_inputs(seed)
        expected = cross_encoder_logits(model_dirs[arch], query, docs)
        np.testing.assert_allclose(reranker.logits(query, docs), expected, atol=1e-4, rtol=0)


@pytest.mark.integration
@pytest.mark.parametrize("arch", ARCHS)
def test_plain_model_folder_is_served_with_torch(model_dirs, arch):
    reranker = Reranker.load(str(model_dirs[arch]))
    assert reranker.backend.name == "torch"
    query, docs = fresh_inputs(3)
    np.testing.assert_allclose(
        reranker.logits(query, docs), cross_encoder_logits(model_dirs[arch], query, docs), atol=1e-4, rtol=0
    )


@pytest.mark.integration
def test_truncated_pairs_equal_the_reference_with_only_second_truncation(artifact_dirs, model_dirs):
    reranker = Reranker.load(str(artifact_dirs["xlmr"]), max_length=40)
    docs = ["Paris is the capital of France. " * 30, "hi", "panda " * 100]
    expected = cross_encoder_logits(model_dirs["xlmr"], "what is panda?", docs, max_length=40)
    np.testing.assert_allclose(reranker.logits("what is panda?", docs), expected, atol=1e-4, rtol=0)


@pytest.mark.integration
def test_scores_do_not_depend_on_batch_company(artifact_dirs):
    reranker = Reranker.load(str(artifact_dirs["bert"]), max_batch_size=16)
    query, docs = fresh_inputs(4)
    together = reranker.logits(query, docs)
    alone = np.array([reranker.logits(query, [doc])[0] for doc in docs])
    np.testing.assert_allclose(together, alone, atol=1e-5, rtol=0)


def test_onnxruntime_on_a_plain_model_folder_asks_for_an_export(tokenizer_dirs):
    with pytest.raises(BackendUnavailableError, match="rerankrt export"):
        Reranker.load(str(tokenizer_dirs["xlmr"]), backend="onnxruntime")


@pytest.mark.integration
def test_tensorrt_explicitly_requested_is_an_error_not_a_fallback(artifact_dirs):
    with pytest.raises(BackendUnavailableError, match="TensorRT is not installed|no CUDA|no TensorRT engine"):
        Reranker.load(str(artifact_dirs["xlmr"]), backend="tensorrt")


@pytest.mark.integration
def test_torch_backend_on_an_artifact_whose_weights_are_gone(artifact_dirs, model_dirs, tmp_path):
    moved = shutil.copytree(model_dirs["bert"], tmp_path / "bert")
    from rerankrt.export import export_model

    export_model(str(moved), tmp_path / "art")
    shutil.rmtree(moved)
    with pytest.raises(BackendUnavailableError, match="source weights"):
        Reranker.load(str(tmp_path / "art"), backend="torch")
    assert Reranker.load(str(tmp_path / "art")).backend.name == "openvino"


class Named:
    def __init__(self, name, device):
        self.name, self.device = name, device


def failing(message, error=BackendUnavailableError):
    def load(device):
        raise error(message)

    return load


def cpu_only(name):
    def load(device):
        if device == "cuda":
            raise BackendUnavailableError("no CUDA device")
        return Named(name, device)

    return load


def select_backend(monkeypatch, choice, loaders):
    """`open_first` over the auto order's plans (or the named backend's), each opened by `loaders[backend](device)`."""
    monkeypatch.setattr(loader, "open_backend", lambda plan, family: loaders[plan.backend](plan.device))
    plans = [ServingPlan(b, d, Precision.FP32) for b, d in AUTO_ORDER if choice in ("auto", b)]
    return loader.open_first(plans, None, choice)[0]


def test_auto_goes_gpu_first_then_cpu_past_any_load_failure(monkeypatch, caplog):
    loaders = {
        "tensorrt": failing("no engine"),
        "onnxruntime": failing("graph is broken", RuntimeError),
        "openvino": failing("openvino is not installed"),
        "torch": cpu_only("torch"),
    }
    with caplog.at_level(logging.INFO, logger="rerankrt"):
        chosen = select_backend(monkeypatch, "auto", loaders)
    assert (chosen.name, chosen.device) == ("torch", "cpu")
    tried = [line for line in caplog.text.splitlines() if "not used" in line]
    assert [line.split("backend ")[1].split(" not used")[0] for line in tried] == [
        "tensorrt (cuda)",
        "onnxruntime (cuda)",
        "torch (cuda)",
        "openvino (cpu)",
        "onnxruntime (cpu)",
    ]
    assert "onnxruntime (cpu) not used: RuntimeError: graph is broken" in caplog.text


def test_auto_prefers_tensorrt_when_it_loads(monkeypatch):
    loaders = {name: (lambda device, n=name: Named(n, device)) for name in ("tensorrt", "onnxruntime", "torch")}
    assert select_backend(monkeypatch, "auto", loaders).name == "tensorrt"


def test_onnxruntime_on_cuda_comes_before_torch_on_cuda(monkeypatch):
    loaders = {
        "tensorrt": failing("no engine"),
        "onnxruntime": lambda d: Named("onnxruntime", d),
        "torch": cpu_only("t"),
    }
    chosen = select_backend(monkeypatch, "auto", loaders)
    assert (chosen.name, chosen.device) == ("onnxruntime", "cuda")


def test_no_backend_at_all_lists_every_reason(monkeypatch):
    loaders = {name: failing(f"{name} reason") for name in ("tensorrt", "onnxruntime", "openvino", "torch")}
    with pytest.raises(BackendUnavailableError, match=r"tensorrt \(cuda\): tensorrt reason; onnxruntime \(cuda\)"):
        select_backend(monkeypatch, "auto", loaders)


def test_named_backend_falls_to_its_cpu_path_but_never_to_another_backend(monkeypatch):
    chosen = select_backend(monkeypatch, "torch", {"torch": cpu_only("torch")})
    assert (chosen.name, chosen.device) == ("torch", "cpu")
    with pytest.raises(BackendUnavailableError, match="graph"):
        select_backend(monkeypatch, "onnxruntime", {"onnxruntime": failing("graph"), "torch": cpu_only("torch")})
    with pytest.raises(RuntimeError, match="broken"):  # a named backend's unexpected failure is not hidden
        select_backend(monkeypatch, "onnxruntime", {"onnxruntime": failing("broken", RuntimeError)})


@pytest.mark.integration
def test_real_loaders_on_a_machine_without_gpu_log_each_step(artifact_dirs, caplog):
    with caplog.at_level(logging.INFO, logger="rerankrt"):
        reranker = Reranker.load(str(artifact_dirs["xlmr"]))
    assert (reranker.backend.name, reranker.backend.device) == ("openvino", "cpu")
    assert "tensorrt (cuda) not used" in caplog.text
    assert "onnxruntime (cuda) not used: no CUDA device" in caplog.text
    assert "torch (cuda) not used: no CUDA device" in caplog.text
    assert "backend selected: openvino on cpu, fp32, model.onnx" in caplog.text


CUDA_REASON = "" if torch.cuda.is_available() else "needs a CUDA GPU"


@pytest.mark.integration
@pytest.mark.skipif(bool(CUDA_REASON), reason=CUDA_REASON or "-")
@pytest.mark.parametrize("arch", ["xlmr", "qwen3"])
def test_torch_on_cuda_runs_bf16_close_to_fp32(model_dirs, arch):
    gpu = Reranker.load(str(model_dirs[arch]), backend="torch")
    assert (gpu.backend.device, gpu.backend.dtype) == ("cuda", torch.bfloat16)
    cpu = Reranker(replace(gpu.model, backend=TorchBackend(gpu.family, model_dirs[arch], device="cpu")), gpu.settings)
    query, docs = fresh_inputs(8)
    assert np.abs(gpu.logits(query, docs) - cpu.logits(query, docs)).max() < 0.5  # bf16 bound, as for the casts


@pytest.mark.integration
@pytest.mark.skipif(
    "CUDAExecutionProvider" not in __import__("onnxruntime").get_available_providers(),
    reason="needs onnxruntime-gpu and a CUDA GPU",
)
def test_onnxruntime_cuda_equals_cpu(artifact_dirs):
    gpu = Reranker.load(str(artifact_dirs["xlmr"]), backend="onnxruntime")
    assert gpu.backend.device == "cuda"
    on_cpu = OnnxRuntimeBackend(gpu.family, artifact_dirs["xlmr"], {"scorer": "model.onnx"}, device="cpu")
    cpu = Reranker(replace(gpu.model, backend=on_cpu), gpu.settings)
    query, docs = fresh_inputs(9)
    np.testing.assert_allclose(gpu.logits(query, docs), cpu.logits(query, docs), atol=1e-4, rtol=0)


@pytest.mark.integration
def test_openvino_compiles_with_the_plan_settings_and_fp32_stays_fp32(artifact_dirs):
    from rerankrt.runtime.openvino_backend import SHAPE_CACHE_CAPACITY, compile_config, import_openvino

    openvino = import_openvino()
    reranker = Reranker.load(str(artifact_dirs["xlmr"]), backend="openvino", threads=1)
    compiled = reranker.backend.sessions["scorer"].compiled
    # explicit: OpenVINO's own default on a CPU with BF16 (AVX512-BF16, AMX) is bf16
    assert compiled.get_property("INFERENCE_PRECISION_HINT") == openvino.Type.f32
    assert compiled.get_property("INFERENCE_NUM_THREADS") == 1 and compiled.get_property("NUM_STREAMS") == 1
    assert str(compiled.get_property("PERFORMANCE_HINT")) == "LATENCY"
    # memory bounded under any mix of shapes (the compiled model does not report this one: the config is checked)
    assert compile_config(1, Precision.FP32)["CPU_RUNTIME_CACHE_CAPACITY"] == str(SHAPE_CACHE_CAPACITY)
    assert reranker.model.plan.describe() == "openvino on cpu, fp32, model.onnx"


@pytest.mark.integration
@pytest.mark.parametrize("arch", ["xlmr", "qwen3"])
def test_openvino_bf16_hint_passes_the_fidelity_gate(artifact_dirs, model_dirs, arch):
    from rerankrt.export.parity import check_fidelity
    from rerankrt.families import get_family
    from rerankrt.runtime.machine import Machine
    from rerankrt.runtime.openvino_backend import OpenVinoBackend, import_openvino

    openvino = import_openvino()

    family = get_family(load_manifest(artifact_dirs[arch]).family)
    backend = OpenVinoBackend(family, artifact_dirs[arch], {"scorer": "model.onnx"}, 2, Precision.BF16)
    encoder = family.load_encoder(artifact_dirs[arch])
    report = check_fidelity(encoder, family.load_scorer(model_dirs[arch]), backend.run, "openvino bf16", "bf16")
    assert report.passed, report.failures
    if Machine.detect().cpu_bf16:  # really computed in bf16 (fp32 matches within 1e-4)
        assert backend.sessions["scorer"].compiled.get_property("INFERENCE_PRECISION_HINT") == openvino.Type.bf16
        assert report.max_logit_diff > 1e-4


def test_onnxruntime_provider_lists():
    from rerankrt.runtime.onnxruntime_backend import providers_for

    gpu_build = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert providers_for("cpu", gpu_build) == ["CPUExecutionProvider"]
    assert providers_for("cuda", gpu_build) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    with_trt = providers_for("cuda", gpu_build, tensorrt_ep=True, cache_dir=Path("/art/cache"))
    assert with_trt[0] == (
        "TensorrtExecutionProvider",
        {"trt_engine_cache_enable": True, "trt_engine_cache_path": "/art/cache"},
    )
    assert with_trt[1:] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    with pytest.raises(BackendUnavailableError, match="no CUDA execution provider"):
        providers_for("cuda", ["CPUExecutionProvider"])
    with pytest.raises(BackendUnavailableError, match="no TensorRT execution provider"):
        providers_for("cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"], tensorrt_ep=True)


@pytest.mark.integration
def test_threads_default_to_physical_cores_and_can_be_set(artifact_dirs):
    from rerankrt.runtime.machine import physical_cores

    hyperthreaded = "".join(
        f"processor\t: {i}\nphysical id\t: 0\ncore id\t\t: {i // 2}\n\n" for i in range(4)
    )  # 4 logical CPUs on 2 cores
    assert physical_cores(hyperthreaded) == 2
    assert physical_cores("") >= 1
    chosen = Reranker.load(str(artifact_dirs["xlmr"]), backend="onnxruntime")
    assert chosen.backend.sessions["scorer"].session.get_session_options().intra_op_num_threads == physical_cores()
    pinned = Reranker.load(str(artifact_dirs["xlmr"]), backend="onnxruntime", threads=1)
    assert pinned.backend.sessions["scorer"].session.get_session_options().intra_op_num_threads == 1


@pytest.mark.integration
def test_a_reranker_never_closed_lets_the_process_exit_cleanly(model_dirs):
    """Its threads stop at interpreter exit (torch used to abort the process: 'terminate called ...')."""
    import subprocess
    import sys

    script = f"from rerankrt import Reranker; print(Reranker.load({str(model_dirs['xlmr'])!r}).logits('q', ['a'])[0])"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "terminate called" not in result.stderr
