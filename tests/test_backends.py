import logging
import shutil

import numpy as np
import pytest

from rerankrt.errors import BackendUnavailableError
from rerankrt.runtime import load_reranker
from rerankrt.runtime.loader import select_backend
from tests.conftest import ARCHS
from tests.reference import cross_encoder_logits, random_documents, random_text


def fresh_inputs(seed: int) -> tuple[str, list[str]]:
    rng = np.random.default_rng(seed)
    return random_text(rng, 2, 12), random_documents(rng, 19)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_artifact_backends_equal_the_model_card_logits(artifact_dirs, model_dirs, arch, backend):
    reranker = load_reranker(str(artifact_dirs[arch]), backend=backend, max_batch_size=8)
    assert reranker.backend.name == backend
    for seed in (1, 2):
        query, docs = fresh_inputs(seed)
        expected = cross_encoder_logits(model_dirs[arch], query, docs)
        np.testing.assert_allclose(reranker.score(query, docs), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_plain_model_folder_is_served_with_torch(model_dirs, arch):
    reranker = load_reranker(str(model_dirs[arch]))
    assert reranker.backend.name == "torch"
    query, docs = fresh_inputs(3)
    np.testing.assert_allclose(
        reranker.score(query, docs), cross_encoder_logits(model_dirs[arch], query, docs), atol=1e-4, rtol=0
    )


def test_truncated_pairs_equal_the_reference_with_only_second_truncation(artifact_dirs, model_dirs):
    reranker = load_reranker(str(artifact_dirs["xlmr"]), max_length=40)
    docs = ["Paris is the capital of France. " * 30, "hi", "panda " * 100]
    expected = cross_encoder_logits(model_dirs["xlmr"], "what is panda?", docs, max_length=40)
    np.testing.assert_allclose(reranker.score("what is panda?", docs), expected, atol=1e-4, rtol=0)


def test_scores_do_not_depend_on_batch_company(artifact_dirs):
    reranker = load_reranker(str(artifact_dirs["bert"]), max_batch_size=16)
    query, docs = fresh_inputs(4)
    together = reranker.score(query, docs)
    alone = np.array([reranker.score(query, [doc])[0] for doc in docs])
    np.testing.assert_allclose(together, alone, atol=1e-5, rtol=0)


def test_auto_picks_onnxruntime_for_an_artifact_and_logs_why_not_tensorrt(artifact_dirs, caplog):
    with caplog.at_level(logging.INFO, logger="rerankrt"):
        reranker = load_reranker(str(artifact_dirs["xlmr"]))
    assert reranker.backend.name == "onnxruntime"
    assert "backend tensorrt not used" in caplog.text
    assert "backend onnxruntime selected" in caplog.text


def test_onnxruntime_on_a_plain_model_folder_asks_for_an_export(model_dirs):
    with pytest.raises(BackendUnavailableError, match="rerankrt export"):
        load_reranker(str(model_dirs["xlmr"]), backend="onnxruntime")


def test_tensorrt_explicitly_requested_is_an_error_not_a_fallback(artifact_dirs):
    with pytest.raises(BackendUnavailableError, match="TensorRT"):
        load_reranker(str(artifact_dirs["xlmr"]), backend="tensorrt")


def test_torch_backend_on_an_artifact_whose_weights_are_gone(artifact_dirs, model_dirs, tmp_path):
    moved = shutil.copytree(model_dirs["bert"], tmp_path / "bert")
    from rerankrt.export import export_model

    export_model(str(moved), tmp_path / "art")
    shutil.rmtree(moved)
    with pytest.raises(BackendUnavailableError, match="source weights"):
        load_reranker(str(tmp_path / "art"), backend="torch")
    assert load_reranker(str(tmp_path / "art")).backend.name == "onnxruntime"


class Named:
    def __init__(self, name):
        self.name, self.device = name, "cpu"


def failing(message, error=BackendUnavailableError):
    def load():
        raise error(message)

    return load


def test_auto_falls_back_in_order_past_any_load_failure(caplog):
    loaders = {
        "tensorrt": failing("no engine"),
        "onnxruntime": failing("graph is broken", RuntimeError),
        "torch": lambda: Named("torch"),
    }
    with caplog.at_level(logging.INFO, logger="rerankrt"):
        assert select_backend("auto", loaders).name == "torch"
    assert "tensorrt not used: no engine" in caplog.text
    assert "onnxruntime not used: RuntimeError: graph is broken" in caplog.text


def test_auto_prefers_tensorrt_when_it_loads():
    loaders = {name: (lambda n=name: Named(n)) for name in ("tensorrt", "onnxruntime", "torch")}
    assert select_backend("auto", loaders).name == "tensorrt"


def test_no_backend_at_all_lists_every_reason():
    loaders = {name: failing(f"{name} reason") for name in ("tensorrt", "onnxruntime", "torch")}
    with pytest.raises(
        BackendUnavailableError, match="tensorrt: tensorrt reason; onnxruntime: onnxruntime reason; torch"
    ):
        select_backend("auto", loaders)


def test_named_backend_failure_is_not_hidden():
    with pytest.raises(BackendUnavailableError, match="graph"):
        select_backend("onnxruntime", {"onnxruntime": failing("graph")})
