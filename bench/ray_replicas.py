"""Ray Serve replicas on this machine: documents/s and p50/p99 latency for the plain server and for
`rerankrt serve --ray` with 1 and 2 replicas, all on the same CPU cores.

The same cores in every configuration: the plain server and the 1-replica deployment run 2 ONNX Runtime threads,
the 2-replica deployment 1 thread per replica. Clients (bench/load.py's closed-loop requests: `--docs` documents of
5-300 words) keep `--concurrency` requests in flight. Models: the tiny test XLM-R and a bge-reranker-base-sized XLM-R
with random weights (bench/lib/models.py). JSON to bench/results/ray_replicas.json; each server's log in --workdir.

    .venv/bin/pip install -e '.[ray]'
    .venv/bin/python -m bench.ray_replicas                   # ~20 min on 2 cores (the base-sized model)
    .venv/bin/python -m bench.ray_replicas --models tiny
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
from pathlib import Path

import httpx

from bench.lib.clients import run_level
from bench.lib.models import SERVED_XLMR, exported_xlmr
from bench.lib.results import machine, write_result
from bench.lib.servers import rerankrt_serve
from bench.lib.text import requests_of_words

CONFIGS = {
    "plain server, 2 threads": ["--threads", "2"],
    "ray, 1 replica x 2 threads": ["--ray", "--replicas", "1", "--threads", "2", "--replica-cpus", "2"],
    "ray, 2 replicas x 1 thread": ["--ray", "--replicas", "2", "--threads", "1", "--replica-cpus", "1"],
}


def replicas_answered(replicas: int):
    """A readiness check for rerankrt_serve: true once `replicas` distinct replicas (or the plain server) have
    answered a small request."""
    seen: set = set()

    def ready(base: str) -> bool:
        response = httpx.post(f"{base}/v1/rerank", json={"query": "q", "documents": ["d"]}, timeout=10)
        if response.status_code == 200:
            seen.add(response.headers.get("x-rerankrt-replica", "plain"))
        return len(seen) >= replicas

    return ready


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(SERVED_XLMR), choices=list(SERVED_XLMR))
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--docs", type=int, default=8, help="documents per request")
    parser.add_argument("--requests", type=int, default=400, help="requests per configuration (tiny model)")
    parser.add_argument("--base-requests", type=int, default=40, help="requests per configuration (base-sized)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/rerankrt-bench-ray"))
    args = parser.parse_args()

    shutil.rmtree(args.workdir, ignore_errors=True)
    results: dict = {}
    for name in args.models:
        artifact = exported_xlmr(name, args.workdir)
        count = args.requests if name == "tiny" else args.base_requests
        requests = requests_of_words(count, args.docs, seed=0)
        results[name] = {}
        for config, flags in CONFIGS.items():
            replicas = int(flags[flags.index("--replicas") + 1]) if "--ray" in flags else 1
            flags = ["--max-ongoing-requests", "64", *flags]
            env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a Ray of its own
            log = args.workdir / f"{name}-{re.sub(r'[^a-z0-9]+', '-', config)}.log"
            ready = replicas_answered(replicas)
            with rerankrt_serve(artifact, flags, ready=ready, stop_s=120, log=log, env=env) as server:
                asyncio.run(run_level(server.base, requests[: args.concurrency * 2], args.concurrency))  # warm
                level = asyncio.run(run_level(server.base, requests, args.concurrency))
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
