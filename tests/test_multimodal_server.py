"""Multimodal requests end to end: content parts, media from a local HTTP server, scores vs the official scoring.

The reference (rerankrt.testing.reference_qwen3_vl) scores the same decoded images and video frames the server
fetched; the server's scores must match it within 1e-3, on the ONNX artifact and on the torch backend.
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from rerankrt.runtime import Reranker
from rerankrt.runtime.chunking import chunk_documents
from rerankrt.server import create_app
from rerankrt.server.media import MediaLimits, decode_image, decode_video
from rerankrt.server.settings import ServeSettings
from rerankrt.testing.reference_qwen3_vl import messages
from tests.support import image_bytes, mp4_bytes, rerankrt, running_server

pytestmark = pytest.mark.integration  # every test here builds, exports or serves a model

SCORE_TOLERANCE = 1e-3
MAX_BYTES = 256 * 1024  # the test apps' media_max_bytes; big.png is over it


def mp4() -> bytes:
    """3 s at 10 fps of 48x64 frames of a moving gradient."""
    ramp = np.linspace(0, 200, 64, dtype=np.float32)[None, :, None]
    return mp4_bytes((np.broadcast_to(ramp + 2 * i, (48, 64, 3)).astype(np.uint8) for i in range(30)), 10)


RNG = np.random.default_rng(3)
MEDIA_FILES = {  # served by the `media_base` fixture (conftest)
    "a.png": image_bytes(RNG.integers(0, 256, (64, 96, 3), dtype=np.uint8)),
    "b.png": image_bytes(RNG.integers(0, 256, (300, 200, 3), dtype=np.uint8)),  # downscaled by the preprocessing
    "c.jpg": image_bytes(RNG.integers(0, 256, (40, 50, 3), dtype=np.uint8), "JPEG", quality=90),
    "big.png": image_bytes(RNG.integers(0, 256, (400, 400, 3), dtype=np.uint8)),  # ~480 KB, over MAX_BYTES
    "clip.mp4": mp4(),
}


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("media")
    (folder / "a.png").write_bytes(MEDIA_FILES["a.png"])
    return folder


def settings(**overrides) -> ServeSettings:
    return ServeSettings(model_path="-", warmup=False, **overrides)


@pytest.fixture(scope="module")
def clients(vl_rerankers, media_dir):
    """One app per backend, allowed to fetch from 127.0.0.0/8 and to read files in media_dir."""
    config = settings(
        media_allowed_networks=["127.0.0.0/8"], allowed_local_media_path=str(media_dir), media_max_bytes=MAX_BYTES
    )
    with contextlib.ExitStack() as stack:
        yield {name: stack.enter_context(TestClient(create_app(config, r.model))) for name, r in vl_rerankers.items()}


@pytest.fixture(scope="module")
def client(clients):
    return clients["onnxruntime"]


# --- requests and their reference scores -------------------------------------------------------


def image(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def video(url: str) -> dict:
    return {"type": "video_url", "video_url": {"url": url}}


def text(value: str) -> dict:
    return {"type": "text", "text": value}


def fetched(url: str) -> bytes:
    if url.startswith("data:"):
        return base64.b64decode(url.partition(",")[2])
    if url.startswith(("/", "file:")):
        return Path(urlsplit(url).path).read_bytes()
    return MEDIA_FILES[urlsplit(url).path.lstrip("/")]


def side(content) -> dict:
    """A request's query or document, decoded as the server decodes it -> the official script's side."""
    if isinstance(content, str):
        return {"text": [content]} if content else {}
    out = {"text": [], "image": [], "video": []}
    limits = MediaLimits()
    for part in content:
        if part["type"] == "text":
            out["text"].append(part["text"])
        elif part["type"] == "image_url":
            out["image"].append(decode_image(fetched(part["image_url"]["url"]), limits, "x"))
        else:
            clip = decode_video(fetched(part["video_url"]["url"]), limits, "x")
            out["video"].append((clip.frames, clip.fps))
    return out


def reference(vl_official, body) -> np.ndarray:
    scores, _ = vl_official.score(
        [messages(side(body["query"]), side(d), body.get("instruct")) for d in body["documents"]]
    )
    return scores


def by_index(results: list[dict], key: str = "score") -> np.ndarray:
    out = np.full(len(results), np.nan)
    for r in results:
        out[r["index"]] = r[key]
    return out


def requests(base: str) -> dict[str, dict]:
    """SGLang's three multimodal example shapes, on local media."""
    return {
        "text-only": {
            "query": "What is machine learning?",
            "documents": [
                "Machine learning is a branch of artificial intelligence that enables computers to learn from data.",
                "The weather in Paris is usually mild with occasional rain.",
                "Deep learning is a subset of machine learning using neural networks with many layers.",
            ],
            "instruct": "Retrieve passages that answer the question.",
        },
        "image-documents": {
            "query": "A woman playing with her dog on a beach at sunset.",
            "documents": [
                "A woman shares a joyful moment with her golden retriever on a sun-drenched beach at sunset.",
                [image(f"{base}/a.png")],
                [text("A joyful scene at the beach:"), image(f"{base}/b.png")],
                [image(f"{base}/c.jpg"), text("two images"), image(f"{base}/a.png")],
            ],
            "instruct": "Retrieve images or text relevant to the user's query.",
        },
        "image-query": {
            "query": [text("Find similar images to this:"), image(f"{base}/b.png")],
            "documents": [
                "A cat sleeping on a couch.",
                "A woman and her dog enjoying the sunset at the beach.",
                [image(f"{base}/a.png")],
            ],
        },
    }


