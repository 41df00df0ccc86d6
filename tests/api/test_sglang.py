"""SGLang's rerank API (`server/sglang.py`, /v1/rerank by default): results best first, top_n, raw scores,
instruct and chunking, content parts."""

from __future__ import annotations

import numpy as np

from rerankrt.runtime import sigmoid
from tests.fakes import BEST_FIRST, DOCS, LOGITS, QUERY
from tests.support import image_part, text_part


def test_sglang_ranks_best_first_and_echoes_documents(any_client):
    response = any_client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS})
    assert response.status_code == 200
    results = response.json()
    assert [r["index"] for r in results] == BEST_FIRST
    assert [set(r) for r in results] == [{"score", "index", "document"}] * len(DOCS)
    assert all(r["document"] == DOCS[r["index"]] for r in results)
    np.testing.assert_allclose([r["score"] for r in results], sigmoid(np.array(LOGITS)[BEST_FIRST]), rtol=0)


def test_sglang_top_n_raw_scores_and_no_documents(client):
    body = {"query": QUERY, "documents": DOCS, "top_n": 2, "raw_scores": True, "return_documents": False}
    assert client.post("/v1/rerank", json=body).json() == [{"score": 2.0, "index": 1}, {"score": 1.0, "index": 2}]
    everything = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS, "top_n": 50}).json()
    assert len(everything) == len(DOCS)
    assert len(client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS, "top_n": 0}).json()) == 4


def test_instruct_and_chunking_reach_the_reranker(client):
    raw = {"query": QUERY, "documents": DOCS, "raw_scores": True}
    instructed = client.post("/v1/rerank", json={**raw, "instruct": "bear"}).json()
    assert instructed[0] == {"score": 3.0, "index": 1, "document": DOCS[1]}  # "bear" joined the query side
    relevant_at_the_end = " ".join(["filler"] * 20 + ["panda"])
    body = {"query": "panda", "documents": [relevant_at_the_end], "raw_scores": True}
    assert client.post("/v1/rerank", json=body).json()[0]["score"] == -1.0  # truncated before "panda"
    chunked = client.post("/v1/rerank", json={**body, "max_chunks_per_doc": 3}).json()
    assert chunked[0]["score"] == 0.0  # its best chunk holds "panda"


def test_sglang_content_parts_with_media(media_client):
    documents = ["panda", [text_part("a panda"), image_part()], [image_part()]]
    results = media_client.post("/v1/rerank", json={"query": "panda", "documents": documents}).json()
    assert [r["index"] for r in results] == [0, 1, 2] and results[1]["score"] == results[0]["score"]
    assert [r["document"] for r in results] == documents  # parts echoed as sent
    image_query = [text_part("panda"), image_part()]
    raw = media_client.post(
        "/v1/rerank", json={"query": image_query, "documents": [[image_part()]], "raw_scores": True}
    )
    assert raw.json()[0]["score"] == 0.0  # the image token matches the query's
