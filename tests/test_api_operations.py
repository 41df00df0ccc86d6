"""Limits, overload, cancellation, the other API shapes, auth, metrics, logs: the server under real use."""

import asyncio
import json
import logging

import pytest
from fastapi.testclient import TestClient

from rerankrt.logs import JsonFormatter
from rerankrt.runtime import Reranker, RerankerSettings
from rerankrt.runtime.loader import load_model
from rerankrt.server import create_app
from rerankrt.server.settings import ServeSettings
from tests.support import HeldBackend, asgi_client

pytestmark = pytest.mark.integration  # every test here builds, exports or serves a model

QUERY = "what is panda?"
DOCS = ["hi", "The giant panda is a bear species endemic to China.", "Paris is the capital of France."]


def settings(**overrides) -> ServeSettings:
    return ServeSettings(model_path="-", **overrides)


@pytest.fixture(scope="module")
def reranker(artifact_dirs):
    return Reranker.load(str(artifact_dirs["xlmr"]))


@pytest.fixture(scope="module")
def client(reranker):
    with TestClient(create_app(settings(max_documents_per_request=5, max_request_bytes=4096), reranker.model)) as c:
        yield c


def v1(client, **body):
    return client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS, **body})


# --- limits ----------------------------------------------------------------------------------


def test_too_many_documents_is_a_413_naming_documents(client):
    response = client.post("/v1/rerank", json={"query": QUERY, "documents": ["d"] * 6})
    assert response.status_code == 413
    assert response.json()["param"] == "documents" and "over the limit of 5" in response.json()["message"]


def test_oversized_body_is_a_413_by_content_length(client):
    response = client.post("/v1/rerank", json={"query": QUERY, "documents": ["x" * 5000]})
    assert response.status_code == 413 and response.json()["param"] == "body"


