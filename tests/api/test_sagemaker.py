"""SageMaker's /ping and /invocations (`server/sagemaker.py`): /invocations takes any shape's body."""

from __future__ import annotations

from tests.fakes import BEST_FIRST, DOCS, NO, QUERY, YES


def test_sagemaker_ping_and_invocations(client, yes_no_client):
    assert client.get("/ping").status_code == 200 and client.post("/ping").status_code == 200
    score = client.post("/invocations", json={"text_1": QUERY, "text_2": DOCS}).json()
    assert score == {**client.post("/score", json={"text_1": QUERY, "text_2": DOCS}).json(),
                     "id": score["id"], "created": score["created"]}  # fmt: skip
    rerank = client.post("/invocations", json={"query": QUERY, "documents": DOCS}).json()
    assert [r["index"] for r in rerank["results"]] == BEST_FIRST
    assert client.post("/invocations", json={"query": QUERY, "texts": DOCS}).json()[0]["index"] == 1
    sglang = {"query": QUERY, "items": DOCS, "label_token_ids": [YES, NO], "apply_softmax": True}
    assert len(yes_no_client.post("/invocations", json=sglang).json()["scores"]) == len(DOCS)
    assert client.post("/invocations", json={"what": 1}).json()["error"]["param"] == "body"