def rerank(client, body) -> httpx.Response:
    return client.post("/v1/rerank", json=body)


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
@pytest.mark.parametrize("case", ["text-only", "image-documents", "image-query"])
def test_sglang_examples_match_the_official_scoring(clients, vl_official, media_base, backend, case):
    body = requests(media_base)[case]
    response = rerank(clients[backend], body)
    assert response.status_code == 200, response.text
    results = response.json()
    scores = by_index(results)
    np.testing.assert_allclose(scores, reference(vl_official, body), atol=SCORE_TOLERANCE, rtol=0)
    assert [r["score"] for r in results] == sorted(scores, reverse=True)


def test_data_uri_local_file_and_video(client, vl_official, media_base, media_dir):
    uri = "data:image/png;base64," + base64.b64encode(MEDIA_FILES["b.png"]).decode()
    body = {
        "query": "a panda",
        "documents": [
            [image(uri), text("from a data: URI")],
            [image(str(media_dir / "a.png"))],
            [video(f"{media_base}/clip.mp4"), text("frames of a gradient")],
            [image(f"file://{media_dir / 'a.png'}")],
        ],
    }
    response = rerank(client, body)
    assert response.status_code == 200, response.text
    scores = by_index(response.json())
    np.testing.assert_allclose(scores, reference(vl_official, body), atol=SCORE_TOLERANCE, rtol=0)
    assert scores[1] == pytest.approx(scores[3], abs=1e-6)  # the same file, named two ways


def test_return_documents_echoes_the_parts_and_top_n_cuts(client, media_base):
    body = requests(media_base)["image-documents"]
    everything = rerank(client, body).json()
    assert all(r["document"] == body["documents"][r["index"]] for r in everything)
    top = rerank(client, {**body, "top_n": 2}).json()
    assert top == everything[:2]
    bare = rerank(client, {**body, "return_documents": False}).json()
    assert all(set(r) == {"score", "index"} for r in bare)


