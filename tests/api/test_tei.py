"""text-embeddings-inference's API (`server/tei.py`): /rerank by `texts`, truncation direction, /predict."""

from __future__ import annotations

import numpy as np
import pytest

from rerankrt.runtime import sigmoid
from tests.fakes import BEST_FIRST, DOCS, LOGITS, QUERY


@pytest.mark.parametrize("path", ["/rerank", "/v1/rerank"])
def test_tei_rerank_by_texts(client, path):
    answer = client.post(path, json={"query": QUERY, "texts": DOCS}).json()
    assert [r["index"] for r in answer] == BEST_FIRST and set(answer[0]) == {"index", "score"}
    assert [r["score"] for r in answer] == pytest.approx(sigmoid(np.array(LOGITS)[BEST_FIRST]))
    texts = client.post(path, json={"query": QUERY, "texts": DOCS, "return_text": True, "raw_scores": True}).json()
    assert texts[0] == {"index": 1, "score": 2.0, "text": DOCS[1]}


def test_tei_truncation_direction_and_error_body(client):
    body = {"query": "panda", "texts": [" ".join(["filler"] * 20 + ["panda"])], "raw_scores": True}
    assert client.post("/rerank", json=body).json()[0]["score"] == -1.0  # cut on the right: "panda" lost
    assert client.post("/rerank", json={**body, "truncation_direction": "Left"}).json()[0]["score"] == 0.0
    over = client.post("/rerank", json={**body, "truncate": False})
    assert over.status_code == 400 and over.json()["error_type"] == "Validation"
    assert over.json()["error"].startswith("texts[0]: the pair is")


def test_tei_predict_pairs(client):
    one = client.post("/predict", json={"inputs": ["panda", "the panda"], "raw_scores": True}).json()
    assert one == [{"score": 0.0, "label": "LABEL_0"}]
    batch = client.post("/predict", json={"inputs": [["panda", "the panda"], ["what", "hi"]]}).json()
    assert batch == [[{"score": 0.5, "label": "LABEL_0"}], [{"score": pytest.approx(float(sigmoid(-1.0))),
                                                              "label": "LABEL_0"}]]  # fmt: skip
    single = client.post("/predict", json={"inputs": "panda"})
    assert single.status_code == 400 and "pairs" in single.json()["error"]
