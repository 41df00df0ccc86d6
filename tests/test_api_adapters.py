"""The API adapters (SGLang, Cohere/Jina, vLLM) over the real Reranker with the in-memory model (tests/fakes.py):
the Reranker, its scheduler, its field renaming and the whole app are the real ones."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from fastapi.testclient import TestClient

from rerankrt.runtime import sigmoid
from rerankrt.server import create_app
from rerankrt.server.schemas import TINY_PNG
from tests.fakes import BEST_FIRST, DOCS, LOGITS, LONG, MAX_DOCUMENTS, MAX_LENGTH, QUERY, TOKENS, make_model, settings


@pytest.fixture(scope="module")
def text_client():
    config = settings()
    with TestClient(create_app(config, make_model())) as client:
        yield client


@pytest.fixture(scope="module")
def media_client():
    config = settings()
    with TestClient(create_app(config, make_model(multimodal=True))) as client:
        yield client


@pytest.fixture(params=["text", "multimodal"])
def any_client(request, text_client, media_client):
    return text_client if request.param == "text" else media_client


def text(value: str) -> dict:
    return {"type": "text", "text": value}


def image(url: str = TINY_PNG) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


# --- SGLang: /v1/rerank -------------------------------------------------------------------------


def test_sglang_ranks_best_first_and_echoes_documents(any_client):
    response = any_client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS})
    assert response.status_code == 200
    results = response.json()
    assert [r["index"] for r in results] == BEST_FIRST
    assert [set(r) for r in results] == [{"score", "index", "document"}] * len(DOCS)
    assert all(r["document"] == DOCS[r["index"]] for r in results)
    np.testing.assert_allclose([r["score"] for r in results], sigmoid(np.array(LOGITS)[BEST_FIRST]), rtol=0)


def test_sglang_top_n_raw_scores_and_no_documents(text_client):
    body = {"query": QUERY, "documents": DOCS, "top_n": 2, "raw_scores": True, "return_documents": False}
    assert text_client.post("/v1/rerank", json=body).json() == [{"score": 2.0, "index": 1}, {"score": 1.0, "index": 2}]
    everything = text_client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS, "top_n": 50}).json()
    assert len(everything) == len(DOCS)
    assert len(text_client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS, "top_n": 0}).json()) == 4


def test_instruct_and_chunking_reach_the_engine(text_client):
    raw = {"query": QUERY, "documents": DOCS, "raw_scores": True}
    instructed = text_client.post("/v1/rerank", json={**raw, "instruct": "bear"}).json()
    assert instructed[0] == {"score": 3.0, "index": 1, "document": DOCS[1]}  # "bear" joined the query side
    relevant_at_the_end = " ".join(["filler"] * 20 + ["panda"])
    body = {"query": "panda", "documents": [relevant_at_the_end], "raw_scores": True}
    assert text_client.post("/v1/rerank", json=body).json()[0]["score"] == -1.0  # truncated before "panda"
    chunked = text_client.post("/v1/rerank", json={**body, "max_chunks_per_doc": 3}).json()
    assert chunked[0]["score"] == 0.0  # its best chunk holds "panda"


def test_sglang_content_parts_with_media(media_client):
    documents = ["panda", [text("a panda"), image()], [image()]]
    results = media_client.post("/v1/rerank", json={"query": "panda", "documents": documents}).json()
    assert [r["index"] for r in results] == [0, 1, 2] and results[1]["score"] == results[0]["score"]
    assert [r["document"] for r in results] == documents  # parts echoed as sent
    image_query = [text("panda"), image()]
    raw = media_client.post("/v1/rerank", json={"query": image_query, "documents": [[image()]], "raw_scores": True})
    assert raw.json()[0]["score"] == 0.0  # the image token matches the query's


# --- Cohere / Jina: /rerank, /v2/rerank ---------------------------------------------------------


@pytest.mark.parametrize("path", ["/rerank", "/v2/rerank"])
def test_cohere_shape(text_client, path):
    documents = [DOCS[0], {"text": DOCS[1]}, DOCS[2], DOCS[3]]
    response = text_client.post(path, json={"query": QUERY, "documents": documents}, headers={"X-Request-ID": "c-1"})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"id", "model", "results", "usage", "meta"}
    assert body["meta"] == {"api_version": {"version": "2"}, "billed_units": {"search_units": 1}}
    assert body["id"] == "c-1" and body["model"] == "fake-reranker"
    assert body["usage"] == {"prompt_tokens": TOKENS, "total_tokens": TOKENS}
    assert [r["index"] for r in body["results"]] == BEST_FIRST
    assert [r["relevance_score"] for r in body["results"]] == pytest.approx(sigmoid(np.array(LOGITS)[BEST_FIRST]))
    assert all(r["document"] == {"text": DOCS[r["index"]]} for r in body["results"])


def test_cohere_top_n_and_no_documents(text_client):
    body = text_client.post("/rerank", json={"query": QUERY, "documents": DOCS, "top_n": 2, "return_documents": False})
    assert [set(r) for r in body.json()["results"]] == [{"index", "relevance_score"}] * 2
    assert [r["index"] for r in body.json()["results"]] == BEST_FIRST[:2]


def test_cohere_content_objects(media_client):
    documents = [{"content": [image()]}, "panda", {"content": [text("panda"), image()]}]
    body = {"query": {"content": [text("panda"), image()]}, "documents": documents, "top_n": 2}
    results = media_client.post("/v2/rerank", json=body).json()["results"]
    assert [r["index"] for r in results] == [2, 0]
    assert [r["document"] for r in results] == [documents[2], documents[0]]


# --- vLLM: /v1/score ----------------------------------------------------------------------------


def test_vllm_scores_in_input_order(any_client):
    response = any_client.post("/v1/score", json={"text_1": QUERY, "text_2": DOCS}, headers={"X-Request-ID": "v-1"})
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == "v-1" and body["object"] == "list" and body["model"] == "fake-reranker"
    assert isinstance(body["created"], int)
    assert body["usage"] == {"prompt_tokens": TOKENS, "total_tokens": TOKENS}
    assert [(d["index"], d["object"]) for d in body["data"]] == [(i, "score") for i in range(len(DOCS))]
    assert [d["score"] for d in body["data"]] == pytest.approx(sigmoid(np.array(LOGITS)))


def test_vllm_pairwise(text_client):
    body = {"text_1": ["panda", "bear"], "text_2": ["the panda", "a panda"]}
    data = text_client.post("/v1/score", json=body).json()["data"]
    assert [d["score"] for d in data] == pytest.approx(sigmoid(np.array([0.0, -1.0])))
    same_query = text_client.post("/v1/score", json={"text_1": ["panda", "panda"], "text_2": body["text_2"]}).json()
    assert [d["score"] for d in same_query["data"]] == pytest.approx(sigmoid(np.array([0.0, 0.0])))


def test_vllm_one_content_object_is_one_input_per_part(media_client):
    single = media_client.post("/v1/score", json={"text_1": "panda", "text_2": {"content": [text("panda"), image()]}})
    assert [d["score"] for d in single.json()["data"]] == pytest.approx(sigmoid(np.array([0.0, -1.0])))
    listed = {"text_1": "panda", "text_2": [{"content": [text("panda"), image()]}, "bear"]}
    assert [d["score"] for d in media_client.post("/v1/score", json=listed).json()["data"]] == pytest.approx(
        sigmoid(np.array([0.0, -1.0]))
    )


# --- errors name the client's own fields ---------------------------------------------------------


def refused(response, status: int, param: str) -> dict:
    """The error body, rerankrt's (SGLang's) or vLLM's (the same fields under "error", on its score paths)."""
    assert response.status_code == status, response.text
    body = response.json()
    error = body["error"] if isinstance(body.get("error"), dict) else body
    assert error["param"] == param, error
    assert error["message"].startswith(f"{param}: ") and error["code"] == status
    assert "error" in body or error["object"] == "error"
    return error


