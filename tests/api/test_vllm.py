"""vLLM's score API (`server/vllm.py`, /score and /v1/score): every request form, input order, pairwise scoring,
content objects, truncation and vLLM's error body."""

from __future__ import annotations

import numpy as np
import pytest

from rerankrt.runtime import sigmoid
from tests.fakes import DOCS, LOGITS, LONG, QUERY, TOKENS
from tests.support import image_part, peer_error, text_part


def test_vllm_scores_in_input_order(any_client):
    response = any_client.post("/v1/score", json={"text_1": QUERY, "text_2": DOCS}, headers={"X-Request-ID": "v-1"})
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == "v-1" and body["object"] == "list" and body["model"] == "fake-reranker"
    assert isinstance(body["created"], int)
    assert body["usage"] == {"prompt_tokens": TOKENS, "total_tokens": TOKENS}
    assert [(d["index"], d["object"]) for d in body["data"]] == [(i, "score") for i in range(len(DOCS))]
    assert [d["score"] for d in body["data"]] == pytest.approx(sigmoid(np.array(LOGITS)))


def test_vllm_pairwise(client):
    body = {"text_1": ["panda", "bear"], "text_2": ["the panda", "a panda"]}
    data = client.post("/v1/score", json=body).json()["data"]
    assert [d["score"] for d in data] == pytest.approx(sigmoid(np.array([0.0, -1.0])))
    same_query = client.post("/v1/score", json={"text_1": ["panda", "panda"], "text_2": body["text_2"]}).json()
    assert [d["score"] for d in same_query["data"]] == pytest.approx(sigmoid(np.array([0.0, 0.0])))


def test_vllm_one_content_object_is_one_input_per_part(media_client):
    single = media_client.post(
        "/v1/score", json={"text_1": "panda", "text_2": {"content": [text_part("panda"), image_part()]}}
    )
    assert [d["score"] for d in single.json()["data"]] == pytest.approx(sigmoid(np.array([0.0, -1.0])))
    listed = {"text_1": "panda", "text_2": [{"content": [text_part("panda"), image_part()]}, "bear"]}
    assert [d["score"] for d in media_client.post("/v1/score", json=listed).json()["data"]] == pytest.approx(
        sigmoid(np.array([0.0, -1.0]))
    )


@pytest.mark.parametrize("first, second", [("text_1", "text_2"), ("queries", "documents"), ("queries", "items"),
                                           ("data_1", "data_2")])  # fmt: skip
@pytest.mark.parametrize("path", ["/score", "/v1/score"])
def test_vllm_score_forms(client, path, first, second):
    data = client.post(path, json={first: QUERY, second: DOCS}).json()["data"]
    assert [d["score"] for d in data] == pytest.approx(sigmoid(np.array(LOGITS)))
    raw = client.post(path, json={first: QUERY, second: DOCS, "use_activation": False}).json()["data"]
    assert [d["score"] for d in raw] == LOGITS
    missing = client.post(path, json={second: DOCS})
    assert missing.json()["error"]["type"] == "BadRequestError" and missing.json()["error"]["param"] == first


def test_vllm_score_truncation_and_error_body(client):
    over = client.post("/score", json={"text_1": QUERY, "text_2": [LONG], "truncate": False})
    error = over.json()["error"]
    assert over.status_code == 400 and set(error) == {"message", "type", "param", "code"}
    assert "Please reduce the length of the input" in error["message"] and error["param"] == "text_2[0]"
    smaller = client.post("/score", json={"text_1": QUERY, "text_2": [LONG], "truncate_prompt_tokens": 17})
    assert "Please, select a smaller truncation size." in peer_error(smaller, 400, "truncate_prompt_tokens")
    fits = client.post("/score", json={"text_1": QUERY, "text_2": [LONG], "truncate_prompt_tokens": 8}).json()
    assert fits["usage"]["prompt_tokens"] == 8
    too_short = client.post("/score", json={"text_1": LONG, "text_2": ["a"], "truncate_prompt_tokens": 3})
    assert "select a larger one" in peer_error(too_short, 400, "truncate_prompt_tokens")
