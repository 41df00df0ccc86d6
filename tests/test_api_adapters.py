"""The API adapters (SGLang, Cohere/Jina, vLLM) over the real Reranker with an in-memory model.

Unit tier: no export, no weights. A fake encoder turns words into ids (one id per distinct word) and a fake
backend scores a pair by how many document words the query holds, so rankings are predictable; the Reranker,
its scheduler, its field renaming and the whole app are the real ones.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from rerankrt.errors import InputError
from rerankrt.families.base import MODEL_LIMITS, Batch, Features, PairEncoder
from rerankrt.precision import Precision
from rerankrt.runtime import sigmoid
from rerankrt.runtime.loader import LoadedModel
from rerankrt.runtime.plan import ServingPlan
from rerankrt.server import create_app
from rerankrt.server.schemas import TINY_PNG
from rerankrt.server.settings import ServeSettings

CLS, SEP, IMAGE, VIDEO = 1, 2, 3, 4  # word ids start above these
WORD = re.compile(r"\S+")
MAX_LENGTH = 16
MAX_DOCUMENTS = 5
SERVER_SOURCES = Path(__file__).resolve().parents[1] / "src" / "rerankrt" / "server"

QUERY = "what is panda"
DOCS = ["hi there", "panda is a bear what", "what is it", "the panda"]
# logits: words of the document also in the query, minus one
LOGITS = [-1.0, 2.0, 1.0, 0.0]
BEST_FIRST = [1, 2, 3, 0]
TOKENS = sum(1 + 3 + 1 + len(d.split()) for d in DOCS)  # [CLS] query [SEP] document, one token per word
LONG = " ".join(["filler"] * 30)  # over MAX_LENGTH beside any query


# --- an in-memory model -------------------------------------------------------------------------


class WordTokenizer:
    """A stand-in for a Hugging Face fast tokenizer: one id per distinct lower-cased word, with offsets."""

    def __init__(self):
        self.vocab: dict[str, int] = {}

    def ids(self, text: str) -> list[int]:
        return self(text)["input_ids"]

    def __call__(self, text: str, add_special_tokens: bool = False, return_offsets_mapping: bool = False) -> dict:
        words = list(WORD.finditer(text))
        ids = [self.vocab.setdefault(w.group().lower(), len(self.vocab) + 10) for w in words]
        if add_special_tokens:
            return {"input_ids": [CLS, *ids, SEP], "offset_mapping": [(0, 0), *(w.span() for w in words), (0, 0)]}
        return {"input_ids": ids, "offset_mapping": [w.span() for w in words]}

    def __len__(self) -> int:
        return len(self.vocab) + 10

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        words = {i: w for w, i in self.vocab.items()} | {CLS: "[CLS]", SEP: "[SEP]", IMAGE: "[IMG]", VIDEO: "[VID]"}
        return [words.get(i, "[UNK]") for i in ids]

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        special = {CLS, SEP, IMAGE, VIDEO, 0}
        return " ".join(self.convert_ids_to_tokens([i for i in ids if not (skip_special_tokens and i in special)]))


class WordEncoder(PairEncoder):
    """`[CLS] instruct query [SEP] document`, one id per word; an image or video part is one id.

    An empty text part is refused with an error naming it the way a real encoder names its fields (`query[k]`,
    `documents[i][k]`), which the Reranker renames to the client's fields.
    """

    input_names = ("input_ids", "attention_mask")
    pad_values = {"input_ids": 0, "attention_mask": 0}

    def __init__(self, max_length: int = MAX_LENGTH):
        self.max_length = max_length
        self.tokenizer = WordTokenizer()

    def tokens(self, content, field: str) -> list[int]:
        if isinstance(content, str):
            return self.tokenizer.ids(content)
        ids = []
        for k, part in enumerate(content):
            if part["type"] == "text" and not part["text"]:
                raise InputError(f"{field}[{k}]", "an empty text part")
            ids += {"image": [IMAGE], "video": [VIDEO]}.get(part["type"]) or self.tokenizer.ids(part["text"])
        return ids

    def encode(
        self, query, documents: Sequence, instruct: str | None = None, truncate: bool = True, truncation=MODEL_LIMITS
    ) -> list[Features]:
        head = [CLS, *(self.tokenizer.ids(instruct) if instruct else []), *self.tokens(query, "query"), SEP]
        pairs = []
        for i, document in enumerate(documents):
            tokens = self.tokens(document, f"documents[{i}]")
            start, stop = self.kept(i, len(tokens), len(head), truncate, truncation)
            ids = (head + tokens[start:stop])[: self.max_length]
            array = np.asarray(ids, dtype=np.int64)
            pairs.append({"input_ids": array, "attention_mask": np.ones_like(array)})
        return pairs

    def save(self, out_dir: Path) -> list[str]:
        return []


class OverlapBackend:
    """logit = (document tokens also in the query) - 1, float32, one per row; `gate`, when set, holds each batch."""

    name = "fake"
    device = "cpu"

    def __init__(self, gate: threading.Event | None = None):
        self.gate = gate
        self.batches = 0

    def run(self, batch: Batch) -> np.ndarray:
        if self.gate is not None:
            assert self.gate.wait(30), "the test never opened the gate"
        self.batches += 1
        logits = []
        for row, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True):
            ids = row[mask.astype(bool)].tolist()
            split = ids.index(SEP)
            query, document = set(ids[1:split]), ids[split + 1 :]
            logits.append(sum(t in query for t in document) - 1.0)
        return np.asarray(logits, dtype=np.float32)


@dataclass(frozen=True)
class FakeFamily:
    name: str
    multimodal: bool
    labels: tuple[int, int] | None = None  # a yes/no family's (yes, no) token ids

    def label_tokens(self, encoder) -> tuple[int, int] | None:
        return self.labels


def make_model(
    multimodal: bool = False, gate: threading.Event | None = None, labels: tuple[int, int] | None = None
) -> LoadedModel:
    family = FakeFamily("multimodal-fake" if multimodal else "text-fake", multimodal, labels)
    plan = ServingPlan(backend="fake", device="cpu", precision=Precision.FP32)
    return LoadedModel(family, WordEncoder(), OverlapBackend(gate), plan, name="fake-reranker")


def settings(**overrides) -> ServeSettings:
    values = {"warmup": False, "max_documents_per_request": MAX_DOCUMENTS, "max_padding_ratio": 1.0, **overrides}
    return ServeSettings(model_path="-", **values)


@pytest.fixture(scope="module")
def text_client():
    config = settings()
    with TestClient(create_app(config, make_model())) as client:
        yield client


@pytest.fixture(scope="module")
def media_client():
    config = settings()
    with TestClient(create_app(config, make_model(multimodal=True))) as client:
        yield client


@pytest.fixture(params=["text", "multimodal"])
def any_client(request, text_client, media_client):
    return text_client if request.param == "text" else media_client


def text(value: str) -> dict:
    return {"type": "text", "text": value}


def image(url: str = TINY_PNG) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


# --- SGLang: /v1/rerank -------------------------------------------------------------------------


def test_sglang_ranks_best_first_and_echoes_documents(any_client):
    response = any_client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS})
    assert response.status_code == 200
    results = response.json()
    assert [r["index"] for r in results] == BEST_FIRST
    assert [set(r) for r in results] == [{"score", "index", "document"}] * len(DOCS)
    assert all(r["document"] == DOCS[r["index"]] for r in results)
    np.testing.assert_allclose([r["score"] for r in results], sigmoid(np.array(LOGITS)[BEST_FIRST]), rtol=0)


def test_sglang_top_n_raw_scores_and_no_documents(text_client):
    body = {"query": QUERY, "documents": DOCS, "top_n": 2, "raw_scores": True, "return_documents": False}
    assert text_client.post("/v1/rerank", json=body).json() == [{"score": 2.0, "index": 1}, {"score": 1.0, "index": 2}]
    everything = text_client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS, "top_n": 50}).json()
    assert len(everything) == len(DOCS)
    assert len(text_client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS, "top_n": 0}).json()) == 4


def test_instruct_and_chunking_reach_the_engine(text_client):
    raw = {"query": QUERY, "documents": DOCS, "raw_scores": True}
    instructed = text_client.post("/v1/rerank", json={**raw, "instruct": "bear"}).json()
    assert instructed[0] == {"score": 3.0, "index": 1, "document": DOCS[1]}  # "bear" joined the query side
    relevant_at_the_end = " ".join(["filler"] * 20 + ["panda"])
    body = {"query": "panda", "documents": [relevant_at_the_end], "raw_scores": True}
    assert text_client.post("/v1/rerank", json=body).json()[0]["score"] == -1.0  # truncated before "panda"
    chunked = text_client.post("/v1/rerank", json={**body, "max_chunks_per_doc": 3}).json()
    assert chunked[0]["score"] == 0.0  # its best chunk holds "panda"


def test_sglang_content_parts_with_media(media_client):
    documents = ["panda", [text("a panda"), image()], [image()]]
    results = media_client.post("/v1/rerank", json={"query": "panda", "documents": documents}).json()
    assert [r["index"] for r in results] == [0, 1, 2] and results[1]["score"] == results[0]["score"]
    assert [r["document"] for r in results] == documents  # parts echoed as sent
    image_query = [text("panda"), image()]
    raw = media_client.post("/v1/rerank", json={"query": image_query, "documents": [[image()]], "raw_scores": True})
    assert raw.json()[0]["score"] == 0.0  # the image token matches the query's


# --- Cohere / Jina: /rerank, /v2/rerank ---------------------------------------------------------


@pytest.mark.parametrize("path", ["/rerank", "/v2/rerank"])
def test_cohere_shape(text_client, path):
    documents = [DOCS[0], {"text": DOCS[1]}, DOCS[2], DOCS[3]]
    response = text_client.post(path, json={"query": QUERY, "documents": documents}, headers={"X-Request-ID": "c-1"})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"id", "model", "results", "usage", "meta"}
    assert body["meta"] == {"api_version": {"version": "2"}, "billed_units": {"search_units": 1}}
    assert body["id"] == "c-1" and body["model"] == "fake-reranker"
    assert body["usage"] == {"prompt_tokens": TOKENS, "total_tokens": TOKENS}
    assert [r["index"] for r in body["results"]] == BEST_FIRST
    assert [r["relevance_score"] for r in body["results"]] == pytest.approx(sigmoid(np.array(LOGITS)[BEST_FIRST]))
    assert all(r["document"] == {"text": DOCS[r["index"]]} for r in body["results"])


def test_cohere_top_n_and_no_documents(text_client):
    body = text_client.post("/rerank", json={"query": QUERY, "documents": DOCS, "top_n": 2, "return_documents": False})
    assert [set(r) for r in body.json()["results"]] == [{"index", "relevance_score"}] * 2
    assert [r["index"] for r in body.json()["results"]] == BEST_FIRST[:2]


def test_cohere_content_objects(media_client):
    documents = [{"content": [image()]}, "panda", {"content": [text("panda"), image()]}]
    body = {"query": {"content": [text("panda"), image()]}, "documents": documents, "top_n": 2}
    results = media_client.post("/v2/rerank", json=body).json()["results"]
    assert [r["index"] for r in results] == [2, 0]
    assert [r["document"] for r in results] == [documents[2], documents[0]]


# --- vLLM: /v1/score ----------------------------------------------------------------------------


def test_vllm_scores_in_input_order(any_client):
    response = any_client.post("/v1/score", json={"text_1": QUERY, "text_2": DOCS}, headers={"X-Request-ID": "v-1"})
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == "v-1" and body["object"] == "list" and body["model"] == "fake-reranker"
    assert isinstance(body["created"], int)
    assert body["usage"] == {"prompt_tokens": TOKENS, "total_tokens": TOKENS}
    assert [(d["index"], d["object"]) for d in body["data"]] == [(i, "score") for i in range(len(DOCS))]
    assert [d["score"] for d in body["data"]] == pytest.approx(sigmoid(np.array(LOGITS)))


def test_vllm_pairwise(text_client):
    body = {"text_1": ["panda", "bear"], "text_2": ["the panda", "a panda"]}
    data = text_client.post("/v1/score", json=body).json()["data"]
    assert [d["score"] for d in data] == pytest.approx(sigmoid(np.array([0.0, -1.0])))
    same_query = text_client.post("/v1/score", json={"text_1": ["panda", "panda"], "text_2": body["text_2"]}).json()
    assert [d["score"] for d in same_query["data"]] == pytest.approx(sigmoid(np.array([0.0, 0.0])))


def test_vllm_one_content_object_is_one_input_per_part(media_client):
    single = media_client.post("/v1/score", json={"text_1": "panda", "text_2": {"content": [text("panda"), image()]}})
    assert [d["score"] for d in single.json()["data"]] == pytest.approx(sigmoid(np.array([0.0, -1.0])))
    listed = {"text_1": "panda", "text_2": [{"content": [text("panda"), image()]}, "bear"]}
    assert [d["score"] for d in media_client.post("/v1/score", json=listed).json()["data"]] == pytest.approx(
        sigmoid(np.array([0.0, -1.0]))
    )


# --- errors name the client's own fields ---------------------------------------------------------


def refused(response, status: int, param: str) -> dict:
    """The error body, rerankrt's (SGLang's) or vLLM's (the same fields under "error", on its score paths)."""
    assert response.status_code == status, response.text
    body = response.json()
    error = body["error"] if isinstance(body.get("error"), dict) else body
    assert error["param"] == param, error
    assert error["message"].startswith(f"{param}: ") and error["code"] == status
    assert "error" in body or error["object"] == "error"
    return error


