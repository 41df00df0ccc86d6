"""The prepared GPU check (bench/gpu_check.py) dry-runs on CPU with tiny models: its packed part (padded, packed,
CUDA-graph buckets traced by dynamo, multi-item) and its HTTP part run end to end and write their JSON."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration  # builds models, starts servers

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_check_dry_runs_on_cpu(tmp_path):
    command = [sys.executable, "-m", "bench.gpu_check", "--device", "cpu", "--tiny", "--parts", "packed", "serve",
               "--docs", "6", "--repeats", "1", "--serve-requests", "2",
               "--workdir", str(tmp_path / "work")]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + str(ROOT), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "work" / "gpu_check.json").read_text())
    assert set(report["parts"]) == {"padding-free batches, CUDA graphs, multi-item", "rerankrt serve over HTTP"}
    packed = {(r["model"], r["row"]): r for r in report["rows"] if r["part"] == "packed"}
    assert len(packed) == 14 and not [r["error"] for r in packed.values() if "error" in r]
    for (model, row), result in packed.items():
        assert result["pairs_per_s"] > 0
        if row == "rerankrt packed, fp32":  # exact against the card in fp32
            assert result["max_abs_dlogit_vs_card_fp32"] <= 1e-4, model
    multi = packed[("Qwen3-Reranker-0.6B size", "rerankrt multi-item, bf16")]
    whole = packed[("Qwen3-Reranker-0.6B size", "rerankrt packed, bf16")]
    assert multi["tokens_run"] < whole["tokens_run"]  # the shared prompt ran once
    served = [r for r in report["rows"] if r["part"] == "serve"]
    assert [r["row"] for r in served] == [
        f"HTTP {name}, concurrency {c}" for name in ("padded", "packed") for c in (1, 16)
    ]
    assert all(r["level"]["errors"] == 0 for r in served)
