"""Test helpers: a held backend, a fake clock and an in-process client, `rerankrt` as a subprocess, media files,
their server and fetching them, a hand-written artifact folder. (In-memory stand-ins for rerankrt's parts are in
tests/fakes.py.)"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import av
import httpx
import numpy as np
import pytest
from PIL import Image

from rerankrt.errors import InputError
from rerankrt.server.media import MediaFetcher, MediaLimits, MediaRef
from rerankrt.server.schemas import TINY_PNG

# the media server (MediaHandler, serve_media) lives in rerankrt.testing: the benchmarks use it too
from rerankrt.testing.media_server import MEDIA_TYPES, MediaHandler, serve_media  # noqa: F401

# --- making the server slow on purpose ----------------------------------------------------------


class HeldBackend:
    """A real backend held until the test releases it."""

    def __init__(self, inner):
        self.inner = inner
        self.name, self.device = inner.name, inner.device
        self.release = threading.Event()
        self.entered = threading.Event()
        self.batches = 0

    def run(self, batch):
        self.entered.set()
        assert self.release.wait(30), "the test never released the backend"
        self.released(batch)
        self.batches += 1
        return self.inner.run(batch)

    def released(self, batch) -> None:
        """What a subclass does once the pass is released, before it runs."""


class FakeClock:
    """A clock that moves only when told (`advance`): the scheduler's and the server's deadlines run on it."""

    def __init__(self, now: float = 0.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@contextlib.asynccontextmanager
async def asgi_client(app):
    """The app with its lifespan (warm-up, scheduler shutdown) and an httpx client talking to it in-process."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as http:
            yield http


# --- API requests and error bodies -------------------------------------------------------------------


def text_part(value: str) -> dict:
    """A text content part."""
    return {"type": "text", "text": value}


def image_part(url: str = TINY_PNG) -> dict:
    """An image content part (by default a tiny PNG as a data: URI)."""
    return {"type": "image_url", "image_url": {"url": url}}


def api_error(response, status: int, param: str) -> dict:
    """The error body, rerankrt's (SGLang's) or vLLM's (the same fields under "error", on its score paths)."""
    assert response.status_code == status, response.text
    body = response.json()
    error = body["error"] if isinstance(body.get("error"), dict) else body
    assert error["param"] == param, error
    assert error["message"].startswith(f"{param}: ") and error["code"] == status
    assert "error" in body or error["object"] == "error"
    return error


def peer_error(response, status: int, param: str) -> str:
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


# --- the command line as a user runs it ----------------------------------------------------------

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}
SERVERS: dict[str, subprocess.Popen] = {}  # base URL -> process, while running_server holds it


