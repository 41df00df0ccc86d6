import asyncio

import numpy as np
import pytest
from fastapi.testclient import TestClient

from rerankrt.runtime import RerankerSettings
from rerankrt.runtime.loader import load_model
from rerankrt.server import create_app
from rerankrt.server.schemas import PANDA_EXAMPLE
from rerankrt.server.settings import ServeSettings
from rerankrt.testing.reference import cross_encoder_logits, random_documents, random_text, sigmoid
from tests.conftest import ARCHS
from tests.support import HeldBackend, asgi_client

pytestmark = pytest.mark.integration  # every test here builds, exports or serves a model

PANDA = PANDA_EXAMPLE


@pytest.fixture(scope="module")
def client(artifact_dirs):
    with TestClient(create_app(ServeSettings(model_path=str(artifact_dirs["xlmr"])))) as test_client:
        yield test_client


def post(client, body):
    return client.post("/v1/rerank", json=body)


def test_sglang_example_request(client):
    response = post(client, PANDA)
    assert response.status_code == 200
    results = response.json()
    assert [set(r) for r in results] == [{"score", "index", "document"}] * 2
    assert sorted(r["index"] for r in results) == [0, 1]
    assert results[0]["score"] >= results[1]["score"]
    assert all(0.0 <= r["score"] <= 1.0 for r in results)
    assert all(r["document"] == PANDA["documents"][r["index"]] for r in results)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "torch"])
def test_scores_equal_sigmoid_of_the_model_card_logits(artifact_dirs, model_dirs, arch, backend):
    rng = np.random.default_rng(11)
    query, docs = random_text(rng, 2, 10), random_documents(rng, 13)
    expected = sigmoid(cross_encoder_logits(model_dirs[arch], query, docs))
    with TestClient(create_app(ServeSettings(model_path=str(artifact_dirs[arch]), backend=backend))) as test_client:
        results = post(test_client, {"query": query, "documents": docs}).json()
    assert len(results) == len(docs)
    got = np.empty(len(docs))
    for r in results:
        got[r["index"]] = r["score"]
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    assert [r["score"] for r in results] == sorted(got, reverse=True)


def test_results_are_sorted_best_first(client):
    rng = np.random.default_rng(5)
    results = post(client, {"query": "panda", "documents": random_documents(rng, 25)}).json()
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    assert sorted(r["index"] for r in results) == list(range(25))


def test_top_n_applies_after_sorting(client):
    everything = post(client, {**PANDA, "documents": PANDA["documents"] + ["bears", "China"]}).json()
    top = post(client, {**PANDA, "documents": PANDA["documents"] + ["bears", "China"], "top_n": 2}).json()
    assert top == everything[:2]


def test_top_n_larger_than_the_list_returns_all(client):
    assert len(post(client, {**PANDA, "top_n": 50}).json()) == 2


def test_return_documents_false_omits_the_field(client):
    results = post(client, {**PANDA, "return_documents": False}).json()
    assert [set(r) for r in results] == [{"score", "index"}] * 2


def test_raw_scores_are_the_logits(client):
    probs = {r["index"]: r["score"] for r in post(client, PANDA).json()}
    raw = {r["index"]: r["score"] for r in post(client, {**PANDA, "raw_scores": True}).json()}
    for index, logit in raw.items():
        assert probs[index] == pytest.approx(float(sigmoid(np.array(logit))), abs=1e-6)


def test_instruct_is_ignored_by_a_cross_encoder(client):
    assert post(client, {**PANDA, "instruct": "Find documents about bears"}).json() == post(client, PANDA).json()


@pytest.mark.parametrize(
    "body, param",
    [
        ({**PANDA, "query": 3}, "query"),
        ({**PANDA, "query": ""}, "query"),
        ({"documents": PANDA["documents"]}, "query"),
        ({**PANDA, "documents": []}, "documents"),
        ({**PANDA, "documents": "hi"}, "documents"),
        ({**PANDA, "documents": ["ok", 7]}, "documents[1]"),
        ({**PANDA, "top_n": -1}, "top_n"),
        ({**PANDA, "top_n": -1}, "top_n"),
        ({**PANDA, "top_n": "2"}, "top_n"),
        ({**PANDA, "return_documents": "yes"}, "return_documents"),
        ({**PANDA, "instruct": ["x"]}, "instruct"),
        ([PANDA], "body"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(client, body, param):
    response = post(client, body)
    assert response.status_code == 400
    error = response.json()
    assert error["param"] == param
    assert error["message"].startswith(f"{param}: ")
    assert error["code"] == 400 and error["object"] == "error"


def test_malformed_json_is_a_400(client):
    response = client.post(
        "/v1/rerank", content=b'{"query": "x", "documents": [', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["param"] == "body"
    assert "invalid JSON" in response.json()["message"]


def test_unknown_route_and_method_are_json_errors(client):
    assert client.get("/v2/nothing").status_code == 404
    response = client.get("/v1/rerank")
    assert response.status_code == 405 and response.json()["object"] == "error"


def test_health_models_and_openapi(client, artifact_dirs):
    assert client.get("/health").json()["status"] == "ok"
    card = client.get("/v1/models").json()["data"][0]
    assert card["id"] == artifact_dirs["xlmr"].name  # a local export is named by its folder, not the exporter's path
    assert card["family"] == "cross-encoder" and card["backend"] == "openvino" and card["max_length"] == 512
    spec = client.get("/openapi.json").json()
    assert "/v1/rerank" in spec["paths"]
    assert client.get("/docs").status_code == 200


def test_inference_does_not_block_the_event_loop(artifact_dirs):
    model = load_model(RerankerSettings(model_path=str(artifact_dirs["xlmr"])))
    model.backend = held = HeldBackend(model.backend)
    app = create_app(ServeSettings(model_path="-", warmup=False), model)

    async def scenario():
        async with asgi_client(app) as http:
            pending = asyncio.create_task(http.post("/v1/rerank", json=PANDA))
            await asyncio.get_running_loop().run_in_executor(None, held.entered.wait, 30)
            health = await http.get("/health")  # answered while the forward pass is held
            assert health.status_code == 200
            assert not pending.done()
            held.release.set()
            assert (await pending).status_code == 200

    asyncio.run(scenario())


def test_serving_never_writes_the_manifest(artifact_dirs):
    """The manifest describes the files as exported: loading for another precision or serving leaves it as is."""
    manifest = artifact_dirs["bert"] / "manifest.json"
    before = manifest.read_bytes()
    with TestClient(create_app(ServeSettings(model_path=str(artifact_dirs["bert"]), precision="fp32"))) as c:
        assert post(c, PANDA).status_code == 200
        assert c.get("/v1/models").json()["data"][0]["precision"] == "fp32"
    assert manifest.read_bytes() == before


def test_health_is_503_until_warm(artifact_dirs):
    app = create_app(ServeSettings(model_path=str(artifact_dirs["xlmr"])))
    response = TestClient(app).get("/health")  # no `with`: the lifespan (warm-up) has not run
    assert response.status_code == 503 and response.headers["retry-after"]
