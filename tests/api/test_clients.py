"""Real client libraries, unmodified, pointed at a server on 127.0.0.1 with the URL and option that the README's
table gives: the Cohere SDK (v1 and v2 clients; in the dev extra) and LiteLLM's rerank providers, infinity_client
and langchain-nvidia-ai-endpoints' NVIDIARerank (each skipped when not installed: docs/development.md says how to
run them). The clients only need HTTP, so the server is the in-memory model of
tests/fakes.py in an in-process uvicorn; test_served_clients.py runs the Cohere SDK against a
served tiny model.
"""

from __future__ import annotations

import os
import threading
import time

import httpx
import pytest
import uvicorn

from rerankrt.server import create_app
from tests.fakes import BEST_FIRST, DOCS, LOGITS, QUERY, make_model, settings
from tests.support import free_port

cohere = pytest.importorskip("cohere")


class Served:
    """An in-process uvicorn serving the in-memory Reranker with the given ServeSettings overrides."""

    def __init__(self, **options):
        self.port = free_port()
        config = uvicorn.Config(create_app(settings(**options), make_model()), host="127.0.0.1", port=self.port,
                                log_level="warning")  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.base = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.base}/health", timeout=1).status_code == 200:
                    return self.base
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError("the in-process server did not start")

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def default_base():
    with Served() as base:
        yield base


@pytest.fixture(scope="module")
def results_base():
    with Served(rerank_convention="results") as base:
        yield base


@pytest.fixture(scope="module")
def infinity_base():
    with Served(rerank_convention="infinity") as base:
        yield base


# --- the Cohere SDK -----------------------------------------------------------------------------


def test_cohere_v2_client(default_base):
    client = cohere.ClientV2(api_key="unused", base_url=default_base)
    response = client.rerank(model="any", query=QUERY, documents=DOCS, top_n=3, max_tokens_per_doc=64)
    assert [r.index for r in response.results] == BEST_FIRST[:3]
    assert response.results[0].relevance_score > response.results[1].relevance_score
    assert response.meta.billed_units.search_units == 1


def test_cohere_v1_client_with_the_results_convention(results_base):
    client = cohere.Client(api_key="unused", base_url=results_base)
    response = client.rerank(query=QUERY, documents=DOCS, top_n=2, return_documents=True)
    assert [r.index for r in response.results] == BEST_FIRST[:2]
    assert response.results[0].document.text == DOCS[1]
    objects = [{"title": "hi", "text": "there"}, {"title": "panda bear", "text": "what is it"}]
    fields = client.rerank(query=QUERY, documents=objects, rank_fields=["title", "text"], max_chunks_per_doc=2)
    assert fields.results[0].index == 1


def test_cohere_sdk_errors_are_its_bad_request_error(default_base):
    client = cohere.ClientV2(api_key="unused", base_url=default_base)
    with pytest.raises(cohere.errors.BadRequestError) as error:
        client.rerank(model="any", query=QUERY, documents=DOCS, max_tokens_per_doc=0)
    assert error.value.body["param"] == "max_tokens_per_doc"


# --- LiteLLM's rerank providers -----------------------------------------------------------------


@pytest.fixture(scope="module")
def litellm():
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no download of its price list
    return pytest.importorskip("litellm")


@pytest.mark.parametrize(
    "provider, base, path",
    [
        ("cohere", "results_base", ""),
        ("jina_ai", "results_base", ""),
        ("hosted_vllm", "results_base", "/v1"),
        ("hosted_vllm", "default_base", ""),
        ("together_ai", "results_base", "/v1"),
        ("huggingface", "default_base", ""),
        ("infinity", "infinity_base", ""),
    ],
)
def test_litellm_providers(litellm, request, provider, base, path):
    api_base = request.getfixturevalue(base) + path
    response = litellm.rerank(
        model=f"{provider}/any-reranker", query=QUERY, documents=DOCS, top_n=2, api_base=api_base, api_key="unused"
    )
    assert [r["index"] for r in response.results] == BEST_FIRST[:2]


# --- infinity_client (pins httpx < 0.28, so not in the dev extra; run when installed) -----------


@pytest.mark.parametrize("base", ["default_base", "results_base", "infinity_base"])
def test_infinity_client(request, base):
    """Under every convention: its body (`raw_scores`, `return_documents`, `model`) says it is Infinity's."""
    infinity_client = pytest.importorskip("infinity_client")
    from infinity_client.api.default import models, rerank
    from infinity_client.models import HTTPValidationError, RerankInput

    client = infinity_client.Client(base_url=request.getfixturevalue(base))
    result = rerank.sync(client=client, body=RerankInput(query=QUERY, documents=DOCS, return_documents=True, top_n=2))
    assert [(r.index, r.document) for r in result.results] == [(i, DOCS[i]) for i in BEST_FIRST[:2]]
    invalid = rerank.sync(client=client, body=RerankInput(query="", documents=DOCS))
    assert isinstance(invalid, HTTPValidationError) and invalid.detail[0].loc == ["body", "query"]
    assert models.sync(client=client).data[0].id == "fake-reranker"


