"""Errors name the client's own fields, on every shape: over-long pairs, too many documents, encoder and media
errors renamed to the request's fields, invalid requests, malformed JSON."""

from __future__ import annotations

import pytest

from tests.fakes import DOCS, LONG, MAX_DOCUMENTS, MAX_LENGTH, QUERY
from tests.support import api_error, image_part, text_part


@pytest.mark.parametrize(
    "path, body, param",
    [
        ("/v1/rerank", {"query": QUERY, "documents": ["short", LONG]}, "documents[1]"),
        ("/rerank", {"query": QUERY, "documents": ["short", LONG]}, "documents[1]"),
        ("/v2/rerank", {"query": QUERY, "documents": ["short", {"text": LONG}]}, "documents[1]"),
        ("/rerank", {"query": QUERY, "documents": ["short", {"content": [text_part(LONG)]}]}, "documents[1].content"),
        ("/v1/score", {"text_1": QUERY, "text_2": ["short", LONG]}, "text_2[1]"),
        ("/v1/score", {"text_1": QUERY, "text_2": ["short", {"content": [text_part(LONG)]}]}, "text_2[1].content"),
        (
            "/v1/score",
            {"text_1": QUERY, "text_2": {"content": [text_part("short"), text_part(LONG)]}},
            "text_2.content[1]",
        ),
        ("/v1/score", {"text_1": ["a", "b"], "text_2": [LONG, "short"]}, "text_2[0]"),
        ("/v1/score", {"text_1": ["a", "b"], "text_2": ["short", LONG]}, "text_2[1]"),
    ],
)
def test_an_over_long_pair_without_truncation_names_the_field(any_client, path, body, param):
    error = api_error(any_client.post(path, json={**body, "truncate": False}), 400, param)
    assert f"over max_length {MAX_LENGTH}" in error["message"]
    assert any_client.post(path, json=body).status_code == 200  # truncated by default


@pytest.mark.parametrize(
    "path, body, param",
    [
        ("/v1/rerank", {"query": QUERY, "documents": ["d"] * 6}, "documents"),
        ("/rerank", {"query": QUERY, "documents": ["d"] * 6}, "documents"),
        ("/v1/score", {"text_1": QUERY, "text_2": ["d"] * 6}, "text_2"),
        ("/v1/score", {"text_1": [f"q{i}" for i in range(6)], "text_2": ["d"] * 6}, "text_2"),
    ],
)
def test_too_many_documents_is_a_413_naming_the_list(client, path, body, param):
    error = api_error(client.post(path, json=body), 413, param)
    assert f"over the limit of {MAX_DOCUMENTS}" in error["message"] and error["type"] == "RequestTooLarge"


@pytest.mark.parametrize(
    "path, body, param",
    [
        ("/v1/rerank", {"query": [text_part(""), text_part("q")], "documents": ["d"]}, "query[0]"),
        ("/v1/rerank", {"query": "q", "documents": ["d", [text_part("a"), text_part("")]]}, "documents[1][1]"),
        ("/rerank", {"query": {"content": [text_part("")]}, "documents": ["d"]}, "query.content[0]"),
        (
            "/rerank",
            {"query": "q", "documents": ["d", {"content": [text_part("a"), text_part("")]}]},
            "documents[1].content[1]",
        ),
        ("/v1/score", {"text_1": "q", "text_2": ["d", {"content": [text_part("")]}]}, "text_2[1].content[0]"),
        ("/v1/score", {"text_1": {"content": [text_part("")]}, "text_2": ["d"]}, "text_1.content[0]"),
        ("/v1/score", {"text_1": "q", "text_2": {"content": [text_part("a"), text_part("")]}}, "text_2.content[1]"),
        ("/v1/score", {"text_1": ["q", {"content": [text_part("")]}], "text_2": ["d", "e"]}, "text_1[1].content[0]"),
        ("/v1/score", {"text_1": [{"content": [text_part("")]}, "q"], "text_2": ["d", "e"]}, "text_1[0].content[0]"),
    ],
)
def test_encoder_errors_are_renamed_to_the_client_fields(media_client, path, body, param):
    assert "an empty text part" in api_error(media_client.post(path, json=body), 400, param)["message"]