def test_cohere_and_vllm_shapes_take_content_objects(client, media_base):
    body = requests(media_base)["image-documents"]
    expected = by_index(rerank(client, body).json())
    wrapped = [{"content": d} if isinstance(d, list) else d for d in body["documents"]]
    cohere = client.post("/v2/rerank", json={**body, "documents": wrapped}).json()
    np.testing.assert_allclose(by_index(cohere["results"], "relevance_score"), expected, atol=1e-6, rtol=0)
    assert [r["document"] for r in cohere["results"]] == [
        wrapped[r["index"]] if isinstance(wrapped[r["index"]], dict) else {"text": wrapped[r["index"]]}
        for r in cohere["results"]
    ]
    assert cohere["usage"]["prompt_tokens"] > 0
    image_query = {"content": [text("Find similar images to this:"), image(f"{media_base}/b.png")]}
    assert client.post("/rerank", json={"query": image_query, "documents": ["x"]}).status_code == 200
    # vLLM: a list of inputs, or one {"content": [...]} whose parts are one input each
    listed = client.post("/v1/score", json={"text_1": body["query"], "text_2": wrapped, "instruct": body["instruct"]})
    np.testing.assert_allclose([d["score"] for d in listed.json()["data"]], expected, atol=1e-6, rtol=0)
    parts = {"content": [image(f"{media_base}/a.png"), image(f"{media_base}/c.jpg")]}
    single = client.post("/v1/score", json={"text_1": "q", "text_2": parts}).json()
    split = rerank(client, {"query": "q", "documents": [[p] for p in parts["content"]], "return_documents": False})
    np.testing.assert_allclose([d["score"] for d in single["data"]], by_index(split.json()), atol=1e-6, rtol=0)
    pairwise = client.post("/v1/score", json={"text_1": ["q", {"content": [image(f"{media_base}/a.png")]}],
                                              "text_2": ["d", "e"]})  # fmt: skip
    assert pairwise.status_code == 200 and len(pairwise.json()["data"]) == 2


def test_chunking_splits_text_documents_only(qwen3_vl_artifact, media_base):
    reranker = Reranker.load(str(qwen3_vl_artifact), backend="onnxruntime", threads=1, max_length=256)
    long_text = "pandas eat bamboo and sleep a lot. " * 60
    body = {"query": "panda", "documents": [long_text, [image(f"{media_base}/a.png"), text(long_text)]]}
    with TestClient(create_app(settings(media_allowed_networks=["127.0.0.0/8"]), reranker.model)) as short:
        chunked = rerank(short, {**body, "max_chunks_per_doc": 3, "raw_scores": True})
        assert chunked.status_code == 200, chunked.text
        whole = rerank(short, {**body, "raw_scores": True}).json()
    pieces, _ = chunk_documents(reranker.encoder, "panda", [long_text], None, 3)
    assert len(pieces) == 3
    expected = reranker.logits("panda", pieces).max()
    assert by_index(chunked.json())[0] == pytest.approx(float(expected), abs=1e-5)  # best chunk
    assert by_index(chunked.json())[1] == pytest.approx(by_index(whole)[1], abs=1e-5)  # scored whole, truncated


def test_media_metrics(client, media_base):
    assert rerank(client, requests(media_base)["image-query"]).status_code == 200
    text = client.get("/metrics").text
    assert 'rerankrt_media_items_total{kind="image"}' in text and "rerankrt_media_bytes_total" in text
    assert "rerankrt_media_fetch_seconds_count" in text


# --- refusals -----------------------------------------------------------------------------------


