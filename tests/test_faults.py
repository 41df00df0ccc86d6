"""Fault tests: resource attacks (one huge word, decoded media, slow clients, headers and bodies that never
finish) against a server process under a memory cap (RLIMIT_AS) or a small open-file limit. Each must be answered
with a 4xx (or served within budget) and the server must stay up.

The server is `tests.fake_server` (rerankrt's app and HTTP server over an in-memory model, or a real tokenizer
scoring zeros), so no model is exported; the budgets under test are the server's and the Reranker's own.
"""

from __future__ import annotations

import base64
import socket
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.support import fake_server, image_bytes, mp4_bytes

pytestmark = pytest.mark.integration
GB = 1024**3
MEMORY_CAP = 3 * GB  # address space: the idle server takes about 1 GB of it (torch, onnxruntime, threads)


def data_uri(data: bytes, media_type: str) -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def alive(base: str) -> bool:
    return httpx.get(f"{base}/health", timeout=10).status_code == 200


def test_one_huge_word_is_cut_before_tokenizing_under_a_memory_cap(tokenizer_dirs):
    """A 28 MB single word took ~9.6 GB to tokenize: the process aborted and every in-flight request was lost."""
    word = "a" * 28_000_000
    with fake_server("--tokenizer", str(tokenizer_dirs["xlmr"]), memory=MEMORY_CAP) as (base, _):
        cut = httpx.post(f"{base}/v1/rerank", json={"query": "q", "documents": [word, "b"]}, timeout=120)
        assert cut.status_code == 200, cut.text  # truncated, as long input always is
        strict = {"query": "q", "documents": [word], "truncate": False}
        refused = httpx.post(f"{base}/v1/rerank", json=strict, timeout=120)
        assert refused.status_code == 400 and refused.json()["param"] == "documents[0]"  # over-long, not truncated
        chunked = httpx.post(
            f"{base}/rerank", json={"query": "q", "documents": [word], "max_chunks_per_doc": 50}, timeout=120
        )
        assert chunked.status_code == 200, chunked.text
        assert alive(base)


def test_decoded_media_stay_within_budget_under_a_memory_cap():
    """Forty 7000x7000 1-bit PNGs (a 317 KB body) became 40 x 147 MB of RGB; a 4096x4096 video, +5 GB."""
    png = data_uri(image_bytes(Image.new("1", (7000, 7000))), "image/png")
    images = [
        [{"type": "image_url", "image_url": {"url": png.replace("image/png;", f"image/png;n={i};")}}] for i in range(40)
    ]
    frames = (np.zeros((4096, 4096, 3), np.uint8) for _ in range(24))
    video = [{"type": "video_url", "video_url": {"url": data_uri(mp4_bytes(frames, fps=1), "video/mp4")}}]
    settings = {"max_documents_per_request": 100}
    with fake_server("--multimodal", settings=settings, memory=MEMORY_CAP) as (base, _):
        bomb = httpx.post(f"{base}/v1/rerank", json={"query": "q", "documents": images}, timeout=120)
        assert bomb.status_code == 413 and "pixels" in bomb.json()["message"], bomb.text
        clip = httpx.post(f"{base}/v1/rerank", json={"query": "q", "documents": [video]}, timeout=120)
        assert clip.status_code == 200, clip.text  # frames scaled down while decoding
        many = httpx.post(f"{base}/v1/rerank", json={"query": "q", "documents": images * 2}, timeout=120)
        assert many.status_code == 413 and "parts" in many.json()["message"]
        assert alive(base)


def test_slow_clients_cannot_lock_the_server_out():
    """~1100 connections sending headers a byte at a time (more than the open-file limit) made /health time out."""
    settings = {"header_timeout": 2}
    with fake_server(settings=settings, open_files=1024) as (base, _):
        port = int(base.rsplit(":", 1)[1])
        slow = []
        for _ in range(1100):  # more than the server has descriptors for
            sock = socket.socket()
            sock.settimeout(5)
            try:
                sock.connect(("127.0.0.1", port))
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # never finished
            except OSError:
                sock.close()
                continue
            slow.append(sock)
        try:
            started = time.monotonic()
            assert httpx.get(f"{base}/health", timeout=5).status_code == 200
            assert time.monotonic() - started < 3
            time.sleep(2.5)  # past the header timeout: the slow ones were closed
            for sock in slow[:50]:  # evicted for newer ones, or timed out: closed, perhaps after a 408
                try:
                    answer = sock.recv(4096)
                except ConnectionResetError:
                    continue
                assert answer == b"" or answer.startswith(b"HTTP/1.1 408 "), answer
        finally:
            for sock in slow:
                sock.close()
        assert alive(base)


def test_headers_and_bodies_that_never_finish_are_timed_out():
    settings = {"header_timeout": 1, "body_timeout": 1}
    with fake_server(settings=settings) as (base, _):
        port = int(base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\n")
            started = time.monotonic()
            answer = sock.recv(4096)
            assert answer.startswith(b"HTTP/1.1 408 ") and time.monotonic() - started < 3
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 1000\r\n\r\n{\"query\": ")  # fmt: skip
            started = time.monotonic()
            while sock.recv(4096):
                pass
            assert time.monotonic() - started < 3  # closed, not held for the request timeout
        assert alive(base)
