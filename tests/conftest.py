"""Shared fixtures: the tiny models (without weights for the unit tier; built and exported for the integration
tier), the Qwen3-VL scorers, a local media server; and the check that a test building models is marked integration."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may touch the network
# `auto` by the fixed order, so that no test depends on which runtime is faster on the CPU it lands on (the tests of
# choosing by measurement ask for it: tests/test_tuning.py); plan timings, where measured, never under $HOME
os.environ["RERANKRT_TUNE"] = "0"
os.environ["RERANKRT_CACHE_DIR"] = tempfile.mkdtemp(prefix="rerankrt-test-cache-")

from rerankrt.testing import tiny_models  # noqa: E402
from tests.support import serve_media  # noqa: E402

ARCHS = ("xlmr", "bert")  # cross-encoders
QWEN_ARCHS = ("qwen3", "qwen3-untied")  # decoder yes/no rerankers, tied and untied LM head
BUILDERS = {
    "xlmr": tiny_models.build_xlmr,
    "bert": tiny_models.build_bert,
    "qwen3": tiny_models.build_qwen3,
    "qwen3-untied": lambda out, **kw: tiny_models.build_qwen3(out, tied=False, **kw),
}


# The tiers are declared where a test is written: `pytestmark = pytest.mark.integration` in a module whose tests all
# build or export models or start servers, `@pytest.mark.integration` on such a test in a module that mixes tiers.
# These fixtures build or export models: a test that uses one (directly or through another fixture) without the
# mark is an error at collection, so `make test-fast` never builds a model by accident.
MODEL_FIXTURES = frozenset(
    {"model_dirs", "artifact_dirs", "qwen3_vl_dir", "qwen3_vl_artifact", "long_position_artifacts"}
)


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects, so every tier is checked whichever runs
def pytest_collection_modifyitems(items):
    unmarked = [
        item.nodeid
        for item in items
        if MODEL_FIXTURES & set(getattr(item, "fixturenames", ())) and item.get_closest_marker("integration") is None
    ]
    if unmarked:
        raise pytest.UsageError(
            "these tests build or export models but are not marked integration (add @pytest.mark.integration, or "
            "pytestmark = pytest.mark.integration for the module):\n  " + "\n  ".join(unmarked)
        )


@pytest.fixture(scope="session")
def tokenizer_dirs(tmp_path_factory) -> dict[str, Path]:
    """Each tiny model's folder without its weights (config.json, tokenizer, processor files), "qwen3-vl" included:
    enough for family detection and the pair encoders, and no model is built (unit tier)."""
    root = tmp_path_factory.mktemp("tokenizers")
    builders = {**BUILDERS, "qwen3-vl": tiny_models.build_qwen3_vl}
    return {arch: builder(root / arch, weights=False) for arch, builder in builders.items()}


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {arch: builder(root / arch) for arch, builder in BUILDERS.items()}


@pytest.fixture(scope="session")
def artifact_dirs(model_dirs, tmp_path_factory) -> dict[str, Path]:
    from rerankrt.export import export_model

    root = tmp_path_factory.mktemp("artifacts")
    for arch in BUILDERS:
        export_model(str(model_dirs[arch]), root / arch)
    return {arch: root / arch for arch in BUILDERS}


@pytest.fixture(scope="session")
def qwen3_vl_dir(tmp_path_factory) -> Path:
    """The tiny Qwen3-VL reranker (built once; its export takes ~15 s, so it is not in `model_dirs`)."""
    return tiny_models.build_qwen3_vl(tmp_path_factory.mktemp("models") / "qwen3-vl")


@pytest.fixture(scope="session")
def qwen3_vl_artifact(qwen3_vl_dir, tmp_path_factory) -> Path:
    from rerankrt.export import export_model

    out = tmp_path_factory.mktemp("artifacts") / "qwen3-vl"
    export_model(str(qwen3_vl_dir), out)
    return out


@pytest.fixture(scope="module")
def vl_official(qwen3_vl_dir):
    """The tiny Qwen3-VL reranker scored as the official script does (transformers only)."""
    from rerankrt.testing.reference_qwen3_vl import OfficialScorer

    return OfficialScorer(qwen3_vl_dir)


@pytest.fixture(scope="module")
def vl_rerankers(qwen3_vl_dir, qwen3_vl_artifact):
    """The tiny Qwen3-VL reranker on every CPU backend: its artifact on ONNX Runtime and OpenVINO, its weights on
    torch."""
    from rerankrt.runtime import Reranker

    return {
        "onnxruntime": Reranker.load(str(qwen3_vl_artifact), backend="onnxruntime", threads=1),
        "openvino": Reranker.load(str(qwen3_vl_artifact), backend="openvino", threads=1),
        "torch": Reranker.load(str(qwen3_vl_dir), backend="torch", threads=1),
    }


@pytest.fixture(scope="module")
def media_base(request):
    """Base URL of a local HTTP server for the test module's MEDIA_FILES (routes: tests.support.MediaHandler)."""
    with serve_media(request.module.MEDIA_FILES) as url:
        yield url


@pytest.fixture(autouse=True)
def _quiet_logs(caplog):
    caplog.set_level(logging.INFO, logger="rerankrt")


@pytest.fixture
def openvino_off_by(monkeypatch):
    """`shift(rows) -> logit offsets`: OpenVINO's logits on this "machine" move by that much, row by row."""

    from rerankrt.runtime.openvino_backend import OpenVinoGraph

    def install(shift):
        real = OpenVinoGraph.run

        def run(self, feeds, outputs=None):
            values = real(self, feeds, outputs)
            if self.graph_path.name.startswith("model"):  # the scorer graph's logits
                values[0] = values[0] + shift(len(values[0])).reshape(values[0].shape).astype(values[0].dtype)
            return values

        monkeypatch.setattr(OpenVinoGraph, "run", run)

    return install