def test_oversized_chunked_body_is_a_413_too(client):
    def chunks():
        yield b'{"query": "q", "documents": ["'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"]}'

    response = client.post("/v1/rerank", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_truncate_false_names_the_over_long_document(reranker):
    app = create_app(settings(), reranker.model)
    with TestClient(app) as c:
        docs = ["short", "panda " * 2000]
        response = c.post("/v1/rerank", json={"query": QUERY, "documents": docs, "truncate": False})
        assert response.status_code == 400
        assert response.json()["param"] == "documents[1]" and "over max_length 512" in response.json()["message"]
        assert c.post("/v1/rerank", json={"query": QUERY, "documents": docs}).status_code == 200


def test_chunked_document_scores_as_its_best_chunk(reranker):
    from rerankrt.runtime.chunking import chunk_documents

    long_doc = " ".join(["Paris is the capital of France."] * 120 + ["The giant panda is a bear."] * 40)
    pieces, owners = chunk_documents(reranker.encoder, QUERY, [long_doc, "hi"], None, max_chunks=4)
    assert owners == [0, 0, 0, 0, 1] and all(long_doc.find(p) >= 0 for p in pieces[:4])
    expected = reranker.logits(QUERY, pieces)
    with TestClient(create_app(settings(), reranker.model)) as c:
        body = {"query": QUERY, "documents": [long_doc, "hi"], "max_chunks_per_doc": 4, "raw_scores": True}
        got = {r["index"]: r["score"] for r in c.post("/v1/rerank", json=body).json()}
    assert got[0] == pytest.approx(float(expected[:4].max()), abs=1e-5)
    assert got[1] == pytest.approx(float(expected[4]), abs=1e-5)


# --- other API shapes --------------------------------------------------------------------------


def test_cohere_and_jina_shape(client):
    reference = {r["index"]: r["score"] for r in v1(client).json()}
    for path in ("/rerank", "/v2/rerank"):
        body = {"query": QUERY, "documents": [DOCS[0], {"text": DOCS[1]}, DOCS[2]], "top_n": 2}
        response = client.post(path, json=body).json()
        assert set(response) == {"id", "model", "results", "usage", "meta"}
        assert len(response["results"]) == 2 and response["usage"]["total_tokens"] > 0
        for r in response["results"]:
            assert r["relevance_score"] == pytest.approx(reference[r["index"]], abs=1e-6)
            assert r["document"] == {"text": DOCS[r["index"]]}
        assert response["results"][0]["relevance_score"] >= response["results"][1]["relevance_score"]
    bare = client.post("/rerank", json={"query": QUERY, "documents": DOCS, "return_documents": False}).json()
    assert all(set(r) == {"index", "relevance_score"} for r in bare["results"])


def test_cohere_shape_validates_documents(client):
    response = client.post("/rerank", json={"query": QUERY, "documents": [{"txt": "x"}]})
    assert response.status_code == 400 and response.json()["param"].startswith("documents[0]")


def test_vllm_score_shape(client):
    reference = {r["index"]: r["score"] for r in v1(client).json()}
    response = client.post("/v1/score", json={"text_1": QUERY, "text_2": DOCS}).json()
    assert response["object"] == "list" and response["usage"]["prompt_tokens"] > 0
    assert [d["index"] for d in response["data"]] == [0, 1, 2]
    for d in response["data"]:
        assert d["object"] == "score" and d["score"] == pytest.approx(reference[d["index"]], abs=1e-6)
    pairwise = client.post("/v1/score", json={"text_1": [QUERY, "bears"], "text_2": DOCS[:2]}).json()
    assert pairwise["data"][0]["score"] == pytest.approx(reference[0], abs=1e-6)
    assert len(pairwise["data"]) == 2


@pytest.mark.parametrize(
    "body, param",
    [
        ({"text_1": ["a", "b"], "text_2": ["c", "d", "e"]}, "text_2"),
        ({"text_1": [], "text_2": ["c"]}, "text_1"),
        ({"text_1": "a"}, "text_2"),
        ({"text_1": "a", "text_2": [3]}, "text_2"),
    ],
)
def test_vllm_score_errors_name_the_field(client, body, param):
    response = client.post("/v1/score", json=body)
    assert response.status_code == 400 and response.json()["error"]["param"].startswith(param)  # vLLM's error body


# --- auth, request ids, metrics, logs ------------------------------------------------------------


def test_api_key(reranker):
    app = create_app(settings(api_key="s3cret", public_metrics=False), reranker.model)
    with TestClient(app) as c:
        missing = c.post("/v1/rerank", json={"query": QUERY, "documents": DOCS})
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        wrong = c.post("/rerank", json={"query": QUERY, "documents": DOCS}, headers={"Authorization": "Bearer no"})
        assert wrong.status_code == 401
        ok = c.post("/v1/rerank", json={"query": QUERY, "documents": DOCS}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert c.get("/v1/models").status_code == 401
        assert c.get("/health").status_code == 200  # public by default
        assert c.get("/metrics").status_code == 401  # made private above
        assert c.get("/metrics", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/openapi.json").status_code == 200


def test_request_ids(client):
    assert len(v1(client).headers["x-request-id"]) == 16
    echoed = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS}, headers={"X-Request-ID": "abc-123"})
    assert echoed.headers["x-request-id"] == "abc-123"
    cohere = client.post("/rerank", json={"query": QUERY, "documents": DOCS}, headers={"X-Request-ID": "abc-124"})
    assert cohere.json()["id"] == "abc-124"


def test_metrics_content(reranker):
    with TestClient(create_app(settings(), reranker.model)) as c:
        for _ in range(3):
            v1(c)
        c.post("/v1/rerank", json={"query": 1, "documents": DOCS})
        text = c.get("/metrics").text
    assert 'rerankrt_requests_total{route="/v1/rerank",status="200"} 3.0' in text
    assert 'rerankrt_requests_total{route="/v1/rerank",status="400"} 1.0' in text
    assert 'rerankrt_request_seconds_count{route="/v1/rerank"} 4.0' in text
    assert "rerankrt_queue_pairs 0.0" in text
    assert "rerankrt_pairs_total 11.0" in text  # 3 requests x 3 documents + 2 warm-up pairs
    assert "rerankrt_batch_pairs_bucket" in text and "rerankrt_batch_padding_ratio_bucket" in text


def test_access_log_carries_request_fields_and_json_formats_them(client, caplog):
    with caplog.at_level(logging.INFO, logger="rerankrt.access"):
        client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS}, headers={"X-Request-ID": "log-1"})
    (record,) = [r for r in caplog.records if getattr(r, "request_id", None) == "log-1"]
    assert record.status == 200 and record.path == "/v1/rerank" and record.duration_ms >= 0
    line = json.loads(JsonFormatter().format(record))
    assert line["request_id"] == "log-1" and line["status"] == 200 and line["logger"] == "rerankrt.access"