@pytest.mark.parametrize(
    "path, body, param",
    [
        ("/v1/rerank", {"query": QUERY, "documents": ["short", LONG]}, "documents[1]"),
        ("/rerank", {"query": QUERY, "documents": ["short", LONG]}, "documents[1]"),
        ("/v2/rerank", {"query": QUERY, "documents": ["short", {"text": LONG}]}, "documents[1]"),
        ("/rerank", {"query": QUERY, "documents": ["short", {"content": [text(LONG)]}]}, "documents[1].content"),
        ("/v1/score", {"text_1": QUERY, "text_2": ["short", LONG]}, "text_2[1]"),
        ("/v1/score", {"text_1": QUERY, "text_2": ["short", {"content": [text(LONG)]}]}, "text_2[1].content"),
        ("/v1/score", {"text_1": QUERY, "text_2": {"content": [text("short"), text(LONG)]}}, "text_2.content[1]"),
        ("/v1/score", {"text_1": ["a", "b"], "text_2": [LONG, "short"]}, "text_2[0]"),
        ("/v1/score", {"text_1": ["a", "b"], "text_2": ["short", LONG]}, "text_2[1]"),
    ],
)
def test_an_over_long_pair_without_truncation_names_the_field(any_client, path, body, param):
    error = refused(any_client.post(path, json={**body, "truncate": False}), 400, param)
    assert f"over max_length {MAX_LENGTH}" in error["message"]
    assert any_client.post(path, json=body).status_code == 200  # truncated by default