@pytest.mark.parametrize(
    "path, body, param",
    [
        ("/v1/rerank", {"query": "q", "documents": ["d", [text_part("a"), image_part()]]}, "documents[1][1]"),
        ("/v1/rerank", {"query": [image_part()], "documents": ["d"]}, "query[0]"),
        ("/rerank", {"query": {"content": [image_part()]}, "documents": ["d"]}, "query.content[0]"),
        (
            "/v2/rerank",
            {"query": "q", "documents": [{"content": [text_part("a"), image_part()]}]},
            "documents[0].content[1]",
        ),
        ("/v1/score", {"text_1": "q", "text_2": {"content": [text_part("a"), image_part()]}}, "text_2.content[1]"),
        ("/v1/score", {"text_1": "q", "text_2": [{"content": [text_part("a"), image_part()]}]}, "text_2[0].content[1]"),
        ("/v1/score", {"text_1": ["q", {"content": [image_part()]}], "text_2": ["d", "e"]}, "text_1[1].content[0]"),
    ],
)
def test_a_text_model_refuses_media_naming_the_part(client, path, body, param):
    message = api_error(client.post(path, json=body), 400, param)["message"]
    assert "this model takes text only; image_url parts need a multimodal reranker" in message


@pytest.mark.parametrize(
    "path, body, param",
    [
        ("/v1/rerank", {"query": "q", "documents": ["d", [image_part("data:image/png;base64,@@")]]}, "documents[1][0]"),
        ("/rerank", {"query": "q", "documents": [{"content": [image_part("data:image/png;base64,@@")]}]},
         "documents[0].content[0]"),
        ("/v1/score", {"text_1": "q", "text_2": {"content": [text_part("a"), image_part("data:image/png;base64,@@")]}},
         "text_2.content[1]"),
        ("/v1/score", {"text_1": ["q", {"content": [image_part("data:image/png;base64,@@")]}], "text_2": ["d", "e"]},
         "text_1[1].content[0]"),
    ],
)  # fmt: skip
def test_media_errors_name_the_part(media_client, path, body, param):
    message = api_error(media_client.post(path, json=body), 400, f"{param}.image_url.url")["message"]
    assert "not valid base64" in message


@pytest.mark.parametrize(
    "path, body, param",
    [
        ("/v1/rerank", {"query": 3, "documents": DOCS}, "query"),
        ("/v1/rerank", {"query": "", "documents": DOCS}, "query"),
        ("/v1/rerank", {"documents": DOCS}, "query"),
        ("/v1/rerank", {"query": QUERY, "documents": []}, "documents"),
        ("/v1/rerank", {"query": QUERY, "documents": ["ok", 7]}, "documents[1]"),
        ("/v1/rerank", {"query": QUERY, "documents": ["ok", [{"type": "audio_url"}]]}, "documents[1][0]"),
        ("/v1/rerank", {"query": QUERY, "documents": [[{"type": "image_url", "image_url": {}}]]},
         "documents[0][0].image_url.url"),
        ("/v1/rerank", {"query": QUERY, "documents": DOCS, "top_n": -1}, "top_n"),
        ("/v1/rerank", {"query": QUERY, "documents": DOCS, "truncate": "no"}, "truncate"),
        ("/v1/rerank", [QUERY], "body"),
        ("/rerank", {"query": QUERY, "documents": [{"txt": "x"}]}, "documents[0].text"),
        ("/rerank", {"query": {"content": []}, "documents": DOCS}, "query.content"),
        ("/rerank", {"query": QUERY, "documents": [3]}, "documents[0]"),
        ("/v2/rerank", {"query": QUERY, "documents": DOCS, "max_chunks_per_doc": 0}, "max_chunks_per_doc"),
        ("/v1/score", {"text_1": "a"}, "text_2"),
        ("/v1/score", {"text_1": "a", "text_2": [3]}, "text_2[0]"),
        ("/v1/score", {"text_1": "a", "text_2": {"content": [{"type": "video_url", "video_url": {"url": ""}}]}},
         "text_2.content[0].video_url.url"),
        ("/v1/score", {"text_1": [], "text_2": ["c"]}, "text_1"),
        ("/v1/score", {"text_1": ["a"], "text_2": []}, "text_2"),
        ("/v1/score", {"text_1": ["a", "b"], "text_2": ["c", "d", "e"]}, "text_2"),
    ],
)  # fmt: skip
def test_invalid_requests_are_400s_naming_the_field(client, path, body, param):
    api_error(client.post(path, json=body), 400, param)


def test_malformed_json_is_a_400_naming_the_body(client):
    response = client.post("/v1/score", content=b'{"text_1": ', headers={"content-type": "application/json"})
    assert "invalid JSON" in api_error(response, 400, "body")["message"]