def refused(response: httpx.Response, status: int, param: str, match: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()
    assert error["param"] == param and error["message"].startswith(f"{param}: ")
    assert match in error["message"], error["message"]


@pytest.mark.parametrize(
    "documents, status, param, match",
    [
        (["ok", [{"type": "audio_url", "audio_url": {"url": "x"}}]], 400, "documents[1][0]", "type is 'text'"),
        (["ok", ["just a string"]], 400, "documents[1][0]", "must be a content part"),
        (["ok", 7], 400, "documents[1]", "a string or a list of content parts"),
        ([[text("t"), {"type": "image_url", "image_url": {}}]], 400, "documents[0][1].image_url.url", "required"),
        ([[{"type": "video_url", "video_url": {"url": ""}}]], 400, "documents[0][0].video_url.url", "at least 1"),
        ([[]], 400, "documents[0]", "at least 1 item"),
        ([[image("ftp://example.com/x.png")]], 400, "documents[0][0].image_url.url", "http(s) URL"),
        ([[image("/etc/hostname")]], 400, "documents[0][0].image_url.url", "outside the directory"),
        ([[image("{base}/missing.png")]], 400, "documents[0][0].image_url.url", "HTTP 404"),
        (["x", [image("{base}/a.png")], [image("{base}/big.png")]], 413, "documents[2][0].image_url.url", "bytes"),
        ([[video("{base}/a.png")]], 400, "documents[0][0].video_url.url", "expected video/*"),
    ],
)
def test_bad_parts_and_media_name_the_field(client, media_base, documents, status, param, match):
    documents = json.loads(json.dumps(documents).replace("{base}", media_base))
    refused(rerank(client, {"query": "q", "documents": documents}), status, param, match)


def test_query_parts_are_checked_too(client, media_base):
    body = {"query": [text("q"), image(f"{media_base}/missing.png")], "documents": ["d"]}
    refused(rerank(client, body), 400, "query[1].image_url.url", "HTTP 404")


def test_default_settings_refuse_loopback_and_local_files(vl_rerankers, media_base, media_dir):
    with TestClient(create_app(settings(), vl_rerankers["onnxruntime"].model)) as strict:
        body = {"query": "q", "documents": ["d", [text("t"), image(f"{media_base}/a.png")]]}
        refused(rerank(strict, body), 400, "documents[1][1].image_url.url", "does not resolve to an address")
        local = {"query": "q", "documents": [[image(str(media_dir / "a.png"))]]}
        refused(rerank(strict, local), 400, "documents[0][0].image_url.url", "local files are not enabled")


def test_media_fetch_counts_against_the_request_timeout(vl_rerankers, media_base):
    config = settings(media_allowed_networks=["127.0.0.0/8"], request_timeout=0.5)
    with TestClient(create_app(config, vl_rerankers["onnxruntime"].model)) as slow:
        started = time.monotonic()
        response = rerank(slow, {"query": "q", "documents": [[image(f"{media_base}/a.png?delay=3")]]})
        assert response.status_code == 503
        assert response.json()["message"] == "media not fetched within the request timeout of 0.5 s; retry later"
        assert time.monotonic() - started < 2.5


def test_a_text_model_refuses_media_and_joins_text_parts(model_dirs, media_base):
    reranker = Reranker.load(str(model_dirs["xlmr"]), backend="torch", threads=1)
    with TestClient(create_app(settings(media_allowed_networks=["127.0.0.0/8"]), reranker.model)) as text_client:
        body = {"query": "q", "documents": ["d", [text("a bear"), image(f"{media_base}/a.png")]]}
        refused(rerank(text_client, body), 400, "documents[1][1]", "this model takes text only")
        cohere = {"query": {"content": [image(f"{media_base}/a.png")]}, "documents": ["d"]}
        refused(text_client.post("/rerank", json=cohere), 400, "query.content[0]", "this model takes text only")
        joined = rerank(
            text_client, {"query": [text("what is"), text("panda?")], "documents": [[text("a"), text("b")]]}
        )
        plain = rerank(text_client, {"query": "what is\npanda?", "documents": ["a\nb"]})
        assert joined.json()[0]["score"] == pytest.approx(plain.json()[0]["score"], abs=1e-6)
        assert joined.json()[0]["document"] == [text("a"), text("b")]


# --- the command line ---------------------------------------------------------------------------


def test_export_and_serve_answer_an_image_request(qwen3_vl_dir, vl_official, media_base, tmp_path):
    result = rerankrt("export", qwen3_vl_dir, "--out", tmp_path / "art")
    assert result.returncode == 0, result.stderr
    body = requests(media_base)["image-documents"]
    with running_server(tmp_path / "art", "--media-allowed-networks", "127.0.0.0/8", "--threads", "1") as base:
        response = httpx.post(f"{base}/v1/rerank", json=body, timeout=60)
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(by_index(response.json()), reference(vl_official, body), atol=SCORE_TOLERANCE, rtol=0)
