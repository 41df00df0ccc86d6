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


# What infinity_client's RerankInput(query=..., documents=...).to_dict() sends to POST /rerank: its defaults too
# (infinity_client/models/rerank_input.py, infinity-client 0.0.78).
INFINITY_CLIENT_BODY = {"query": QUERY, "documents": DOCS, "return_documents": False, "raw_scores": False,
                        "model": "default/not-specified"}  # fmt: skip


@pytest.mark.parametrize("convention", ["client", "results_client", "infinity_client"])
def test_infinity_clients_body_is_infinitys_under_every_convention(request, convention):
    client = request.getfixturevalue(convention)
    answer = client.post("/rerank", json={**INFINITY_CLIENT_BODY, "return_documents": True, "top_n": 2}).json()
    assert answer["object"] == "rerank" and answer["results"][0]["document"] == DOCS[1]  # a string, not {"text"}
    assert [r["index"] for r in answer["results"]] == [1, 2]
    invalid = client.post("/rerank", json={**INFINITY_CLIENT_BODY, "query": ""})
    assert invalid.status_code == 422 and invalid.json()["detail"][0]["loc"] == ["body", "query"]
    if convention != "infinity_client":  # a body without all three is still the convention's
        partial = {key: value for key, value in INFINITY_CLIENT_BODY.items() if key != "model"}
        assert "object" not in client.post("/rerank", json={**partial, "raw_scores": True}).json()
        assert isinstance(client.post("/v1/rerank", json=INFINITY_CLIENT_BODY).json(), list) == (convention == "client")


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
