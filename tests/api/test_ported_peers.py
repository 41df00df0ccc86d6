"""HTTP assertions ported from the peers' own test suites, run against rerankrt (the in-memory model of tests/fakes.py;
the assertions are about the API, not about trained weights).

vLLM, tests/entrypoints/pooling/score/test_online_rerank.py at 1a2174563c6da165dc1f932dda69e2e4cbfc33f0 and
test_online_score.py at 21cc78625795b8bd3bcebf50edb613ce7271329b. Left out: the score thresholds and the
comparisons with transformers (they need bge-reranker-base's trained weights), the exact token ids of /tokenize
(bge-reranker-base's tokenizer), the /pooling tests (vLLM's pooling API, not a rerank or score API) and the
embedding model of test_online_score (rerankrt serves rerankers). One deviation: rerankrt truncates over-long
input by default on every API (vLLM refuses it), so the max-model-len tests send `"truncate": false`.

text-embeddings-inference, router/tests/test_http_rerank.rs at 7b9245d8b1ca28ed4c7d82a80632a1b0e5adfbd1 and
test_http_predict.rs at 4d944459023b64461d6aeb1be3b856a359043053 (the snapshot values need trained weights; the
predict test's single-text inputs become [query, document] pairs, as a reranker scores pairs).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient

from rerankrt.server import create_app
from tests.fakes import make_model, settings

MODEL_NAME = "fake-reranker"


class RemoteServer:
    """vLLM's RemoteOpenAIServer.url_for: the root URL, a slash, then the parts (so "/v1/models" gives "//v1")."""

    def __init__(self, client: TestClient):
        self.client = client

    def url_for(self, *parts: str) -> str:
        return "http://testserver/" + "/".join(parts)


@pytest.fixture(scope="module")
def server():
    with TestClient(create_app(settings(), make_model())) as client:
        yield RemoteServer(client)


def post(server, path, **kwargs):
    return server.client.post(server.url_for(path), **kwargs)


# --- vLLM: test_online_rerank.py ----------------------------------------------------------------


def test_basic(server):
    response = server.client.get(server.url_for("/v1/models"))
    assert response.json()["data"][0]["id"] == MODEL_NAME
    response = post(server, "/tokenize", json={"model": MODEL_NAME, "prompt": "This product was excellent"})
    assert all(isinstance(t, int) for t in response.json()["tokens"])


def test_rerank_texts(server):
    query = "What is the capital of France?"
    documents = ["The capital of Brazil is Brasilia.", "The capital of France is Paris."]
    response = post(server, "rerank", json={"model": MODEL_NAME, "query": query, "documents": documents})
    response.raise_for_status()
    rerank = response.json()
    assert rerank["id"] is not None and len(rerank["results"]) == 2
    assert all(set(r) == {"index", "document", "relevance_score"} for r in rerank["results"])


def test_top_n(server):
    documents = ["The capital of Brazil is Brasilia.", "The capital of France is Paris.", "Cross-encoder models"]
    body = {"model": MODEL_NAME, "query": "What is the capital of France?", "documents": documents, "top_n": 2}
    response = post(server, "rerank", json=body)
    response.raise_for_status()
    assert len(response.json()["results"]) == 2


def test_rerank_max_model_len(server):
    query = "What is the capital of France?" * 100
    documents = ["The capital of Brazil is Brasilia.", "The capital of France is Paris."]
    body = {"model": MODEL_NAME, "query": query, "documents": documents, "truncate": False}
    response = post(server, "rerank", json=body)
    assert response.status_code == 400
    assert "Please reduce the length of the input." in response.text


def test_invocations(server):
    request_args = {"model": MODEL_NAME, "query": "What is the capital of France?",
                    "documents": ["The capital of Brazil is Brasilia.", "The capital of France is Paris."]}  # fmt: skip
    rerank_response = post(server, "rerank", json=request_args)
    rerank_response.raise_for_status()
    invocation_response = post(server, "invocations", json=request_args)
    invocation_response.raise_for_status()
    rerank_output, invocation_output = rerank_response.json(), invocation_response.json()
    assert rerank_output.keys() == invocation_output.keys()
    for rerank_result, invocations_result in zip(rerank_output["results"], invocation_output["results"], strict=True):
        assert rerank_result.keys() == invocations_result.keys()
        assert rerank_result["relevance_score"] == pytest.approx(invocations_result["relevance_score"], rel=0.05)


@pytest.mark.parametrize("path", ["rerank", "score"])
def test_use_activation(server, path):
    def get_outputs(use_activation):
        if path == "rerank":
            body = {"query": "What is the capital of France?",
                    "documents": ["The capital of Brazil is Brasilia.", "The capital of France is Paris."]}  # fmt: skip
        else:
            body = {"text_1": "What is the capital of France?", "text_2": "The capital of France is Paris."}
        outputs = post(server, path, json={"model": MODEL_NAME, **body, "use_activation": use_activation}).json()
        key, items = ("relevance_score", "results") if path == "rerank" else ("score", "data")
        return torch.tensor([x[key] for x in outputs[items]])

    default = get_outputs(use_activation=None)
    w_activation = get_outputs(use_activation=True)
    wo_activation = get_outputs(use_activation=False)
    assert torch.allclose(default, w_activation, atol=1e-2), "Default should use activation."
    assert not torch.allclose(w_activation, wo_activation, atol=1e-2), "wo_activation should not use activation."
    assert torch.allclose(F.sigmoid(wo_activation), w_activation, atol=1e-2)


