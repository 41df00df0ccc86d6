"""Ray Serve replicas on this machine: documents/s and p50/p99 latency for the plain server and for
`rerankrt serve --ray` with 1 and 2 replicas, all on the same CPU cores.

The same cores in every configuration: the plain server and the 1-replica deployment run 2 ONNX Runtime threads,
the 2-replica deployment 1 thread per replica. Clients (bench/load.py's requests: `--docs` documents of 5-300 words)
keep `--concurrency` requests in flight. Models: the tiny test XLM-R and a bge-reranker-base-sized XLM-R with
random weights (bench/load.py). JSON to bench/results/ray_replicas.json.

    .venv/bin/pip install -e '.[ray]'
    .venv/bin/python bench/ray_replicas.py                   # ~20 min on 2 cores (the base-sized model)
    .venv/bin/python bench/ray_replicas.py --models tiny
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine, write_result  # noqa: E402
from bench.load import build_base_xlmr, free_port, make_requests, run_level  # noqa: E402
from rerankrt.testing.tiny_models import build_xlmr  # noqa: E402

CONFIGS = {
    "plain server, 2 threads": ["--threads", "2"],
    "ray, 1 replica x 2 threads": ["--ray", "--replicas", "1", "--threads", "2", "--replica-cpus", "2"],
    "ray, 2 replicas x 1 thread": ["--ray", "--replicas", "2", "--threads", "1", "--replica-cpus", "1"],
}


@contextmanager
def server(artifact: Path, flags: list[str], replicas: int):
    """The server on a free port, once `replicas` distinct replicas (or the plain server) have answered."""
    port = free_port()
    cmd = [sys.executable, "-m", "rerankrt.cli", "serve", "--model-path", str(artifact), "--port", str(port)]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [*cmd, "--log-level", "warning", "--max-ongoing-requests", "64", *flags],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        seen: set = set()
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and len(seen) < replicas:
            try:
                response = httpx.post(f"{base}/v1/rerank", json={"query": "q", "documents": ["d"]}, timeout=10)
                if response.status_code == 200:
                    seen.add(response.headers.get("x-rerankrt-replica", "plain"))
                    continue
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        if len(seen) < replicas:
            raise RuntimeError(f"{replicas} replicas did not answer")
        yield base
    finally:
        proc.terminate()
        proc.wait(120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tiny", "xlmr-base"], choices=["tiny", "xlmr-base"])
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--docs", type=int, default=8, help="documents per request")
    parser.add_argument("--requests", type=int, default=400, help="requests per configuration (tiny model)")
    parser.add_argument("--base-requests", type=int, default=40, help="requests per configuration (base-sized)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/rerankrt-bench-ray"))
    args = parser.parse_args()

    from rerankrt.export import export_model

    shutil.rmtree(args.workdir, ignore_errors=True)
    builders = {"tiny": build_xlmr, "xlmr-base": build_base_xlmr}
    results: dict = {}
    for name in args.models:
        artifact = args.workdir / f"{name}-artifact"
        export_model(str(builders[name](args.workdir / name)), artifact)
        count = args.requests if name == "tiny" else args.base_requests
        requests = make_requests(count, args.docs, seed=0)
        results[name] = {}
        for config, flags in CONFIGS.items():
            replicas = int(flags[flags.index("--replicas") + 1]) if "--ray" in flags else 1
            with server(artifact, flags, replicas) as base:
                asyncio.run(run_level(base, requests[: args.concurrency * 2], args.concurrency))  # warm
                level = asyncio.run(run_level(base, requests, args.concurrency))
            level = {k: v for k, v in level.items() if k not in ("padding_ratio", "batches")}  # /metrics: 1 replica
            results[name][config] = level
            print(
                f"{name:10s} {config:28s} c={args.concurrency} {level['documents_per_s']:8.1f} docs/s "
                f"p50 {level['p50_s'] * 1000:7.1f} ms p99 {level['p99_s'] * 1000:7.1f} ms errors {level['errors']}",
                flush=True,
            )
    path = write_result(
        "ray_replicas",
        {"benchmark": "ray_replicas", "config": vars(args) | {"workdir": str(args.workdir)}, "machine": machine(),
         "results": results},
    )  # fmt: skip
    print(f"written {path}")


if __name__ == "__main__":
    main()