@pytest.mark.parametrize(
    "path, body, param",
    [
        ("/v1/rerank", {"query": QUERY, "documents": ["d"] * 6}, "documents"),
        ("/rerank", {"query": QUERY, "documents": ["d"] * 6}, "documents"),
        ("/v1/score", {"text_1": QUERY, "text_2": ["d"] * 6}, "text_2"),
        ("/v1/score", {"text_1": [f"q{i}" for i in range(6)], "text_2": ["d"] * 6}, "text_2"),
    ],
)
def test_too_many_documents_is_a_413_naming_the_list(text_client, path, body, param):
    error = refused(text_client.post(path, json=body), 413, param)
    assert f"over the limit of {MAX_DOCUMENTS}" in error["message"] and error["type"] == "RequestTooLarge"


@pytest.mark.parametrize(
    "path, body, param",
    [
        ("/v1/rerank", {"query": [text(""), text("q")], "documents": ["d"]}, "query[0]"),
        ("/v1/rerank", {"query": "q", "documents": ["d", [text("a"), text("")]]}, "documents[1][1]"),
        ("/rerank", {"query": {"content": [text("")]}, "documents": ["d"]}, "query.content[0]"),
        ("/rerank", {"query": "q", "documents": ["d", {"content": [text("a"), text("")]}]}, "documents[1].content[1]"),
        ("/v1/score", {"text_1": "q", "text_2": ["d", {"content": [text("")]}]}, "text_2[1].content[0]"),
        ("/v1/score", {"text_1": {"content": [text("")]}, "text_2": ["d"]}, "text_1.content[0]"),
        ("/v1/score", {"text_1": "q", "text_2": {"content": [text("a"), text("")]}}, "text_2.content[1]"),
        ("/v1/score", {"text_1": ["q", {"content": [text("")]}], "text_2": ["d", "e"]}, "text_1[1].content[0]"),
        ("/v1/score", {"text_1": [{"content": [text("")]}, "q"], "text_2": ["d", "e"]}, "text_1[0].content[0]"),
    ],
)
def test_encoder_errors_are_renamed_to_the_client_fields(media_client, path, body, param):
    assert "an empty text part" in refused(media_client.post(path, json=body), 400, param)["message"]


