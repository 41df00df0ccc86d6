"""NVIDIA NIM's ranking API (`server/nim.py`): NVIDIA's documented requests, `truncate`, `top_k`, image passages,
the hosted path and /invocations, and hostile bodies answered in NIM's error body."""

from __future__ import annotations

import pytest

from rerankrt.server.schemas import TINY_PNG
from rerankrt.server.shapes import UNKNOWN_FIELDS_HEADER
from tests.fakes import BEST_FIRST, DOCS, LOGITS, LONG, MAX_DOCUMENTS, QUERY, TOKENS

# The request of NVIDIA's docs, "Use the API (OpenAI) for NVIDIA NeMo Retriever Reranking NIM" and "Use Reranking
# NIM" (docs.nvidia.com/nim/nemo-retriever/text-reranking/latest/), copied as published; the pages differ only in
# the model named (and one spells "hense").
POEM = [
    "two roads diverged in a yellow wood, and sorry i could not travel both and be one traveler, long i stood and "
    "looked down one as far as i could to where it bent in the undergrowth;",
    "then took the other, as just as fair, and having perhaps the better claim because it was grassy and wanted "
    "wear, though as for that the passing there had worn them really about the same,",
    "and both that morning equally lay in leaves no step had trodden black. oh, i marked the first for another day! "
    "yet knowing how way leads on to way i doubted if i should ever come back.",
    "i shall be telling this with a sigh somewhere ages and ages hence: two roads diverged in a wood, and i, i took "
    "the one less traveled by, and that has made all the difference.",
]
DOCUMENTED = [
    {"model": model, "query": {"text": "which way should i go?"}, "passages": [{"text": p} for p in POEM],
     "truncate": "END"}
    for model in ("nvidia/llama-nemotron-rerank-1b-v2", "nvidia/llama-3.2-nv-rerankqa-1b-v2",
                  "nvidia/nv-rerankqa-mistral-4b-v3", "nvidia/llama-nemotron-rerank-vl-1b-v2")
]  # fmt: skip
# NVIDIA's API catalog example for the hosted path (posted to /v1/retrieval/nvidia/nv-rerankqa-mistral-4b-v3/reranking)
HOSTED = {
    "model": "nvidia/nv-rerankqa-mistral-4b-v3",
    "query": {"text": "What is the capital of the United States?"},
    "passages": [
        {"text": "Carson City is the capital city of the American state of Nevada."},
        {"text": "The Commonwealth of the Northern Mariana Islands is a group of islands in the Pacific Ocean. Its "
                 "capital is Saipan."},
        {"text": "Washington, D.C. (also known as simply Washington or D.C., and officially as the District of "
                 "Columbia) is the capital of the United States. It is a federal district."},
    ],
}  # fmt: skip
PASSAGES = [{"text": d} for d in DOCS]
BODY = {"model": "m", "query": {"text": QUERY}, "passages": PASSAGES}


def nim_error(response, status: int, field: str) -> str:
    """NIM's error body, `{"error": message}`, its message naming `field`."""
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"}, response.json()
    message = response.json()["error"]
    assert message.startswith(f"{field}: "), message
    return message


def sglang_logits(client, query: str, documents: list[str]) -> dict[int, float]:
    """The same pairs' logits through another API, to compare with."""
    answer = client.post("/v1/rerank", json={"query": query, "documents": documents, "raw_scores": True}).json()
    return {r["index"]: r["score"] for r in answer}


@pytest.mark.parametrize("body", DOCUMENTED, ids=lambda b: b["model"])
def test_nvidias_documented_request(client, body):
    response = client.post("/v1/ranking", json=body)
    assert response.status_code == 200 and UNKNOWN_FIELDS_HEADER not in response.headers
    answer = response.json()
    assert set(answer) == {"rankings", "usage"} and all(set(r) == {"index", "logit"} for r in answer["rankings"])
    assert sorted(r["index"] for r in answer["rankings"]) == [0, 1, 2, 3]
    logits = [r["logit"] for r in answer["rankings"]]
    assert logits == sorted(logits, reverse=True)
    expected = sglang_logits(client, body["query"]["text"], POEM)  # the poem is over MAX_LENGTH: END cut it
    assert {r["index"]: r["logit"] for r in answer["rankings"]} == expected
    assert answer["usage"]["prompt_tokens"] == answer["usage"]["total_tokens"] > 0


def test_the_hosted_path_takes_the_same_body(client):
    hosted = client.post("/v1/retrieval/nvidia/nv-rerankqa-mistral-4b-v3/reranking", json=HOSTED)
    assert hosted.status_code == 200 and hosted.json() == client.post("/v1/ranking", json=HOSTED).json()
    invalid = client.post("/v1/retrieval/nvidia/reranking", json={**HOSTED, "passages": []})
    nim_error(invalid, 400, "passages")


