"""The assembled app over the in-memory model: /health before and after warm-up, /v1/models, /metrics, the
OpenAPI document, a stalled backend, the API key on every API path."""

from __future__ import annotations

import threading

from fastapi.testclient import TestClient

from rerankrt.server import create_app
from tests.fakes import DOCS, MAX_LENGTH, QUERY, client_for, make_model, settings


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
        "/detokenize", "/v1/tokenize", "/v1/detokenize", "/health", "/v1/models", "/models", "/ping", "/v1/ranking",
        "/v1/retrieval/{model_id}/reranking",
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


def test_the_api_key_covers_every_api_path():
    with client_for(api_key="k") as client:
        for path in ("/score", "/invocations", "/tokenize", "/detokenize", "/predict", "//v1/rerank", "/rerank"):
            assert client.post(path, json={}).status_code == 401, path
        assert client.get("/models").status_code == 401
        assert client.get("/ping").status_code == 200
