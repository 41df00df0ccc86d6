"""Servers under test as subprocesses on 127.0.0.1: `rerankrt serve` (and, in bench/lib/infinity.py, Infinity)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(proc: subprocess.Popen, ready: Callable[[], bool], seconds: float) -> bool:
    """Poll `ready()` until it is true (True), the process exits or `seconds` pass (False); a connection refused
    or timed out counts as not ready."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if ready():
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    return False


def wait_healthy(proc: subprocess.Popen, base: str, seconds: float) -> bool:
    """Until `base`/health answers 200 (True), the process exits or `seconds` pass (False)."""
    return wait_until(proc, lambda: httpx.get(f"{base}/health", timeout=2).status_code == 200, seconds)


def stop(proc: subprocess.Popen, seconds: float = 60) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `seconds`."""
    proc.terminate()
    try:
        proc.wait(seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class Server:
    base: str  # http://127.0.0.1:<port>
    proc: subprocess.Popen


@contextmanager
def rerankrt_serve(
    model_path: Path | str,
    flags: list[str],
    port: int | None = None,
    ready: Callable[[str], bool] | None = None,
    start_s: float = 300,
    stop_s: float = 60,
    log: Path | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[Server]:
    """`rerankrt serve --model-path MODEL_PATH --port PORT --log-level warning FLAGS` in a subprocess (this Python,
    HF_HUB_OFFLINE=1), on `port` or a free one; yields it once `ready(base)` (default: /health answers 200),
    RuntimeError if it does not get there within `start_s`. Its stdout is dropped; its stderr goes to `log` when
    given (else to ours). `env`: the environment (default ours)."""
    port = port or free_port()
    cmd = [sys.executable, "-m", "rerankrt.cli", "serve", "--model-path", str(model_path), "--port", str(port)]
    cmd += ["--log-level", "warning", *flags]
    env = {**(os.environ if env is None else env), "HF_HUB_OFFLINE": "1"}
    base = f"http://127.0.0.1:{port}"
    with open(log, "w") if log is not None else nullcontext() as stderr:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            started = wait_until(proc, lambda: ready(base), start_s) if ready else wait_healthy(proc, base, start_s)
            if not started:
                raise RuntimeError(f"`rerankrt serve {' '.join(flags)}` did not start (exit code {proc.returncode})")
            yield Server(base, proc)
        finally:
            stop(proc, stop_s)
