"""Each peer's API on its own path (Cohere v1/v2, Jina, vLLM, TEI, Infinity, SGLang's score API, tokenize,
SageMaker), the paths they share, and no silent ignores: unit tier, over the in-memory Reranker of
test_api_adapters (a word-overlap model; logits of DOCS against QUERY are LOGITS)."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from rerankrt.runtime import sigmoid
from rerankrt.server import create_app
from rerankrt.server.shapes import UNKNOWN_FIELDS_HEADER
from tests.fakes import BEST_FIRST, DOCS, LOGITS, LONG, QUERY, TOKENS, make_model, settings

YES, NO = 5, 6  # the fake yes/no family's label token ids


def client_for(**options) -> TestClient:
    labels = options.pop("labels", None)
    return TestClient(create_app(settings(**options), make_model(labels=labels)))


@pytest.fixture(scope="module")
def client():
    with client_for() as client:
        yield client


@pytest.fixture(scope="module")
def results_client():
    with client_for(rerank_convention="results") as client:
        yield client


@pytest.fixture(scope="module")
def infinity_client():
    with client_for(rerank_convention="infinity") as client:
        yield client


@pytest.fixture(scope="module")
def yes_no_client():
    with client_for(labels=(YES, NO)) as client:
        yield client


def error_of(response, status: int, param: str) -> str:
    """The message of an error in any peer's body, after checking its status and field."""
    assert response.status_code == status, response.text
    body = response.json()
    if "detail" in body:  # Infinity's 422
        assert body["detail"][0]["loc"][1:2] == [param.split("[")[0].split(".")[0]], body
        return body["detail"][0]["msg"]
    if isinstance(body.get("error"), str):  # TEI's
        return body["error"]
    error = body["error"] if isinstance(body.get("error"), dict) else body
    assert error["param"] == param, error
    return error["message"]


# --- the {results} shape: Cohere v1/v2, Jina, vLLM ----------------------------------------------


def test_v1_rerank_is_sglangs_list_by_default_and_the_results_object_with_the_option(client, results_client):
    body = {"query": QUERY, "documents": DOCS}
    assert isinstance(client.post("/v1/rerank", json=body).json(), list)
    answer = results_client.post("/v1/rerank", json=body).json()
    assert [r["index"] for r in answer["results"]] == BEST_FIRST
    assert answer["meta"]["api_version"] == {"version": "1"}
    assert answer["usage"] == {"prompt_tokens": TOKENS, "total_tokens": TOKENS}


def test_cohere_v1_rank_fields_score_the_named_fields_and_return_the_objects(results_client):
    documents = [{"title": "hi", "body": "there", "id": 1}, {"title": "panda", "body": "is what", "id": 2}]
    body = {"query": QUERY, "documents": documents, "rank_fields": ["title", "body"], "raw_scores": True}
    results = results_client.post("/v1/rerank", json=body).json()["results"]
    # "title: panda\nbody: is what": panda, is, what match the query (title:, body: do not) -> 3 - 1
    assert results[0] == {"index": 1, "relevance_score": 2.0, "document": documents[1]}
    one = results_client.post("/v1/rerank", json={**body, "rank_fields": ["title"]}).json()["results"]
    assert one[0]["relevance_score"] == 0.0  # "panda" alone
    missing = results_client.post("/v1/rerank", json={**body, "rank_fields": ["author"]})
    assert "no field 'author'" in error_of(missing, 400, "documents[0].author")
    no_text = results_client.post("/v1/rerank", json={"query": QUERY, "documents": [{"title": "x"}]})
    assert "give rank_fields" in error_of(no_text, 400, "documents[0].text")


