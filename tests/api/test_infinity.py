"""Infinity's API (`server/infinity.py`): its rerank under --rerank-convention infinity, its fields, /models."""

from __future__ import annotations

import pytest

from rerankrt.runtime import sigmoid
from rerankrt.server.shapes import UNKNOWN_FIELDS_HEADER
from tests.fakes import DOCS, QUERY


@pytest.mark.parametrize("path", ["/rerank", "/v1/rerank"])
def test_infinity_convention(infinity_client, path):
    answer = infinity_client.post(path, json={"query": QUERY, "documents": DOCS, "return_documents": True}).json()
    assert answer["object"] == "rerank" and set(answer) >= {"results", "model", "usage", "id", "created"}
    assert answer["results"][0] == {"relevance_score": pytest.approx(float(sigmoid(2.0))), "index": 1,
                                    "document": DOCS[1]}  # fmt: skip
    raw = infinity_client.post(path, json={"query": QUERY, "documents": DOCS, "raw_scores": True, "top_n": 1}).json()
    assert raw["results"] == [{"relevance_score": 2.0, "index": 1, "document": None}]
    invalid = infinity_client.post(path, json={"query": QUERY, "documents": [3]})
    assert invalid.status_code == 422 and invalid.json()["detail"][0]["loc"] == ["body", "documents", 0]
    assert infinity_client.post(path, json={"query": QUERY, "texts": DOCS}).json()[0]["index"] == 1  # TEI still


def test_infinity_fields_are_declared(infinity_client):
    fields = {"return_documents": True, "raw_scores": True, "top_n": 1, "model": "m"}
    for field, value in fields.items():
        response = infinity_client.post("/rerank", json={"query": QUERY, "documents": DOCS, field: value})
        assert response.status_code == 200 and UNKNOWN_FIELDS_HEADER not in response.headers


def test_models_lists(client):
    infinity_models = client.get("/models").json()
    assert infinity_models["object"] == "list" and infinity_models["data"][0]["id"] == "fake-reranker"
    assert infinity_models["data"][0]["capabilities"] == ["rerank"]
    assert client.get("//v1/models").json()["data"][0]["id"] == "fake-reranker"  # a double slash, as URL helpers make