def test_max_tokens_per_doc(server):
    long_doc = "The capital of France is Paris. " * 50
    body = {"model": MODEL_NAME, "query": "What is the capital of France?",
            "documents": [long_doc, "The capital of Brazil is Brasilia."], "max_tokens_per_doc": 10}  # fmt: skip
    response = post(server, "rerank", json=body)
    response.raise_for_status()
    rerank = response.json()
    assert rerank["id"] is not None and len(rerank["results"]) == 2
    assert rerank["usage"]["prompt_tokens"] > 0


def test_max_tokens_per_doc_reduces_tokens(server):
    body = {"model": MODEL_NAME, "query": "What is the capital of France?",
            "documents": ["The capital of France is Paris. " * 20]}  # fmt: skip
    no_limit = post(server, "rerank", json=body)
    no_limit.raise_for_status()
    with_limit = post(server, "rerank", json={**body, "max_tokens_per_doc": 2})
    with_limit.raise_for_status()
    assert with_limit.json()["usage"]["prompt_tokens"] < no_limit.json()["usage"]["prompt_tokens"]


def test_max_tokens_per_doc_validation(server):
    body = {"model": MODEL_NAME, "query": "What is the capital of France?",
            "documents": ["The capital of France is Paris."]}  # fmt: skip
    for value in (0, -5):
        response = post(server, "rerank", json={**body, "max_tokens_per_doc": value})
        assert response.status_code == 400
        assert "max_tokens_per_doc must be a positive integer" in response.text


# --- vLLM: test_online_score.py -----------------------------------------------------------------


@pytest.mark.parametrize(
    "text_1, text_2, pairs",
    [
        ("What is the capital of France?", ["The capital of Brazil is Brasilia.", "Paris."], 2),
        (["What is the capital of the United States?", "What is the capital of France?"],
         ["The capital of Brazil is Brasilia.", "The capital of France is Paris."], 2),
        ("What is the capital of France?", "The capital of France is Paris.", 1),
    ],
)  # fmt: skip
def test_text_forms(server, text_1, text_2, pairs):
    response = post(server, "score", json={"model": MODEL_NAME, "text_1": text_1, "text_2": text_2})
    response.raise_for_status()
    score = response.json()
    assert score["id"] is not None and len(score["data"]) == pairs
    assert [d["index"] for d in score["data"]] == list(range(pairs))


def test_score_max_model_len(server):
    text_1 = "What is the capital of France?" * 20
    text_2 = ["The capital of Brazil is Brasilia.", "The capital of France is Paris."]
    response = post(server, "score", json={"model": MODEL_NAME, "text_1": text_1, "text_2": text_2, "truncate": False})
    assert response.status_code == 400
    assert "Please reduce the length of the input." in response.text
    too_many = {"model": MODEL_NAME, "text_1": text_1, "text_2": text_2, "truncate_prompt_tokens": 101}
    response = post(server, "score", json=too_many)
    assert response.status_code == 400
    assert "Please, select a smaller truncation size." in response.text


def test_score_invocations(server):
    request_args = {"model": MODEL_NAME, "text_1": "What is the capital of France?",
                    "text_2": "The capital of France is Paris."}  # fmt: skip
    score_response = post(server, "score", json=request_args)
    score_response.raise_for_status()
    invocation_response = post(server, "invocations", json=request_args)
    invocation_response.raise_for_status()
    score_output, invocation_output = score_response.json(), invocation_response.json()
    assert score_output.keys() == invocation_output.keys()
    for score_data, invocation_data in zip(score_output["data"], invocation_output["data"], strict=True):
        assert score_data.keys() == invocation_data.keys()
        assert score_data["score"] == pytest.approx(invocation_data["score"], rel=0.05)


def test_error_body(server):
    response = post(server, "score", json={"model": MODEL_NAME, "text_1": "q"})
    assert response.json()["error"]["type"] == "BadRequestError"


# --- text-embeddings-inference: test_http_rerank.rs, test_http_predict.rs ----------------------


def test_tei_rerank(server):
    request = {"query": "test", "texts": ["test", "other", "test"], "return_text": True}
    ranks = server.client.post("/rerank", json=request).json()
    assert [set(r) for r in ranks] == [{"index", "score", "text"}] * 3
    assert ranks[0]["index"] == 2
    assert ranks[1]["index"] == 0
    assert ranks[0]["score"] == ranks[1]["score"]


def test_tei_predict(server):
    single = server.client.post("/predict", json={"inputs": ["test", "test"]}).json()
    batch = server.client.post("/predict", json={"inputs": [["test", "test"]] * 5}).json()
    assert [set(p) for p in single] == [{"score", "label"}]
    for predictions in batch:
        assert predictions == single