def test_cohere_v2_max_tokens_per_doc_cuts_each_document(client):
    body = {"query": "panda", "documents": ["filler panda", "panda filler"], "raw_scores": True}
    whole = client.post("/v2/rerank", json=body).json()
    cut = client.post("/v2/rerank", json={**body, "max_tokens_per_doc": 1}).json()
    assert sorted(r["relevance_score"] for r in whole["results"]) == [0.0, 0.0]
    assert {r["index"]: r["relevance_score"] for r in cut["results"]} == {0: -1.0, 1: 0.0}
    assert cut["usage"]["prompt_tokens"] == whole["usage"]["prompt_tokens"] - 2
    assert cut["results"][0]["document"] == {"text": "panda filler"}  # documents come back whole
    for value in (0, -5):
        refused = client.post("/v2/rerank", json={**body, "max_tokens_per_doc": value})
        assert "max_tokens_per_doc must be a positive integer" in error_of(refused, 400, "max_tokens_per_doc")


@pytest.mark.parametrize(
    "field, value, why",
    [
        ("priority", 1, "arrival order"),
        ("relevant_spans", {"mode": "on"}, "does not extract spans"),
        ("mm_processor_kwargs", {"max_pixels": 4}, "processor config"),
        ("truncate_prompt_tokens", 17, "Please, select a smaller truncation size."),
        ("truncate_prompt_tokens", 0, "positive token count"),
    ],
)
def test_peer_fields_that_cannot_be_honoured_are_400s_saying_why(client, field, value, why):
    for path in ("/rerank", "/v2/rerank"):
        assert why in error_of(client.post(path, json={"query": QUERY, "documents": DOCS, field: value}), 400, field)


def test_vllm_rerank_options(client):
    body = {"query": QUERY, "documents": DOCS, "top_n": 0}
    default = client.post("/rerank", json=body).json()
    assert len(default["results"]) == len(DOCS)  # vLLM: top_n 0 is all
    for off in ({"use_activation": False}, {"activation": False}, {"softmax": False}, {"raw_scores": True}):
        raw = client.post("/rerank", json={**body, **off}).json()["results"]
        assert [r["relevance_score"] for r in raw] == sorted(LOGITS, reverse=True)
    named = client.post("/rerank", json={**body, "request_id": "mine-1", "user": "u", "priority": 0}).json()
    assert named["id"] == "mine-1"
    cut = client.post("/rerank", json={"query": "panda", "documents": [LONG + " panda"], "truncate_prompt_tokens": 4})
    assert cut.json()["usage"]["prompt_tokens"] == 4
    spans_off = client.post("/v2/rerank", json={**body, "relevant_spans": {"mode": "off"}})
    assert spans_off.status_code == 200


def test_vllm_rerank_documents_as_one_content_object():
    with client_for() as client:
        body = {"query": "panda", "documents": {"content": [{"type": "text", "text": "the panda"},
                                                            {"type": "text", "text": "hi"}]}}  # fmt: skip
        results = client.post("/rerank", json=body).json()["results"]
    assert [r["index"] for r in results] == [0, 1]
    assert results[0]["document"] == {"content": [{"type": "text", "text": "the panda"}]}


# --- vLLM's score forms -------------------------------------------------------------------------


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
    assert "Please, select a smaller truncation size." in error_of(smaller, 400, "truncate_prompt_tokens")
    fits = client.post("/score", json={"text_1": QUERY, "text_2": [LONG], "truncate_prompt_tokens": 8}).json()
    assert fits["usage"]["prompt_tokens"] == 8
    too_short = client.post("/score", json={"text_1": LONG, "text_2": ["a"], "truncate_prompt_tokens": 3})
    assert "select a larger one" in error_of(too_short, 400, "truncate_prompt_tokens")


# --- SGLang's score API on /v1/score ------------------------------------------------------------


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
    assert "trimmed at export" in error_of(wrong, 400, "label_token_ids")
    no_softmax = yes_no_client.post("/v1/score", json={**body, "apply_softmax": False})
    assert "whole vocabulary" in error_of(no_softmax, 400, "apply_softmax")
    absent = yes_no_client.post("/v1/score", json={"query": QUERY, "items": DOCS})
    assert f"[{YES}, {NO}]" in error_of(absent, 400, "label_token_ids")
    tokens = yes_no_client.post("/v1/score", json={**body, "query": [1, 2]})
    assert "send the query as text" in error_of(tokens, 400, "query")