@pytest.mark.parametrize(
    "path, body, param",
    [
        ("/v1/rerank", {"query": QUERY, "documents": ["short", LONG]}, "documents[1]"),
        ("/rerank", {"query": QUERY, "documents": ["short", LONG]}, "documents[1]"),
        ("/v2/rerank", {"query": QUERY, "documents": ["short", {"text": LONG}]}, "documents[1]"),
        ("/rerank", {"query": QUERY, "documents": ["short", {"content": [text(LONG)]}]}, "documents[1].content"),
        ("/v1/score", {"text_1": QUERY, "text_2": ["short", LONG]}, "text_2[1]"),
        ("/v1/score", {"text_1": QUERY, "text_2": ["short", {"content": [text(LONG)]}]}, "text_2[1].content"),
        ("/v1/score", {"text_1": QUERY, "text_2": {"content": [text("short"), text(LONG)]}}, "text_2.content[1]"),
        ("/v1/score", {"text_1": ["a", "b"], "text_2": [LONG, "short"]}, "text_2[0]"),
        ("/v1/score", {"text_1": ["a", "b"], "text_2": ["short", LONG]}, "text_2[1]"),
    ],
)
def test_an_over_long_pair_without_truncation_names_the_field(any_client, path, body, param):
    error = refused(any_client.post(path, json={**body, "truncate": False}), 400, param)
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
def test_too_many_documents_is_a_413_naming_the_list(text_client, path, body, param):
    error = refused(text_client.post(path, json=body), 413, param)
    assert f"over the limit of {MAX_DOCUMENTS}" in error["message"] and error["type"] == "RequestTooLarge"