# --- overload, timeouts, disconnects (a held backend makes the server slow on purpose) ----------


def held_app(artifact_dirs, **overrides):
    model = load_model(RerankerSettings(model_path=str(artifact_dirs["xlmr"])))
    model.backend = held = HeldBackend(model.backend)
    # no padding cap: each request's documents form one batch, so batch counts below are exact
    return create_app(settings(warmup=False, max_padding_ratio=1.0, **overrides), model), held


def test_flood_gets_503s_with_retry_after_then_recovers(artifact_dirs):
    app, held = held_app(artifact_dirs, max_queued_pairs=12, max_batch_size=4, batch_wait_ms=0)

    async def scenario():
        async with asgi_client(app) as http:
            body = {"query": QUERY, "documents": DOCS}
            first = asyncio.create_task(http.post("/v1/rerank", json=body))
            await asyncio.to_thread(held.entered.wait, 30)
            flood = [asyncio.create_task(http.post("/v1/rerank", json=body)) for _ in range(20)]
            done, _ = await asyncio.wait(flood, timeout=5, return_when=asyncio.FIRST_COMPLETED)
            refused = [t.result() for t in done]
            assert refused and all(r.status_code == 503 for r in refused)
            assert int(refused[0].headers["retry-after"]) >= 1
            assert app.state.scheduler.queued_pairs <= 12
            held.release.set()
            statuses = [r.status_code for r in await asyncio.gather(first, *flood)]
            assert set(statuses) <= {200, 503} and statuses.count(200) >= 5
            assert (await http.post("/v1/rerank", json=body)).status_code == 200  # recovered

    asyncio.run(scenario())


def test_a_stalled_backend_is_a_503_after_the_timeout_and_drops_the_pairs(artifact_dirs):
    app, held = held_app(artifact_dirs, request_timeout=0.5, max_batch_size=3, batch_wait_ms=0)

    async def scenario():
        async with asgi_client(app) as http:
            body = {"query": QUERY, "documents": DOCS}
            first = asyncio.create_task(http.post("/v1/rerank", json=body))
            await asyncio.to_thread(held.entered.wait, 30)
            late = await http.post("/v1/rerank", json=body)  # admitted behind the held batch, which never ends
            assert late.status_code == 503 and late.headers["retry-after"]
            assert late.json()["message"] == "no forward pass finished for 0.5 s (the backend is stuck); retry later"
            assert app.state.scheduler.queued_pairs == 0  # its pairs left the queue
            held.release.set()
            await first  # (503 too: it waited on the same stalled pass)
        # leaving the lifespan drained the scheduler: only the first request's batch ever ran
        assert held.batches == 1

    asyncio.run(scenario())


def test_disconnected_client_is_dropped_from_the_queue(artifact_dirs):
    app, held = held_app(artifact_dirs, max_batch_size=3, batch_wait_ms=0)
    body = json.dumps({"query": QUERY, "documents": DOCS}).encode()

    async def call(disconnect: asyncio.Event):
        sent = []
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive():
            if messages:
                return messages.pop(0)
            await disconnect.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
            "path": "/v1/rerank", "raw_path": b"/v1/rerank", "query_string": b"", "root_path": "",
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
        }  # fmt: skip
        await app(scope, receive, send)
        return sent

    async def scenario():
        async with app.router.lifespan_context(app):
            stays, leaves = asyncio.Event(), asyncio.Event()
            first = asyncio.create_task(call(stays))
            await asyncio.to_thread(held.entered.wait, 30)
            second = asyncio.create_task(call(leaves))
            await asyncio.sleep(0.1)
            assert app.state.scheduler.queued_pairs == 3
            leaves.set()  # the second client hangs up while queued
            sent = await second
            assert sent[0]["status"] == 499
            held.release.set()
            assert (await first)[0]["status"] == 200
            assert held.batches == 1
            assert app.state.scheduler.queued_pairs == 0

    asyncio.run(scenario())


def test_padding_cap_defaults_by_device_and_can_be_set(reranker):
    assert reranker.backend.device == "cpu"
    assert create_app(settings(), reranker.model).state.scheduler.max_padding_ratio == 0.1
    assert create_app(settings(max_padding_ratio=0.5), reranker.model).state.scheduler.max_padding_ratio == 0.5
