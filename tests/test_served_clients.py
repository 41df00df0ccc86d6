"""Integration tier: clients against `rerankrt serve` of tiny exported models (subprocesses): the Cohere SDK on
both conventions, vLLM's /tokenize with the model's tokenizer, and SGLang's score API on a Qwen3 yes/no reranker,
whose label probabilities are the model card's softmax."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from transformers import AutoTokenizer

from rerankrt.testing import tiny_models
from rerankrt.testing.reference import qwen3_card_scores
from tests.support import running_server

cohere = pytest.importorskip("cohere")
pytestmark = pytest.mark.integration

QUERY = "what is panda?"
DOCS = ["hi", "The giant panda is a bear species endemic to China.", "pandas eat bamboo"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from rerankrt.export import export_model

    root = tmp_path_factory.mktemp("served")
    built = {"xlmr": tiny_models.build_xlmr(root / "xlmr"), "qwen3": tiny_models.build_qwen3(root / "qwen3")}
    for arch, folder in built.items():
        export_model(str(folder), root / f"{arch}-artifact")
    return {arch: (folder, root / f"{arch}-artifact") for arch, folder in built.items()}


def test_cohere_sdk_and_tokenize_on_a_served_cross_encoder(models):
    folder, artifact = models["xlmr"]
    with running_server(artifact) as base:
        v2 = cohere.ClientV2(api_key="unused", base_url=base).rerank(model="m", query=QUERY, documents=DOCS, top_n=2)
        assert len(v2.results) == 2 and v2.results[0].relevance_score >= v2.results[1].relevance_score
        tokens = httpx.post(f"{base}/tokenize", json={"prompt": QUERY}).json()
        assert tokens["tokens"] == AutoTokenizer.from_pretrained(folder)(QUERY)["input_ids"]
    with running_server(artifact, "--rerank-convention", "results") as base:
        v1 = cohere.Client(api_key="unused", base_url=base).rerank(query=QUERY, documents=DOCS, return_documents=True)
        assert sorted(r.index for r in v1.results) == [0, 1, 2]
        top = {r.index: r.relevance_score for r in v2.results}
        assert {r.index: r.relevance_score for r in v1.results if r.index in top} == pytest.approx(top)


def test_sglang_score_api_gives_the_model_cards_softmax(models):
    folder, artifact = models["qwen3"]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    yes, no = tokenizer.convert_tokens_to_ids("yes"), tokenizer.convert_tokens_to_ids("no")
    expected, _ = qwen3_card_scores(folder, QUERY, DOCS)
    with running_server(artifact) as base:
        body = {"query": QUERY, "items": DOCS, "label_token_ids": [yes, no], "apply_softmax": True}
        scores = np.array(httpx.post(f"{base}/v1/score", json=body, timeout=60).json()["scores"])
        refused = httpx.post(f"{base}/v1/score", json={**body, "label_token_ids": [yes, no + 1]})
    np.testing.assert_allclose(scores[:, 0], expected, atol=1e-4)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-9)
    assert refused.status_code == 400 and "trimmed at export" in refused.json()["message"]
