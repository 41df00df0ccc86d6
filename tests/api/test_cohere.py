"""The {results} shape (`server/cohere.py`): Cohere v1/v2, Jina and vLLM's rerank on /rerank, /v2/rerank and, with
--rerank-convention results, /v1/rerank; their own options and error bodies."""

from __future__ import annotations

import numpy as np
import pytest

from rerankrt.runtime import sigmoid
from tests.fakes import BEST_FIRST, DOCS, LOGITS, LONG, QUERY, TOKENS, client_for
from tests.support import image_part, peer_error, text_part


@pytest.mark.parametrize("path", ["/rerank", "/v2/rerank"])
def test_cohere_shape(client, path):
    documents = [DOCS[0], {"text": DOCS[1]}, DOCS[2], DOCS[3]]
    response = client.post(path, json={"query": QUERY, "documents": documents}, headers={"X-Request-ID": "c-1"})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"id", "model", "results", "usage", "meta"}
    assert body["meta"] == {"api_version": {"version": "2"}, "billed_units": {"search_units": 1}}
    assert body["id"] == "c-1" and body["model"] == "fake-reranker"
    assert body["usage"] == {"prompt_tokens": TOKENS, "total_tokens": TOKENS}
    assert [r["index"] for r in body["results"]] == BEST_FIRST
    assert [r["relevance_score"] for r in body["results"]] == pytest.approx(sigmoid(np.array(LOGITS)[BEST_FIRST]))
    assert all(r["document"] == {"text": DOCS[r["index"]]} for r in body["results"])


def test_cohere_top_n_and_no_documents(client):
    body = client.post("/rerank", json={"query": QUERY, "documents": DOCS, "top_n": 2, "return_documents": False})
    assert [set(r) for r in body.json()["results"]] == [{"index", "relevance_score"}] * 2
    assert [r["index"] for r in body.json()["results"]] == BEST_FIRST[:2]


def test_cohere_content_objects(media_client):
    documents = [{"content": [image_part()]}, "panda", {"content": [text_part("panda"), image_part()]}]
    body = {"query": {"content": [text_part("panda"), image_part()]}, "documents": documents, "top_n": 2}
    results = media_client.post("/v2/rerank", json=body).json()["results"]
    assert [r["index"] for r in results] == [2, 0]
    assert [r["document"] for r in results] == [documents[2], documents[0]]


def test_v1_rerank_is_sglangs_list_by_default_and_the_results_object_with_the_option(client, results_client):
    body = {"query": QUERY, "documents": DOCS}
    assert isinstance(client.post("/v1/rerank", json=body).json(), list)
    answer = results_client.post("/v1/rerank", json=body).json()
    assert [r["index"] for r in answer["results"]] == BEST_FIRST
    assert answer["meta"]["api_version"] == {"version": "1"}
    assert answer["usage"] == {"prompt_tokens": TOKENS, "total_tokens": TOKENS}


def test_cohere_v1_rank_fields_score_the_named_fields_and_return_the_objects(results_client):
    documents = [{"title": "hi", "body": "there", "id": 1}, {"title": "panda", "body": "is what", "id": 2}]
    body = {"query": QUERY, "documents": documents, "rank_fields": ["title", "body"], "raw_scores": True}
    results = results_client.post("/v1/rerank", json=body).json()["results"]
    # "title: panda\nbody: is what": panda, is, what match the query (title:, body: do not) -> 3 - 1
    assert results[0] == {"index": 1, "relevance_score": 2.0, "document": documents[1]}
    one = results_client.post("/v1/rerank", json={**body, "rank_fields": ["title"]}).json()["results"]
    assert one[0]["relevance_score"] == 0.0  # "panda" alone
    missing = results_client.post("/v1/rerank", json={**body, "rank_fields": ["author"]})
    assert "no field 'author'" in peer_error(missing, 400, "documents[0].author")
    no_text = results_client.post("/v1/rerank", json={"query": QUERY, "documents": [{"title": "x"}]})
    assert "give rank_fields" in peer_error(no_text, 400, "documents[0].text")


def test_cohere_v2_max_tokens_per_doc_cuts_each_document(client):
    body = {"query": "panda", "documents": ["filler panda", "panda filler"], "raw_scores": True}
    whole = client.post("/v2/rerank", json=body).json()
    cut = client.post("/v2/rerank", json={**body, "max_tokens_per_doc": 1}).json()
    assert sorted(r["relevance_score"] for r in whole["results"]) == [0.0, 0.0]
    assert {r["index"]: r["relevance_score"] for r in cut["results"]} == {0: -1.0, 1: 0.0}
    assert cut["usage"]["prompt_tokens"] == whole["usage"]["prompt_tokens"] - 2
    assert cut["results"][0]["document"] == {"text": "panda filler"}  # documents come back whole
    for value in (0, -5):
        refused = client.post("/v2/rerank", json={**body, "max_tokens_per_doc": value})
        assert "max_tokens_per_doc must be a positive integer" in peer_error(refused, 400, "max_tokens_per_doc")


@pytest.mark.parametrize(
    "field, value, why",
    [
        ("priority", 1, "arrival order"),
        ("relevant_spans", {"mode": "on"}, "does not extract spans"),
        ("mm_processor_kwargs", {"max_pixels": 4}, "processor config"),
        ("truncate_prompt_tokens", 17, "Please, select a smaller truncation size."),
        ("truncate_prompt_tokens", 0, "positive token count"),
    ],
)
def test_peer_fields_that_cannot_be_honoured_are_400s_saying_why(client, field, value, why):
    for path in ("/rerank", "/v2/rerank"):
        assert why in peer_error(client.post(path, json={"query": QUERY, "documents": DOCS, field: value}), 400, field)


def test_vllm_rerank_options(client):
    body = {"query": QUERY, "documents": DOCS, "top_n": 0}
    default = client.post("/rerank", json=body).json()
    assert len(default["results"]) == len(DOCS)  # vLLM: top_n 0 is all
    for off in ({"use_activation": False}, {"activation": False}, {"softmax": False}, {"raw_scores": True}):
        raw = client.post("/rerank", json={**body, **off}).json()["results"]
        assert [r["relevance_score"] for r in raw] == sorted(LOGITS, reverse=True)
    named = client.post("/rerank", json={**body, "request_id": "mine-1", "user": "u", "priority": 0}).json()
    assert named["id"] == "mine-1"
    cut = client.post("/rerank", json={"query": "panda", "documents": [LONG + " panda"], "truncate_prompt_tokens": 4})
    assert cut.json()["usage"]["prompt_tokens"] == 4
    spans_off = client.post("/v2/rerank", json={**body, "relevant_spans": {"mode": "off"}})
    assert spans_off.status_code == 200


def test_vllm_rerank_documents_as_one_content_object():
    with client_for() as client:
        body = {"query": "panda", "documents": {"content": [{"type": "text", "text": "the panda"},
                                                            {"type": "text", "text": "hi"}]}}  # fmt: skip
        results = client.post("/rerank", json=body).json()["results"]
    assert [r["index"] for r in results] == [0, 1]
    assert results[0]["document"] == {"content": [{"type": "text", "text": "the panda"}]}


def test_the_results_paths_answer_errors_for_cohere_and_vllm_clients_alike(client):
    body = client.post("/v2/rerank", json={"query": QUERY, "documents": [3]}).json()
    assert body["message"] == body["error"]["message"] and body["error"]["param"] == "documents[0]"  # Cohere, vLLM
    assert body["object"] == "error" and body["code"] == 400