def test_sglang_score_on_a_one_logit_model(client):
    plain = client.post("/v1/score", json={"query": QUERY, "items": DOCS}).json()
    assert plain["scores"] == [[v] for v in LOGITS]
    soft = client.post("/v1/score", json={"query": QUERY, "items": DOCS, "apply_softmax": True}).json()
    np.testing.assert_allclose(soft["scores"], sigmoid(np.array(LOGITS))[:, None])
    labelled = client.post("/v1/score", json={"query": QUERY, "items": DOCS, "label_token_ids": [1, 2]})
    assert "one relevance logit" in error_of(labelled, 400, "label_token_ids")


# --- TEI ----------------------------------------------------------------------------------------


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


# --- Infinity -----------------------------------------------------------------------------------


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


def test_models_lists(client):
    infinity_models = client.get("/models").json()
    assert infinity_models["object"] == "list" and infinity_models["data"][0]["id"] == "fake-reranker"
    assert infinity_models["data"][0]["capabilities"] == ["rerank"]
    assert client.get("//v1/models").json()["data"][0]["id"] == "fake-reranker"  # a double slash, as URL helpers make


# --- tokenize, SageMaker, unknown fields, the API key ------------------------------------------


@pytest.mark.parametrize("prefix", ["", "/v1"])
def test_tokenize_and_detokenize(client, prefix):
    tokens = client.post(f"{prefix}/tokenize", json={"prompt": "the panda", "return_token_strs": True}).json()
    assert tokens["count"] == 4 and tokens["max_model_len"] == 16 and tokens["tokens"][0] == 1
    assert tokens["token_strs"] == ["[CLS]", "the", "panda", "[SEP]"]
    plain = client.post(f"{prefix}/tokenize", json={"prompt": ["the panda", "hi"], "add_special_tokens": False})
    assert plain.json()["count"] == [2, 1]
    text = client.post(f"{prefix}/detokenize", json={"tokens": tokens["tokens"]}).json()
    assert text == {"prompt": "[CLS] the panda [SEP]", "text": "the panda"}
    chat = client.post(f"{prefix}/tokenize", json={"messages": [{"role": "user", "content": "hi"}]})
    assert "chat template" in error_of(chat, 400, "messages")
    assert "not a token id" in error_of(client.post(f"{prefix}/detokenize", json={"tokens": [10**6]}), 400, "tokens[0]")


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
# answered 200 or a 400 that names it. Their effects are tested above.
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
        error_of(response, 400, field)


def test_infinity_fields_are_declared(infinity_client):
    fields = {"return_documents": True, "raw_scores": True, "top_n": 1, "model": "m"}
    for field, value in fields.items():
        response = infinity_client.post("/rerank", json={"query": QUERY, "documents": DOCS, field: value})
        assert response.status_code == 200 and UNKNOWN_FIELDS_HEADER not in response.headers


def test_the_api_key_covers_every_api_path():
    with client_for(api_key="k") as client:
        for path in ("/score", "/invocations", "/tokenize", "/detokenize", "/predict", "//v1/rerank", "/rerank"):
            assert client.post(path, json={}).status_code == 401, path
        assert client.get("/models").status_code == 401
        assert client.get("/ping").status_code == 200


def test_the_results_paths_answer_errors_for_cohere_and_vllm_clients_alike(client):
    body = client.post("/v2/rerank", json={"query": QUERY, "documents": [3]}).json()
    assert body["message"] == body["error"]["message"] and body["error"]["param"] == "documents[0]"  # Cohere, vLLM
    assert body["object"] == "error" and body["code"] == 400