def test_rankings_best_first_with_top_k_and_usage(client):
    answer = client.post("/v1/ranking", json=BODY).json()
    assert answer["rankings"] == [{"index": i, "logit": LOGITS[i]} for i in BEST_FIRST]
    assert answer["usage"] == {"prompt_tokens": TOKENS, "total_tokens": TOKENS}
    top = client.post("/v1/ranking", json={**BODY, "top_k": 2}).json()["rankings"]
    assert [r["index"] for r in top] == BEST_FIRST[:2]


def test_truncate_none_refuses_an_over_long_pair_and_end_cuts_it(client):
    body = {"query": {"text": "panda"}, "passages": [{"text": "the panda"}, {"text": f"panda {LONG}"}]}
    message = nim_error(client.post("/v1/ranking", json={**body, "truncate": "NONE"}), 400, "passages[1]")
    assert "reduce the length" in message and message.endswith('send truncate "END" to cut it')
    cut = client.post("/v1/ranking", json={**body, "truncate": "END"}).json()["rankings"]
    assert {r["index"]: r["logit"] for r in cut} == {0: 0.0, 1: 0.0}  # the end cut, "panda" at the start kept
    assert client.post("/v1/ranking", json=body).json()["rankings"] == cut  # long input is cut unless NONE


@pytest.mark.parametrize(
    "change, status, field",
    [
        ({"query": QUERY}, 400, "query"),  # a string, not NIM's {"text"} object
        ({"query": {}}, 400, "query.text"),
        ({"query": {"text": ""}}, 400, "query.text"),
        ({"query": {"text": 3}}, 400, "query.text"),
        ({"query": {"text": QUERY, "image": TINY_PNG}}, 400, "query.image"),  # NIM's query is text only
        ({"query": None}, 400, "query"),
        ({"passages": []}, 400, "passages"),
        ({"passages": DOCS}, 400, "passages[0]"),  # strings, not {"text"} objects
        ({"passages": {"text": "x"}}, 400, "passages"),
        ({"passages": [{"text": "x"}, {}]}, 400, "passages[1]"),
        ({"passages": [{"text": ""}]}, 400, "passages[0].text"),
        ({"passages": [{"text": ["x"]}]}, 400, "passages[0].text"),
        ({"passages": [{"text": "x", "title": "t"}]}, 400, "passages[0].title"),
        ({"passages": [{"image": "https://example.com/a.png"}]}, 400, "passages[0].image"),
        ({"passages": [{"text": "x"}] * (MAX_DOCUMENTS + 1)}, 413, "passages"),
        ({"truncate": "START"}, 400, "truncate"),
        ({"truncate": "end"}, 400, "truncate"),
        ({"truncate": True}, 400, "truncate"),
        ({"top_k": 0}, 400, "top_k"),
        ({"top_k": "2"}, 400, "top_k"),
        ({"model": 3}, 400, "model"),
    ],
)
def test_hostile_bodies_are_nims_error_naming_the_field(client, change, status, field):
    nim_error(client.post("/v1/ranking", json={**BODY, **change}), status, field)


def test_missing_fields_and_bodies_that_are_no_object(client):
    nim_error(client.post("/v1/ranking", json={"passages": PASSAGES}), 400, "query")
    nim_error(client.post("/v1/ranking", json={"query": {"text": QUERY}}), 400, "passages")
    for body in ([], "x", 1, None):
        nim_error(client.post("/v1/ranking", json=body), 400, "body")
    nim_error(client.post("/v1/ranking", content=b"{", headers={"content-type": "application/json"}), 400, "body")


def test_unknown_fields_are_accepted_and_listed(client):
    response = client.post("/v1/ranking", json={**BODY, "top_n": 2, "frobnicate": 1})
    assert response.status_code == 200 and response.headers[UNKNOWN_FIELDS_HEADER] == "frobnicate, top_n"
    assert len(response.json()["rankings"]) == len(DOCS)


def test_image_passages(client, media_client):
    body = {"query": {"text": QUERY}, "passages": [{"image": TINY_PNG}, {"text": "the panda", "image": TINY_PNG}]}
    nim_error(client.post("/v1/ranking", json=body), 400, "passages[0].image")  # a text-only model
    answer = media_client.post("/v1/ranking", json=body)
    assert answer.status_code == 200 and sorted(r["index"] for r in answer.json()["rankings"]) == [0, 1]


def test_invocations_take_a_nim_body(client):
    answer = client.post("/invocations", json=BODY).json()
    assert answer == client.post("/v1/ranking", json=BODY).json()
    nim_error(client.post("/invocations", json={**BODY, "passages": []}), 400, "passages")