def rerankrt(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "rerankrt.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(proc: subprocess.Popen, base: str, seconds: float = 120) -> None:
    """Until `base`/health answers 200; the test fails with the server's output if it exits or never does."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    pytest.fail(f"the server did not become healthy:\n{proc.communicate()[0]}")


@contextlib.contextmanager
def running_server(model_path, *flags):
    """`rerankrt serve` in a subprocess on a free port; yields its base URL, then stops it with SIGTERM."""
    port = free_port()
    env = {**ENV, "RERANKRT_PORT": str(port)}  # configuration by environment variable
    proc = subprocess.Popen(
        [sys.executable, "-m", "rerankrt.cli", "serve", "--model-path", str(model_path), *flags],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    wait_healthy(proc, base)
    SERVERS[base] = proc
    try:
        yield base
    finally:
        proc.terminate()
        SERVERS.pop(base)
        output = proc.communicate(timeout=30)[0]
    # uvicorn finishes in-flight work, then re-raises SIGTERM (exit status -15)
    assert "Application shutdown complete" in output
    assert proc.returncode in (0, -15), output


# --- media files and a local HTTP server for them -------------------------------------------------


def image_bytes(image: Image.Image | np.ndarray, fmt: str = "PNG", **options) -> bytes:
    """The image (or uint8 array) encoded as `fmt`, with Pillow's save `options` (quality, exif, ...)."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def mp4_bytes(frames: Iterable[np.ndarray], fps: int) -> bytes:
    """An MPEG-4 clip of the RGB uint8 frames (height x width x 3) at `fps`."""
    frames = list(frames)
    height, width = frames[0].shape[:2]
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        container.mux(stream.encode())
    return buffer.getvalue()


MEDIA_FIELD = "documents[3].content[1].image_url.url"  # where a client sent a media ref, in the tests' refs


def png(size: tuple[int, int], mode: str = "RGB") -> bytes:
    """A gray PNG of `size` (width, height) in Pillow `mode`."""
    return image_bytes(Image.new(mode, size, 128))


def fetch(limits: MediaLimits, *refs: MediaRef) -> list:
    """The refs fetched and decoded by a MediaFetcher with `limits`, in order."""

    async def main():
        async with MediaFetcher(limits) as fetcher:
            return await fetcher.fetch_all(refs)

    return asyncio.run(main())


def image_ref(url: str, field: str = MEDIA_FIELD) -> MediaRef:
    """An image reference as an API adapter makes one, `field` naming where the client sent it."""
    return MediaRef("image", url, field)


def fetch_refused(limits: MediaLimits, ref: MediaRef, match: str, error: type[InputError] = InputError) -> InputError:
    """The fetch fails with `error`, naming the ref's field, with a message matching `match`."""
    with pytest.raises(error, match=match) as info:
        fetch(limits, ref)
    assert info.value.field == ref.field and str(info.value).startswith(f"{ref.field}: ")
    return info.value


def data_uri(data: bytes, media_type: str) -> str:
    """`data` as a base64 data: URI of `media_type`."""
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


# --- an artifact folder written by hand -------------------------------------------------------------


def edit_manifest(folder: Path, change) -> None:
    """`change(data)` applied to the artifact's manifest.json as parsed JSON, written back."""
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_fake_artifact(folder: Path, precision: str = "fp32") -> Path:
    """An artifact folder as `rerankrt export` lays it out, with made-up graph bytes: for manifest checks only.

    A cross-encoder with model.onnx, tokenizer.json, a passed parity.json and every file hashed in
    manifest.json; a precision other than fp32 adds its graph and a passed fidelity.json.
    """
    import transformers

    folder.mkdir(parents=True)
    graphs = {"scorer": "model.onnx"}
    if precision != "fp32":
        graphs[f"scorer.{precision}"] = f"model.{precision}.onnx"
        (folder / "fidelity.json").write_text(json.dumps({"passed": True, "accepted": False}))
    for file in graphs.values():
        (folder / file).write_bytes(f"not really an ONNX graph: {file}".encode())
    (folder / "tokenizer.json").write_text("{}")
    (folder / "parity.json").write_text(json.dumps({"passed": True, "max_abs_diff": 1e-6}))
    io_names = {"inputs": ["input_ids", "attention_mask"], "outputs": ["logits"]}
    manifest = {
        "format_version": 1,
        "family": "cross-encoder",
        "source": {"ref": "tiny-org/tiny-reranker", "architecture": "XLMRobertaForSequenceClassification"},
        "max_length": 512,
        "precision": precision,
        "opset": 17,
        "graphs": {role: {"file": file, **io_names} for role, file in graphs.items()},
        "engines": [],
        "encoder_files": ["tokenizer.json"],
        "versions": {"transformers": transformers.__version__},
        "files": {f.name: sha256(f) for f in sorted(folder.iterdir())},
        "created_at": "2026-01-01T00:00:00+00:00",
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return folder


# --- a server process over an in-memory model, under resource limits ----------------------------


def address_space_limit(limit_bytes: int | None, open_files: int | None = None):
    """A preexec_fn capping the child's address space (RLIMIT_AS) and open files: out of memory it gets
    MemoryError or dies, and a test sees which."""
    import resource

    def apply():
        if limit_bytes is not None:
            resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))
        if open_files is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))

    return apply


@contextlib.contextmanager
def fake_server(*args: str, settings: dict | None = None, memory: int | None = None, open_files: int | None = None):
    """`python -m tests.fake_server ARGS` on a free port with RERANKRT_* `settings`, optionally under an address
    space cap (bytes) and an open-file limit; yields (base URL, process). The test must leave it running."""
    port = free_port()
    env = {**ENV, "RERANKRT_PORT": str(port), **{f"RERANKRT_{k.upper()}": str(v) for k, v in (settings or {}).items()}}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_server", *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=address_space_limit(memory, open_files), cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    wait_healthy(proc, base)
    try:
        yield base, proc
    finally:
        alive = proc.poll() is None
        proc.terminate()
        try:
            output = proc.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            output = proc.communicate()[0]
        proc.output = output
    assert alive, f"the server died during the test:\n{output[-3000:]}"


def vm_size(pid: int) -> int:
    """The process's address space now (bytes), from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize")


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (the first one again at the end), or None."""
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for child in sorted(graph.get(node, ())):
            if state.get(child) == "open":
                return [*path[path.index(child) :], child] if child in path else [node, child]
            if child not in state and (cycle := visit(child, [*path, child])):
                return cycle
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node, [node])):
            return cycle
    return None