@pytest.mark.parametrize(
    "path, body, param",
    [
        ("/v1/rerank", {"query": "q", "documents": ["d", [text("a"), image()]]}, "documents[1][1]"),
        ("/v1/rerank", {"query": [image()], "documents": ["d"]}, "query[0]"),
        ("/rerank", {"query": {"content": [image()]}, "documents": ["d"]}, "query.content[0]"),
        ("/v2/rerank", {"query": "q", "documents": [{"content": [text("a"), image()]}]}, "documents[0].content[1]"),
        ("/v1/score", {"text_1": "q", "text_2": {"content": [text("a"), image()]}}, "text_2.content[1]"),
        ("/v1/score", {"text_1": "q", "text_2": [{"content": [text("a"), image()]}]}, "text_2[0].content[1]"),
        ("/v1/score", {"text_1": ["q", {"content": [image()]}], "text_2": ["d", "e"]}, "text_1[1].content[0]"),
    ],
)
def test_a_text_model_refuses_media_naming_the_part(text_client, path, body, param):
    message = refused(text_client.post(path, json=body), 400, param)["message"]
    assert "this model takes text only; image_url parts need a multimodal reranker" in message


@pytest.mark.parametrize(
    "path, body, param",
    [
        ("/v1/rerank", {"query": "q", "documents": ["d", [image("data:image/png;base64,@@")]]}, "documents[1][0]"),
        ("/rerank", {"query": "q", "documents": [{"content": [image("data:image/png;base64,@@")]}]},
         "documents[0].content[0]"),
        ("/v1/score", {"text_1": "q", "text_2": {"content": [text("a"), image("data:image/png;base64,@@")]}},
         "text_2.content[1]"),
        ("/v1/score", {"text_1": ["q", {"content": [image("data:image/png;base64,@@")]}], "text_2": ["d", "e"]},
         "text_1[1].content[0]"),
    ],
)  # fmt: skip
def test_media_errors_name_the_part(media_client, path, body, param):
    message = refused(media_client.post(path, json=body), 400, f"{param}.image_url.url")["message"]
    assert "not valid base64" in message


@pytest.mark.parametrize(
    "path, body, param",
    [
        ("/v1/rerank", {"query": 3, "documents": DOCS}, "query"),
        ("/v1/rerank", {"query": "", "documents": DOCS}, "query"),
        ("/v1/rerank", {"documents": DOCS}, "query"),
        ("/v1/rerank", {"query": QUERY, "documents": []}, "documents"),
        ("/v1/rerank", {"query": QUERY, "documents": ["ok", 7]}, "documents[1]"),
        ("/v1/rerank", {"query": QUERY, "documents": ["ok", [{"type": "audio_url"}]]}, "documents[1][0]"),
        ("/v1/rerank", {"query": QUERY, "documents": [[{"type": "image_url", "image_url": {}}]]},
         "documents[0][0].image_url.url"),
        ("/v1/rerank", {"query": QUERY, "documents": DOCS, "top_n": -1}, "top_n"),
        ("/v1/rerank", {"query": QUERY, "documents": DOCS, "truncate": "no"}, "truncate"),
        ("/v1/rerank", [QUERY], "body"),
        ("/rerank", {"query": QUERY, "documents": [{"txt": "x"}]}, "documents[0].text"),
        ("/rerank", {"query": {"content": []}, "documents": DOCS}, "query.content"),
        ("/rerank", {"query": QUERY, "documents": [3]}, "documents[0]"),
        ("/v2/rerank", {"query": QUERY, "documents": DOCS, "max_chunks_per_doc": 0}, "max_chunks_per_doc"),
        ("/v1/score", {"text_1": "a"}, "text_2"),
        ("/v1/score", {"text_1": "a", "text_2": [3]}, "text_2[0]"),
        ("/v1/score", {"text_1": "a", "text_2": {"content": [{"type": "video_url", "video_url": {"url": ""}}]}},
         "text_2.content[0].video_url.url"),
        ("/v1/score", {"text_1": [], "text_2": ["c"]}, "text_1"),
        ("/v1/score", {"text_1": ["a"], "text_2": []}, "text_2"),
        ("/v1/score", {"text_1": ["a", "b"], "text_2": ["c", "d", "e"]}, "text_2"),
    ],
)  # fmt: skip
def test_invalid_requests_are_400s_naming_the_field(text_client, path, body, param):
    refused(text_client.post(path, json=body), 400, param)