@pytest.mark.parametrize(
    "path, body, param",
    [
        ("/v1/rerank", {"query": [text(""), text("q")], "documents": ["d"]}, "query[0]"),
        ("/v1/rerank", {"query": "q", "documents": ["d", [text("a"), text("")]]}, "documents[1][1]"),
        ("/rerank", {"query": {"content": [text("")]}, "documents": ["d"]}, "query.content[0]"),
        ("/rerank", {"query": "q", "documents": ["d", {"content": [text("a"), text("")]}]}, "documents[1].content[1]"),
        ("/v1/score", {"text_1": "q", "text_2": ["d", {"content": [text("")]}]}, "text_2[1].content[0]"),
        ("/v1/score", {"text_1": {"content": [text("")]}, "text_2": ["d"]}, "text_1.content[0]"),
        ("/v1/score", {"text_1": "q", "text_2": {"content": [text("a"), text("")]}}, "text_2.content[1]"),
        ("/v1/score", {"text_1": ["q", {"content": [text("")]}], "text_2": ["d", "e"]}, "text_1[1].content[0]"),
        ("/v1/score", {"text_1": [{"content": [text("")]}, "q"], "text_2": ["d", "e"]}, "text_1[0].content[0]"),
    ],
)
def test_encoder_errors_are_renamed_to_the_client_fields(media_client, path, body, param):
    assert "an empty text part" in refused(media_client.post(path, json=body), 400, param)["message"]


