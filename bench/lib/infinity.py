"""Infinity (infinity-emb), the peer server `make bench` measures rerankrt against, in its own pinned environment.

Infinity never goes into the project's venv (its pins clash with ours): `ensure_env()` creates
bench/.venv-infinity with `python -m venv` and installs

    torch==2.13.0 'infinity-emb[server,torch,optimum]==0.0.78'   (constrained by bench/infinity-constraints.txt)

`infinity_server()` starts `infinity_emb v2` from that environment on 127.0.0.1 with one of its two CPU engines:

    torch     the model folder as it is (sentence-transformers CrossEncoder under Infinity's batcher)
    optimum   ONNX Runtime on the graph `optimum-cli export onnx` writes (run beforehand, as Infinity requires)

Notes from running it here, each worked around as a user would: the optimum engine finds its graph only when
started from inside the ONNX folder (`--model-id .`; with a path it looks for <path>/<path>/model.onnx); its
warm-up tokenises to max_position_embeddings (514 for XLM-R, 2 past the last position) and crashes, so it runs
with --no-model-warmup (the bench warms it up with a request); its own ORTOptimizer pass fails under optimum 2.x
(an argument 2.x dropped) and it serves the graph unoptimised, ONNX Runtime's default graph optimisations on; usage
telemetry is turned off (DO_NOT_TRACK=1; the machine has no network anyway).

    .venv/bin/python -m bench.peers     # create it if missing (make bench does); --recreate to rebuild it
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from bench.lib.servers import free_port, stop, wait_healthy

HERE = Path(__file__).resolve().parents[1]  # bench/
VENV = HERE / ".venv-infinity"
CONSTRAINTS = HERE / "infinity-constraints.txt"
REQUIREMENTS = ["torch==2.13.0", "infinity-emb[server,torch,optimum]==0.0.78"]
STAMP = VENV / ".installed-stamp"
ENGINES = ("torch", "optimum")


class PeerUnavailable(RuntimeError):
    """The peer could not be installed or started; the message says which command failed and how."""


def _run(cmd: list[str], **kwargs) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise PeerUnavailable(f"`{' '.join(cmd)}` exited with {done.returncode}:\n{tail}")


def ensure_env(recreate: bool = False) -> dict:
    """bench/.venv-infinity, created when missing (or stale against the constraints); what is in it."""
    created_s = None
    if recreate or not STAMP.exists() or STAMP.stat().st_mtime < CONSTRAINTS.stat().st_mtime:
        shutil.rmtree(VENV, ignore_errors=True)
        started = time.perf_counter()
        _run([sys.executable, "-m", "venv", str(VENV)])
        _run([str(VENV / "bin/python"), "-m", "pip", "install", "--quiet", "-c", str(CONSTRAINTS), *REQUIREMENTS])
        created_s = time.perf_counter() - started
        STAMP.touch()
    freeze = subprocess.run([str(VENV / "bin/python"), "-m", "pip", "freeze"], capture_output=True, text=True)
    return {"venv": str(VENV), "requirements": REQUIREMENTS, "created_s": created_s, "packages": freeze.stdout.split()}


def onnx_folder(model_dir: Path, out: Path) -> Path:
    """The ONNX export the optimum engine needs, made with the Infinity environment's own optimum-cli."""
    if not (out / "model.onnx").exists():
        shutil.rmtree(out, ignore_errors=True)
        cmd = [str(VENV / "bin/optimum-cli"), "export", "onnx", "--model", str(model_dir)]
        _run([*cmd, "--task", "text-classification", str(out)], env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return out


@contextmanager
def infinity_server(model_dir: Path, engine: str, workdir: Path, batch_size: int = 32):
    """`infinity_emb v2` on 127.0.0.1 with `engine` (torch: the model folder; optimum: its ONNX export); the base
    URL while it runs. PeerUnavailable, with the end of its log, when it does not come up."""
    if engine not in ENGINES:
        raise ValueError(f"unknown Infinity engine {engine!r}; one of {ENGINES}")
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = [str(VENV / "bin/infinity_emb"), "v2", "--engine", engine, "--device", "cpu", "--batch-size", str(batch_size)]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    if engine == "optimum":  # see the module docstring for why each of these
        cwd = onnx_folder(model_dir, workdir / "infinity-onnx")
        cmd += ["--model-id", ".", "--no-model-warmup"]
    else:
        cwd, cmd = workdir, [*cmd, "--model-id", str(model_dir.resolve())]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1", "HF_HOME": str(workdir / "hf-home")}
    log_path = workdir / f"infinity-{engine}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        if not wait_healthy(proc, base, 600):
            tail = "\n".join(log_path.read_text().splitlines()[-15:])
            raise PeerUnavailable(f"`{' '.join(cmd)}` did not become healthy (exit {proc.returncode}):\n{tail}")
        yield base
    finally:
        stop(proc)
