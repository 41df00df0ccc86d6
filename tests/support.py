"""Test helpers: a held backend, a fake clock and an in-process client, `rerankrt` as a subprocess, media files
and their server, a hand-written artifact folder."""

from __future__ import annotations

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
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import av
import httpx
import numpy as np
import pytest
from PIL import Image

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


MEDIA_TYPES = {"png": "image/png", "jpg": "image/jpeg", "mp4": "video/mp4", "txt": "text/plain"}


class MediaHandler(BaseHTTPRequestHandler):
    """Serves `files` (set by serve_media), plus routes that exercise the fetcher's limits.

    /<name>[?type=<content type>&delay=<s>]   files[name], typed by its extension unless `type` is given
    /redirect?to=<url>                        a 302 to <url>
    /hops/<n>?to=<path>                       n redirects in a row, then <path>
    /huge-length                              a Content-Length of 1 TB
    /endless                                  a chunked body of up to 64 MiB
    Every route waits `delay` seconds first.
    """

    protocol_version = "HTTP/1.1"
    files: dict[str, bytes] = {}

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = {key: values[0] for key, values in parse_qs(url.query).items()}
        time.sleep(float(query.get("delay", 0)))
        name = url.path.lstrip("/")
        with contextlib.suppress(ConnectionError):  # clients that stop reading early
            if name in self.files:
                self.reply(200, self.files[name], query.get("type", MEDIA_TYPES[name.rsplit(".", 1)[1]]))
            elif url.path == "/redirect":
                self.reply(302, b"", "text/plain", Location=query["to"])
            elif url.path.startswith("/hops/"):
                hops = int(url.path[6:])
                self.reply(
                    302, b"", "text/plain", Location=f"/hops/{hops - 1}?to={query['to']}" if hops > 1 else query["to"]
                )
            elif url.path == "/huge-length":
                self.reply(200, b"\x89PNG", "image/png", **{"Content-Length": str(10**12)})
            elif url.path == "/endless":
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                chunk = b"\0" * 65536
                for _ in range(1024):  # 64 MiB at most, should the client not stop reading
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.write(b"0\r\n\r\n")
            else:
                self.reply(404, b"not found", "text/plain")

    def reply(self, status: int, body: bytes, content_type: str, **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        headers.setdefault("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


@contextlib.contextmanager
def serve_media(files: dict[str, bytes], host: str = "127.0.0.1"):
    """A MediaHandler for `files` on a free port of `host`, in a thread; yields its base URL."""
    handler = type("FilesHandler", (MediaHandler,), {"files": files})
    server = ThreadingHTTPServer((host, 0), handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield f"http://{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


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
