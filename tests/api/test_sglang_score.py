"""SGLang's score API (`server/sglang_score.py`, /v1/score with `items`): the two label probabilities of a
yes/no family, one logit otherwise."""

from __future__ import annotations

import numpy as np
import pytest

from rerankrt.runtime import sigmoid
from tests.fakes import DOCS, LOGITS, NO, QUERY, TOKENS, YES
from tests.support import peer_error


def test_sglang_score_on_a_yes_no_family_gives_the_two_label_probabilities(yes_no_client):
    body = {"query": QUERY, "items": DOCS, "label_token_ids": [NO, YES], "apply_softmax": True}
    answer = yes_no_client.post("/v1/score", json=body).json()
    p_yes = sigmoid(np.array(LOGITS))
    assert answer["object"] == "scoring" and answer["model"] == "fake-reranker"
    np.testing.assert_allclose(answer["scores"], np.stack([1 - p_yes, p_yes], axis=1))
    assert answer["usage"] == {"prompt_tokens": TOKENS, "completion_tokens": 0, "total_tokens": TOKENS}
    swapped = yes_no_client.post("/v1/score", json={**body, "items": ["panda bear"], "query": "panda",
                                                    "item_first": True}).json()  # fmt: skip
    assert swapped["scores"][0][1] == pytest.approx(float(sigmoid(np.array(0.0))))  # "panda" against "panda bear"
    wrong = yes_no_client.post("/v1/score", json={**body, "label_token_ids": [YES, 7]})
    assert "trimmed at export" in peer_error(wrong, 400, "label_token_ids")
    no_softmax = yes_no_client.post("/v1/score", json={**body, "apply_softmax": False})
    assert "whole vocabulary" in peer_error(no_softmax, 400, "apply_softmax")
    absent = yes_no_client.post("/v1/score", json={"query": QUERY, "items": DOCS})
    assert f"[{YES}, {NO}]" in peer_error(absent, 400, "label_token_ids")
    tokens = yes_no_client.post("/v1/score", json={**body, "query": [1, 2]})
    assert "send the query as text" in peer_error(tokens, 400, "query")


def test_sglang_score_on_a_one_logit_model(client):
    plain = client.post("/v1/score", json={"query": QUERY, "items": DOCS}).json()
    assert plain["scores"] == [[v] for v in LOGITS]
    soft = client.post("/v1/score", json={"query": QUERY, "items": DOCS, "apply_softmax": True}).json()
    np.testing.assert_allclose(soft["scores"], sigmoid(np.array(LOGITS))[:, None])
    labelled = client.post("/v1/score", json={"query": QUERY, "items": DOCS, "label_token_ids": [1, 2]})
    assert "one relevance logit" in peer_error(labelled, 400, "label_token_ids")