def test_malformed_json_is_a_400_naming_the_body(text_client):
    response = text_client.post("/v1/score", content=b'{"text_1": ', headers={"content-type": "application/json"})
    assert "invalid JSON" in refused(response, 400, "body")["message"]


# --- operations, lifespan, the request guard ----------------------------------------------------


def test_health_models_metrics_and_openapi():
    config = settings(warmup=True)
    app = create_app(config, make_model())
    assert app.state.reranker.name == "fake-reranker"
    before = TestClient(app).get("/health")  # no `with`: the lifespan (warm-up) has not run
    assert before.status_code == 503 and before.headers["retry-after"]
    with TestClient(app) as client:
        assert client.get("/health").json()["status"] == "ok"
        assert client.get("/v1/models").json() == {
            "object": "list",
            "data": [
                {
                    "id": "fake-reranker", "object": "model", "owned_by": "rerankrt", "family": "text-fake",
                    "backend": "fake", "device": "cpu", "precision": "fp32", "max_length": MAX_LENGTH,
                }
            ],
        }  # fmt: skip
        assert client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS}).status_code == 200
        assert client.post("/v1/score", json={"text_1": 1}).status_code == 400
        metrics = client.get("/metrics")
        spec = client.get("/openapi.json").json()
    assert metrics.headers["content-type"].startswith("text/plain")
    assert f"rerankrt_pairs_total {len(DOCS) + 2}.0" in metrics.text  # the hook sees the warm-up's 2 pairs too
    assert 'rerankrt_requests_total{route="/v1/rerank",status="200"} 1.0' in metrics.text
    assert 'rerankrt_requests_total{route="/v1/score",status="400"} 1.0' in metrics.text
    assert list(spec["paths"]) == [
        "/v1/rerank", "/rerank", "/v1/score", "/score", "/invocations", "/v2/rerank", "/predict", "/tokenize",
        "/detokenize", "/v1/tokenize", "/v1/detokenize", "/health", "/v1/models", "/models", "/ping",
    ]  # fmt: skip
    body = spec["paths"]["/v1/score"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"oneOf": [{"$ref": "#/components/schemas/VLLMScoreRequest"},
                              {"$ref": "#/components/schemas/SGLangScoreRequest"}]}  # fmt: skip
    assert {"RerankRequest", "CohereRerankRequest", "TEIRerankRequest", "ContentDocument"} <= set(
        spec["components"]["schemas"]
    )


def test_a_stalled_backend_is_a_503_after_the_timeout_and_the_server_recovers():
    gate = threading.Event()
    config = settings(request_timeout=0.3, batch_wait_ms=0)
    app = create_app(config, make_model(gate=gate))
    with TestClient(app) as client:
        try:
            late = client.post("/v1/score", json={"text_1": QUERY, "text_2": DOCS})
            assert late.status_code == 503 and late.headers["retry-after"]
            message = late.json()["error"]["message"]  # vLLM's error body
            assert message == "no forward pass finished for 0.3 s (the backend is stuck); retry later"
            assert app.state.scheduler.queued_pairs == 0
        finally:
            gate.set()
        assert client.post("/v1/score", json={"text_1": QUERY, "text_2": DOCS}).status_code == 200
