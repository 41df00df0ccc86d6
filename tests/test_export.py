import json

import numpy as np
import pytest
import torch

from rerankrt.artifact import load_manifest, sha256_file
from rerankrt.errors import ExportError, UnsupportedModelError
from rerankrt.export import export_model
from rerankrt.export.parity import check_parity, remembered
from rerankrt.families import CrossEncoderFamily
from rerankrt.families.base import ParityCheck, run_torch
from rerankrt.runtime.onnxruntime_backend import OnnxRuntimeBackend
from rerankrt.testing import tiny_models
from tests.conftest import ARCHS

pytestmark = pytest.mark.integration  # every test exports or builds a model


@pytest.mark.parametrize("arch", ARCHS)
def test_artifact_holds_graph_tokenizer_parity_and_hashes(artifact_dirs, model_dirs, arch):
    folder = artifact_dirs[arch]
    manifest = load_manifest(folder)
    assert manifest.family == "cross-encoder"
    assert manifest.source.path == str(model_dirs[arch].resolve())
    assert manifest.max_length == 512 and manifest.precision == "fp32"
    graph = manifest.graphs["scorer"]
    assert graph.file == "model.onnx" and graph.outputs == ["logits"]
    assert graph.inputs[:2] == ["input_ids", "attention_mask"]
    assert ("token_type_ids" in graph.inputs) == (arch == "bert")
    assert "tokenizer.json" in manifest.encoder_files
    for name, digest in manifest.files.items():
        assert sha256_file(folder / name) == digest
    for package in ("torch", "transformers", "optimum", "onnx", "onnxruntime"):
        assert manifest.versions[package]

    parity = json.loads((folder / "parity.json").read_text())
    assert parity["passed"] is True
    assert parity["max_abs_diff"] <= 1e-4
    assert parity["pairs"] >= 24 and parity["batch_size"] > 1
    assert parity["seq_len_max"] == 512  # truncation exercised
    assert parity["seq_len_min"] < 64  # and short pairs padded next to long ones


def test_existing_output_is_kept_without_force(artifact_dirs, model_dirs):
    with pytest.raises(ExportError, match="--force"):
        export_model(str(model_dirs["xlmr"]), artifact_dirs["xlmr"])
    load_manifest(artifact_dirs["xlmr"])  # untouched


def test_force_replaces_an_artifact(model_dirs, tmp_path):
    out = tmp_path / "art"
    export_model(str(model_dirs["bert"]), out)
    (out / "stale.txt").write_text("from an older export")
    export_model(str(model_dirs["bert"]), out, force=True, max_length=128)
    assert load_manifest(out).max_length == 128
    assert not (out / "stale.txt").exists()


def test_failed_parity_fails_the_export_and_leaves_nothing(model_dirs, tmp_path):
    out = tmp_path / "art"
    with pytest.raises(ExportError, match="parity check failed"):
        export_model(str(model_dirs["xlmr"]), out, tolerance=1e-12)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no staging folder left behind


def test_unsupported_model_fails_before_writing(tmp_path):
    model_dir = tiny_models.build_causal_lm(tmp_path / "gpt2")
    with pytest.raises(UnsupportedModelError, match="GPT2LMHeadModel"):
        export_model(str(model_dir), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_parity_check_catches_a_graph_that_computes_something_else(artifact_dirs, model_dirs):
    family = CrossEncoderFamily()
    encoder = family.load_encoder(model_dirs["xlmr"])
    scorer = family.load_scorer(model_dirs["xlmr"])
    with torch.no_grad():
        scorer.model.classifier.out_proj.bias += 0.01
    backend = OnnxRuntimeBackend(family, artifact_dirs["xlmr"], {"scorer": "model.onnx"})
    report = check_parity(encoder, ParityCheck(lambda batch: run_torch(scorer, batch), "torch"), backend.run, "ort")
    assert not report.passed
    assert np.isclose(report.max_abs_diff, 0.01, atol=1e-4)


def test_the_reference_runs_once_per_batch_however_many_graph_sets_are_checked():
    calls = []

    def reference(batch):
        calls.append(batch["input_ids"].shape)
        return batch["input_ids"].sum(axis=1).astype(np.float32)

    run = remembered(reference)
    a = {"input_ids": np.array([[1, 2, 3]]), "attention_mask": np.ones((1, 3), dtype=np.int64)}
    same = {name: value.copy() for name, value in a.items()}
    other = {"input_ids": np.array([[1, 2, 4]]), "attention_mask": np.ones((1, 3), dtype=np.int64)}
    np.testing.assert_array_equal(run(a), [6.0])
    np.testing.assert_array_equal(run(same), [6.0])  # equal content, another object: not computed again
    np.testing.assert_array_equal(run(other), [7.0])
    assert len(calls) == 2
    wider = {"input_ids": np.array([[1, 2, 3, 0]]), "attention_mask": np.array([[1, 1, 1, 0]])}  # padded: its own
    run(wider)
    assert len(calls) == 3