@pytest.mark.parametrize(
    "path, body, param",
    [
        ("/v1/rerank", {"query": "q", "documents": ["d", [text("a"), image()]]}, "documents[1][1]"),
        ("/v1/rerank", {"query": [image()], "documents": ["d"]}, "query[0]"),
        ("/rerank", {"query": {"content": [image()]}, "documents": ["d"]}, "query.content[0]"),
        ("/v2/rerank", {"query": "q", "documents": [{"content": [text("a"), image()]}]}, "documents[0].content[1]"),
        ("/v1/score", {"text_1": "q", "text_2": {"content": [text("a"), image()]}}, "text_2.content[1]"),
        ("/v1/score", {"text_1": "q", "text_2": [{"content": [text("a"), image()]}]}, "text_2[0].content[1]"),
        ("/v1/score", {"text_1": ["q", {"content": [image()]}], "text_2": ["d", "e"]}, "text_1[1].content[0]"),
    ],
)
def test_a_text_model_refuses_media_naming_the_part(text_client, path, body, param):
    message = refused(text_client.post(path, json=body), 400, param)["message"]
    assert "this model takes text only; image_url parts need a multimodal reranker" in message


@pytest.mark.parametrize(
    "path, body, param",
    [
        ("/v1/rerank", {"query": "q", "documents": ["d", [image("data:image/png;base64,@@")]]}, "documents[1][0]"),
        ("/rerank", {"query": "q", "documents": [{"content": [image("data:image/png;base64,@@")]}]},
         "documents[0].content[0]"),
        ("/v1/score", {"text_1": "q", "text_2": {"content": [text("a"), image("data:image/png;base64,@@")]}},
         "text_2.content[1]"),
        ("/v1/score", {"text_1": ["q", {"content": [image("data:image/png;base64,@@")]}], "text_2": ["d", "e"]},
         "text_1[1].content[0]"),
    ],
)  # fmt: skip
def test_media_errors_name_the_part(media_client, path, body, param):
    message = refused(media_client.post(path, json=body), 400, f"{param}.image_url.url")["message"]
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
def test_invalid_requests_are_400s_naming_the_field(text_client, path, body, param):
    refused(text_client.post(path, json=body), 400, param)


