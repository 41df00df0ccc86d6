"""What every shape shares (`server/shapes.py`): unknown fields accepted and listed in a header, once and
sendable; no field a peer defines is silently ignored."""

from __future__ import annotations

import pytest

from rerankrt.server.shapes import UNKNOWN_FIELDS_HEADER
from tests.fakes import DOCS, QUERY
from tests.support import peer_error


@pytest.mark.parametrize(
    "path, body",
    [
        ("/v1/rerank", {"query": QUERY, "documents": DOCS}),
        ("/rerank", {"query": QUERY, "documents": DOCS}),
        ("/v2/rerank", {"query": QUERY, "documents": DOCS}),
        ("/v1/score", {"text_1": QUERY, "text_2": DOCS}),
        ("/v1/score", {"query": QUERY, "items": DOCS}),
        ("/rerank", {"query": QUERY, "texts": DOCS}),
        ("/tokenize", {"prompt": QUERY}),
    ],
)
def test_unknown_fields_are_accepted_and_listed_once(client, path, body):
    response = client.post(path, json={**body, "frobnicate": 1, "another_new_field": "x"})
    assert response.status_code == 200
    assert response.headers[UNKNOWN_FIELDS_HEADER] == "another_new_field, frobnicate"
    assert UNKNOWN_FIELDS_HEADER not in client.post(path, json=body).headers


def test_hostile_unknown_field_names_cannot_break_the_response(client):
    """Found by the fuzzer: a field named with control or non-ASCII characters made the header unsendable."""
    body = {
        "query": QUERY,
        "texts": DOCS,
        "a\x0cb": [True],
        "x\ny": 1,
        "\U00039d60": 2,
        **{f"f{i}": i for i in range(30)},
    }
    response = client.post("/rerank", json=body)
    assert response.status_code == 200
    listed = response.headers[UNKNOWN_FIELDS_HEADER]
    assert listed.isascii() and listed.isprintable() and listed.startswith("a%0Cb, f0, f1") and listed.endswith(", ...")


# Every field each peer defines, with a value other than its default: a declared field (never listed as unknown),
# answered 200 or a 400 that names it. Their effects are tested in each shape's module.
PEER_FIELDS = {
    "/v1/rerank (results)": ("/v1/rerank", {"query": QUERY, "documents": DOCS}, {
        "model": "m", "top_n": 2, "rank_fields": ["text"], "return_documents": False, "max_chunks_per_doc": 2}),
    "/v2/rerank": ("/v2/rerank", {"query": QUERY, "documents": DOCS}, {
        "model": "m", "top_n": 2, "max_tokens_per_doc": 3, "priority": 1, "relevant_spans": {"mode": "on"},
        "return_documents": False, "raw_scores": True, "max_chunks_per_doc": 2}),
    "/rerank (vLLM)": ("/rerank", {"query": QUERY, "documents": DOCS}, {
        "top_n": 0, "use_activation": False, "activation": False, "softmax": False, "truncate_prompt_tokens": 8,
        "request_id": "r", "user": "u", "priority": 1, "mm_processor_kwargs": {"a": 1}, "max_tokens_per_doc": 2}),
    "/score (vLLM)": ("/score", {"text_1": QUERY, "text_2": DOCS}, {
        "use_activation": False, "activation": False, "softmax": False, "truncate_prompt_tokens": -1,
        "request_id": "r", "user": "u", "priority": 1, "mm_processor_kwargs": {"a": 1}, "model": "m"}),
    "/v1/score (SGLang)": ("/v1/score", {"query": QUERY, "items": DOCS}, {
        "label_token_ids": [1, 2], "apply_softmax": True, "item_first": True, "model": "m"}),
    "/rerank (TEI)": ("/rerank", {"query": QUERY, "texts": DOCS}, {
        "raw_scores": True, "return_text": True, "truncate": False, "truncation_direction": "Left"}),
    "/predict (TEI)": ("/predict", {"inputs": [QUERY, DOCS[0]]}, {
        "raw_scores": True, "truncate": False, "truncation_direction": "Left"}),
    "/v1/ranking (NIM)": ("/v1/ranking", {"query": {"text": QUERY}, "passages": [{"text": d} for d in DOCS]}, {
        "model": "m", "truncate": "NONE", "top_k": 1}),
    "/tokenize": ("/tokenize", {"prompt": QUERY}, {"add_special_tokens": False, "return_token_strs": True,
                                                   "model": "m"}),
    "/detokenize": ("/detokenize", {"tokens": [1, 2]}, {"skip_special_tokens": False, "model": "m"}),
}  # fmt: skip


@pytest.mark.parametrize(
    "name, path, body, field, value",
    [(name, path, body, field, value) for name, (path, body, fields) in PEER_FIELDS.items()
     for field, value in fields.items()],
)  # fmt: skip
def test_no_peer_field_is_silently_ignored(results_client, infinity_client, name, path, body, field, value):
    response = results_client.post(path, json={**body, field: value})
    assert UNKNOWN_FIELDS_HEADER not in response.headers, f"{name}: {field} is not declared"
    if response.status_code != 200:
        peer_error(response, 400, field)
