"""The serving-time self-check: an artifact's golden set, scored by the chosen plan on this machine before traffic.

A runtime that computes other numbers here than the export accepted is made by wrapping OpenVINO's real graph
runner so its logits move (as a CPU with other kernels would move them: conftest's `openvino_off_by`); everything
else is the real pipeline.
"""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
from fastapi.testclient import TestClient

from rerankrt.artifact import GOLDEN_NAME, load_manifest, sha256_file
from rerankrt.errors import ArtifactError
from rerankrt.runtime import Reranker
from rerankrt.runtime.self_check import GoldenSet, SelfCheckFailed
from rerankrt.server import create_app
from rerankrt.server.settings import ServeSettings
from tests.support import edit_manifest

pytestmark = pytest.mark.integration  # every test here builds, exports or serves a model


def test_export_stores_a_hashed_golden_set_and_auto_serves_a_plan_that_passes_it(artifact_dirs):
    folder = artifact_dirs["xlmr"]
    manifest = load_manifest(folder)
    assert manifest.files[GOLDEN_NAME] == sha256_file(folder / GOLDEN_NAME)
    golden = GoldenSet.read(folder / GOLDEN_NAME)
    assert golden.pairs >= 20 and len({len(d) for g in golden.groups for d in g.documents}) > golden.pairs // 2
    with Reranker.load(str(folder)) as reranker:
        check = reranker.model.self_check
        assert check.passed and check.plan == reranker.model.plan.describe() and check.pairs == golden.pairs
        assert check.max_logit_diff <= 1e-4 and check.rule.startswith("fp32") and check.seconds > 0
        assert "avx2" in check.machine or check.machine.endswith("no AVX2")


def test_auto_refuses_a_plan_that_computes_other_numbers_here_and_serves_the_next(
    artifact_dirs, openvino_off_by, caplog
):
    openvino_off_by(lambda rows: np.full(rows, 1e-3))  # 10x the fp32 tolerance
    with caplog.at_level(logging.WARNING, logger="rerankrt.runtime.loader"):
        reranker = Reranker.load(str(artifact_dirs["xlmr"]))
    with reranker:
        assert reranker.model.plan.backend == "onnxruntime" and reranker.model.self_check.passed
    missed = [r.getMessage() for r in caplog.records if "misses" in r.getMessage()]
    assert len(missed) == 1 and "openvino on cpu, fp32, model.onnx" in missed[0]
    assert "max |Δlogit| 0.001" in missed[0] and "trying the next plan" in missed[0]


def test_a_plan_asked_for_by_name_that_misses_is_an_error_at_start_with_the_figures(artifact_dirs, openvino_off_by):
    openvino_off_by(lambda rows: np.full(rows, 1e-3))
    with pytest.raises(SelfCheckFailed, match=r"openvino on cpu, fp32.*max \|Δlogit\| 0\.001 > 0\.0001.*cores"):
        Reranker.load(str(artifact_dirs["xlmr"]), backend="openvino")


def test_a_reduced_precision_plan_is_judged_by_the_fidelity_rule(tmp_path, model_dirs, openvino_off_by):
    """An int8 plan may differ in logits, not in rankings: a shift that keeps the order passes, one that reverses
    each query's order is refused, and auto serves the next plan."""
    from rerankrt.export import export_model

    folder = tmp_path / "xlmr-int8"
    export_model(str(model_dirs["xlmr"]), folder, precision="int8", int8_method="blockwise")  # OpenVINO reads it
    openvino_off_by(lambda rows: np.full(rows, 0.01))
    with Reranker.load(str(folder)) as kept:
        check = kept.model.self_check
        assert (kept.model.plan.backend, kept.model.plan.precision) == ("openvino", "int8")
        assert check.passed and check.max_logit_diff > 1e-3 and check.rule.startswith("int8")
    openvino_off_by(lambda rows: np.linspace(50, -50, rows))  # every row's order reversed, scores far off
    with Reranker.load(str(folder)) as fallen:
        assert (fallen.model.plan.backend, fallen.model.plan.precision) == ("onnxruntime", "int8")


def test_artifacts_without_a_golden_set_serve_as_before_with_a_warning(artifact_dirs, tmp_path, caplog):
    folder = shutil.copytree(artifact_dirs["xlmr"], tmp_path / "old")
    (folder / GOLDEN_NAME).unlink()
    edit_manifest(folder, lambda m: m["files"].pop(GOLDEN_NAME))
    with caplog.at_level(logging.WARNING, logger="rerankrt.runtime.loader"):
        reranker = Reranker.load(str(folder))
    with reranker:
        assert reranker.model.self_check is None and "no golden set" in reranker.model.self_check_skipped
        assert reranker.logits("q", ["d"]).shape == (1,)
    assert any("has no golden set" in r.getMessage() for r in caplog.records)


def test_no_self_check_skips_it_and_says_what_is_lost(artifact_dirs, openvino_off_by, caplog):
    openvino_off_by(lambda rows: np.full(rows, 1e-3))
    with caplog.at_level(logging.WARNING, logger="rerankrt.runtime.loader"):
        reranker = Reranker.load(str(artifact_dirs["xlmr"]), self_check=False)
    with reranker:
        assert reranker.model.plan.backend == "openvino" and reranker.model.self_check is None
    assert any("without proof that this machine computes" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda g: g["groups"][0]["logits"].pop(), "documents but"),
        (lambda g: [g["groups"][1][k].append(v) for k, v in (("documents", "d"), ("logits", 0.0))], "same number"),
        (lambda g: g["groups"][0]["logits"].__setitem__(0, "NaN"), "not finite"),
        (lambda g: g.update(batch_size=0), "batch_size"),
    ],
)
def test_a_golden_set_that_is_not_one_is_refused_by_name(artifact_dirs, tmp_path, change, message):
    """Whoever can write the folder can rewrite the manifest: the golden set is checked like any artifact file."""
    folder = shutil.copytree(artifact_dirs["xlmr"], tmp_path / "bad")
    golden = json.loads((folder / GOLDEN_NAME).read_text())
    change(golden)
    (folder / GOLDEN_NAME).write_text(json.dumps(golden))
    edit_manifest(folder, lambda m: m["files"].update({GOLDEN_NAME: sha256_file(folder / GOLDEN_NAME)}))
    with pytest.raises(ArtifactError, match=rf"golden\.json: not a valid golden set.*{message}"):
        Reranker.load(str(folder))


def test_health_and_metrics_report_the_self_check(artifact_dirs):
    settings = ServeSettings(model_path=str(artifact_dirs["xlmr"]), warmup=False)
    with TestClient(create_app(settings)) as client:
        health = client.get("/health").json()
        assert health["status"] == "ok" and health["self_check"]["status"] == "passed"
        assert health["self_check"]["max_dlogit"] <= 1e-4 and health["self_check"]["plan"].startswith("openvino")
        metrics = client.get("/metrics").text
    line = next(x for x in metrics.splitlines() if x.startswith("rerankrt_self_check_max_dlogit "))
    assert float(line.split()[1]) == health["self_check"]["max_dlogit"]