# --- langchain-nvidia-ai-endpoints (langchain-core and langsmith: not in the dev extra; run when installed) ----


def test_langchain_nvidia_rerank(default_base):
    """NVIDIARerank pointed at a self-hosted NIM (`base_url=.../v1`): it posts {base_url}/ranking; with no model it
    takes the one /v1/models lists."""
    endpoints = pytest.importorskip("langchain_nvidia_ai_endpoints")
    from langchain_core.documents import Document

    documents = [Document(page_content=d) for d in DOCS]
    ranker = endpoints.NVIDIARerank(base_url=f"{default_base}/v1", model="fake-reranker", top_n=2, truncate="NONE")
    ranked = ranker.compress_documents(query=QUERY, documents=documents)
    assert [d.page_content for d in ranked] == [DOCS[i] for i in BEST_FIRST[:2]]
    assert ranked[0].metadata["relevance_score"] == 2.0  # the logit, as NIM's
    with pytest.raises(Exception, match=r"\[400\] passages\[0\]: the pair is"):
        ranker.compress_documents(query=QUERY, documents=[Document(page_content="panda " * 40)])


# --- clients too heavy to install: the requests they send and what they read, copied from their source -------


def test_nim_clients_request(default_base):
    """langchain-nvidia-ai-endpoints, langchain_nvidia_ai_endpoints/reranking.py (NVIDIARerank._prepare_payload,
    _process_response) at langchain-ai/langchain-nvidia@47a96a45a21b7d162dcaf72ae92ebb2b64287278: POST
    {base_url}/ranking {model, query: {text}, passages: [{text}], truncate?}, reads result["rankings"] as
    (index, logit). LiteLLM's `nvidia_nim/`, litellm/llms/nvidia_nim/rerank/transformation.py at
    BerriAI/litellm@029d10098301619c2f8a919d261271dc485745ec: POST {api_base}/v1/retrieval/{model}/reranking with
    the model's "_" as "." in the body and top_n as `top_k`; reads each ranking's "index" and "logit"."""
    passages = [{"text": d} for d in DOCS]
    langchain = httpx.post(
        f"{default_base}/v1/ranking",
        json={"model": "fake-reranker", "query": {"text": QUERY}, "passages": passages, "truncate": "END"},
    ).json()
    assert [(r["index"], r["logit"]) for r in langchain["rankings"]] == [(i, LOGITS[i]) for i in BEST_FIRST]
    litellm = httpx.post(
        f"{default_base}/v1/retrieval/nvidia/llama-3_2-nv-rerankqa-1b-v2/reranking",
        json={
            "model": "nvidia/llama-3.2-nv-rerankqa-1b-v2",
            "query": {"text": QUERY},
            "passages": passages,
            "top_k": 2,
        },
    )
    assert [(r["index"], r["logit"]) for r in litellm.json()["rankings"]] == [(i, LOGITS[i]) for i in BEST_FIRST[:2]]


def test_llama_index_tei_reranker_request(default_base):
    """llama-index-postprocessor-tei-rerank 0.3.0, llama_index/postprocessor/tei_rerank/base.py
    (TextEmbeddingInference._call_api and _postprocess_nodes): POST {base_url}/rerank {query, texts}, reads each
    item's "score" and zips the list with the nodes in order of the response."""
    scores = httpx.post(f"{default_base}/rerank", json={"query": QUERY, "texts": DOCS}).json()
    assert len(scores) == len(DOCS) and all(isinstance(float(s["score"]), float) for s in scores)


@pytest.mark.parametrize(
    "source, path",
    [
        # langchain-community, libs/community/langchain_community/document_compressors/jina_rerank.py at
        # langchain-ai/langchain@6f5573ad960f9a4b15db987ef32749a25e1d0a07: JINA_API_URL set to <base>/v1/rerank
        ("langchain-community JinaRerank.rerank", "/v1/rerank"),
        # llama-index-postprocessor-jinaai-rerank, llama_index/postprocessor/jinaai_rerank/base.py at
        # run-llama/llama_index@bdc56a68298484274d07771bb14868fd48d307f8: base_url=<base>/v1, posts {base_url}/rerank
        ("llama-index JinaRerank._postprocess_nodes", "/v1/rerank"),
    ],
)
def test_jina_clients_request(results_base, source, path):
    """Both post {query, documents, model, top_n}; `"results" not in resp` raises with resp["detail"]; each result's
    "index" and "relevance_score" are read."""
    body = {"query": QUERY, "documents": DOCS, "model": "jina-reranker-v1-base-en", "top_n": 3}
    resp = httpx.post(f"{results_base}{path}", json=body, headers={"Authorization": "Bearer x"}).json()
    assert "results" in resp, source
    assert [(r["index"], type(r["relevance_score"])) for r in resp["results"]] == [(i, float) for i in BEST_FIRST[:3]]
