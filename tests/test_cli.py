"""The command line as a user runs it: real processes, real ports on 127.0.0.1."""

import concurrent.futures
import json
import shutil
import signal
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

from rerankrt.server.schemas import PANDA_EXAMPLE
from rerankrt.testing import tiny_models
from rerankrt.testing.reference import QWEN3_CHINESE_EXAMPLE, qwen3_card_scores
from tests.support import ENV, SERVERS, free_port, rerankrt, running_server

pytestmark = pytest.mark.integration  # real processes, most of them exporting or serving


def test_export_prints_progress_and_writes_an_artifact(model_dirs, tmp_path):
    result = rerankrt("export", model_dirs["bert"], "--out", tmp_path / "art", "--max-length", 256)
    assert result.returncode == 0, result.stderr
    assert "resolving" in result.stderr
    for n in range(1, 5):
        assert f"[{n}/4]" in result.stderr
    assert "max |Δlogit|" in result.stderr
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert manifest["max_length"] == 256


def test_export_of_an_unsupported_model_is_a_clear_error(tmp_path):
    model_dir = tiny_models.build_causal_lm(tmp_path / "gpt2")
    result = rerankrt("export", model_dir, "--out", tmp_path / "out")
    assert result.returncode == 2
    assert "error:" in result.stderr and "GPT2LMHeadModel" in result.stderr
    assert "Traceback" not in result.stderr


def test_rerank_prints_sorted_json(artifact_dirs):
    result = rerankrt(
        "rerank", "--model-path", artifact_dirs["xlmr"], "--query", "what is panda?", "hi", "pandas are bears"
    )
    assert result.returncode == 0, result.stderr
    results = json.loads(result.stdout)
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)
    assert {r["document"] for r in results} == {"hi", "pandas are bears"}


def test_serve_without_model_path_names_the_flag_and_env():
    env = {k: v for k, v in ENV.items() if k != "RERANKRT_MODEL_PATH"}
    result = subprocess.run([sys.executable, "-m", "rerankrt.cli", "serve"], capture_output=True, text=True, env=env)
    assert result.returncode == 2
    assert "--model-path (env RERANKRT_MODEL_PATH)" in result.stderr


def test_serve_refuses_a_tampered_artifact(artifact_dirs, tmp_path):
    folder = shutil.copytree(artifact_dirs["xlmr"], tmp_path / "art")
    (folder / "model.onnx").write_bytes((folder / "model.onnx").read_bytes() + b"\0")
    result = rerankrt("serve", "--model-path", folder, "--port", free_port(), timeout=120)
    assert result.returncode == 2
    assert "model.onnx: sha256 does not match" in result.stderr


@pytest.fixture
def server(artifact_dirs):
    with running_server(artifact_dirs["xlmr"]) as base:
        yield base


def test_served_sglang_example(server):
    body = PANDA_EXAMPLE
    response = httpx.post(f"{server}/v1/rerank", json=body, timeout=30)
    assert response.status_code == 200
    results = response.json()
    assert len(results) == 2 and all(set(r) == {"score", "index", "document"} for r in results)
    assert results[0]["score"] >= results[1]["score"]
    assert httpx.post(f"{server}/v1/rerank", json={**body, "top_n": -1}, timeout=30).status_code == 400


def hub_cache_with(model_dir, repo_id: str, root) -> str:
    """Lay `model_dir` out as the Hugging Face cache does after a download (refs/main -> snapshot)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = root / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return commit


def test_export_of_a_hub_id_resolves_through_the_cache(model_dirs, tmp_path):
    commit = hub_cache_with(model_dirs["xlmr"], "tiny-org/tiny-reranker", tmp_path / "hub")
    result = subprocess.run(
        [sys.executable, "-m", "rerankrt.cli", "export", "tiny-org/tiny-reranker", "--out", str(tmp_path / "art")],
        capture_output=True, text=True, timeout=300, env={**ENV, "HF_HUB_CACHE": str(tmp_path / "hub")},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    source = json.loads((tmp_path / "art" / "manifest.json").read_text())["source"]
    assert source["ref"] == "tiny-org/tiny-reranker" and source["revision"] == commit


def test_uncached_hub_id_offline_says_to_use_a_local_folder(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "rerankrt.cli", "export", "tiny-org/not-cached", "--out", str(tmp_path / "art")],
        capture_output=True, text=True, timeout=300, env={**ENV, "HF_HUB_CACHE": str(tmp_path / "hub")},
    )  # fmt: skip
    assert result.returncode == 2
    assert "could not fetch from the Hugging Face Hub" in result.stderr and "local folder" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_qwen3_export_then_serve_answers_the_chinese_example(model_dirs, tmp_path, backend):
    result = rerankrt("export", model_dirs["qwen3"], "--out", tmp_path / "art")
    assert result.returncode == 0, result.stderr
    body = QWEN3_CHINESE_EXAMPLE
    prob, _ = qwen3_card_scores(model_dirs["qwen3"], body["query"], body["documents"], body["instruct"])
    with running_server(tmp_path / "art", "--backend", backend) as base:
        results = httpx.post(f"{base}/v1/rerank", json=body, timeout=60).json()
    assert len(results) == 2
    for r in results:
        assert r["document"] == body["documents"][r["index"]]
        assert r["score"] == pytest.approx(float(prob[r["index"]]), abs=1e-4)
    assert [r["index"] for r in results] == np.argsort(-prob, kind="stable")[:2].tolist()


def test_sigterm_finishes_the_request_in_flight(artifact_dirs):
    body = {"query": "what is panda?", "documents": ["The giant panda is a bear. " * 80] * 1000}  # ~10 s of work
    with running_server(artifact_dirs["xlmr"]) as base:
        with httpx.Client(timeout=120) as client, concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(client.post, f"{base}/v1/rerank", json=body)
            time.sleep(0.5)  # the request is in flight (1000 pairs take seconds on the tiny model)
            assert not pending.done()
            SERVERS[base].send_signal(signal.SIGTERM)
            response = pending.result(timeout=120)
    assert response.status_code == 200 and len(response.json()) == 1000


def test_info_reports_the_machine_and_the_artifact(artifact_dirs):
    result = rerankrt("info", artifact_dirs["qwen3"])
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert "CPUExecutionProvider" in info["onnxruntime_providers"]
    assert set(info["cpu"]["features"]) >= {"avx512f", "amx_bf16"} and info["cpu"]["torch_threads"] >= 1
    assert info["packages"]["onnxruntime"] and info["artifact"]["family"] == "qwen3-yes-no"
    graphs = {"scorer": "model.onnx", "decoder": "decoder.onnx"}  # the decoder graph: prefix reuse
    assert info["artifact"]["precision"] == "fp32" and info["artifact"]["graphs"] == graphs
    reason = info["artifact"]["family_reason"]  # why the family was chosen, recorded at export
    assert info["artifact"]["family_options"] == {}  # --family-option at export: none
    assert reason.startswith("detected: Qwen3ForCausalLM") and "Qwen3-Reranker" in reason