def test_malformed_json_is_a_400_naming_the_body(text_client):
    response = text_client.post("/v1/score", content=b'{"text_1": ', headers={"content-type": "application/json"})
    assert "invalid JSON" in refused(response, 400, "body")["message"]


# --- operations, lifespan, the request guard ----------------------------------------------------


def test_health_models_metrics_and_openapi():
    config = settings(warmup=True)
    app = create_app(config, make_model())
    assert app.state.reranker.name == "fake-reranker"
    before = TestClient(app).get("/health")  # no `with`: the lifespan (warm-up) has not run
    assert before.status_code == 503 and before.headers["retry-after"]
    with TestClient(app) as client:
        assert client.get("/health").json()["status"] == "ok"
        assert client.get("/v1/models").json() == {
            "object": "list",
            "data": [
                {
                    "id": "fake-reranker", "object": "model", "owned_by": "rerankrt", "family": "text-fake",
                    "backend": "fake", "device": "cpu", "precision": "fp32", "max_length": MAX_LENGTH,
                }
            ],
        }  # fmt: skip
        assert client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS}).status_code == 200
        assert client.post("/v1/score", json={"text_1": 1}).status_code == 400
        metrics = client.get("/metrics")
        spec = client.get("/openapi.json").json()
    assert metrics.headers["content-type"].startswith("text/plain")
    assert f"rerankrt_pairs_total {len(DOCS) + 2}.0" in metrics.text  # the hook sees the warm-up's 2 pairs too
    assert 'rerankrt_requests_total{route="/v1/rerank",status="200"} 1.0' in metrics.text
    assert 'rerankrt_requests_total{route="/v1/score",status="400"} 1.0' in metrics.text
    assert list(spec["paths"]) == [
        "/v1/rerank", "/rerank", "/v1/score", "/score", "/invocations", "/v2/rerank", "/predict", "/tokenize",
        "/detokenize", "/v1/tokenize", "/v1/detokenize", "/health", "/v1/models", "/models", "/ping",
    ]  # fmt: skip
    body = spec["paths"]["/v1/score"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"oneOf": [{"$ref": "#/components/schemas/VLLMScoreRequest"},
                              {"$ref": "#/components/schemas/SGLangScoreRequest"}]}  # fmt: skip
    assert {"RerankRequest", "CohereRerankRequest", "TEIRerankRequest", "ContentDocument"} <= set(
        spec["components"]["schemas"]
    )


def test_a_stalled_backend_is_a_503_after_the_timeout_and_the_server_recovers():
    gate = threading.Event()
    config = settings(request_timeout=0.3, batch_wait_ms=0)
    app = create_app(config, make_model(gate=gate))
    with TestClient(app) as client:
        try:
            late = client.post("/v1/score", json={"text_1": QUERY, "text_2": DOCS})
            assert late.status_code == 503 and late.headers["retry-after"]
            message = late.json()["error"]["message"]  # vLLM's error body
            assert message == "no forward pass finished for 0.3 s (the backend is stuck); retry later"
            assert app.state.scheduler.queued_pairs == 0
        finally:
            gate.set()
        assert client.post("/v1/score", json={"text_1": QUERY, "text_2": DOCS}).status_code == 200


def test_no_model_family_is_named_in_the_server():
    pattern = re.compile(r"qwen|vision|gemma|yes_no|deepstack", re.IGNORECASE)
    named = [
        f"{path.name}: {m.group()}" for path in SERVER_SOURCES.rglob("*.py") for m in pattern.finditer(path.read_text())
    ]
    assert not named
