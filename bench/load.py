"""Load generator for `rerankrt serve`: concurrency levels x server configurations, on random-weight models.

For each model (the tiny test XLM-R, an XLM-R base-sized one) and each server
configuration (scheduling oldest-first or interleaved, with and without the
padding cap; batching off = --max-batch-size 1), a server runs in a subprocess
on 127.0.0.1 and clients send requests of K documents of mixed lengths at
concurrency 1/4/16/64. Two workloads:

- closed (default): `concurrency` clients each send their next request as soon
  as the last one is answered; documents of 5-300 words.
- burst: the requests go in bursts of `concurrency`, all of a burst sent at
  once (the next burst after the last answer); documents of 33-432 tokens
  (--doc-tokens). `--requests 16 --docs 32` at concurrency 16 is one burst of
  16 requests of 32 documents, as in issue 15.

Reported per level: requests/s, documents/s, p50/p95/p99 latency, p50/wall
(burst: the median over bursts of p50 / the burst's wall time; closed: p50 /
the level's wall time), mean padding ratio and batches (from /metrics),
errors. JSON and a latency-vs-throughput PNG go to bench/results/ (load*.json,
load*.png; burst: load_burst*).

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python -m bench.load                       # closed loop, both models, ~25 min on 2 cores
    .venv/bin/python -m bench.load --models tiny --requests 40
    # issue 15's comparison (run on a quiet machine): bursts of 16 x 32 documents to the base-sized model,
    # oldest-first vs interleaved scheduling, concurrency 1/4/16/64, ~15 min on 2 cores
    .venv/bin/python -m bench.load --models xlmr-base --workload burst --docs 32 --base-requests 16 \
        --configs oldest-first interleaved "oldest-first, no padding cap" "interleaved, no padding cap"
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
from pathlib import Path

from bench.lib.clients import run_level
from bench.lib.models import SERVED_XLMR, exported_xlmr
from bench.lib.plotting import load_figure
from bench.lib.results import RESULTS, machine, write_result
from bench.lib.servers import rerankrt_serve
from bench.lib.text import requests_of_tokens, requests_of_words

CONFIGS = {
    "oldest-first": [],  # the defaults: oldest-first scheduling; on CPU, batches hold at most 10% padding
    "interleaved": ["--scheduling", "interleaved"],
    "oldest-first, no padding cap": ["--max-padding-ratio", "1"],  # a GPU's default padding
    "interleaved, no padding cap": ["--scheduling", "interleaved", "--max-padding-ratio", "1"],
    "batching off": ["--max-batch-size", "1"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(SERVED_XLMR), choices=list(SERVED_XLMR))
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS), help="server configs")
    parser.add_argument("--workload", default="closed", choices=["closed", "burst"])
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 4, 16, 64])
    parser.add_argument("--docs", type=int, default=8, help="documents per request")
    parser.add_argument("--doc-tokens", nargs=2, type=int, default=[33, 432], help="burst: document tokens, low high")
    parser.add_argument("--requests", type=int, default=64, help="requests per level (tiny model)")
    parser.add_argument("--base-requests", type=int, default=16, help="requests per level (base-sized model)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/rerankrt-bench-load"))
    args = parser.parse_args()

    shutil.rmtree(args.workdir, ignore_errors=True)
    results: dict = {}
    for name in args.models:
        artifact = exported_xlmr(name, args.workdir)
        count = args.requests if name == "tiny" else args.base_requests
        workloads = {}  # the same requests for every config
        for concurrency in args.concurrency:
            if args.workload == "burst":  # whole bursts: at least one, of `concurrency` requests each
                total = -(-max(count, concurrency) // concurrency) * concurrency
                workloads[concurrency] = requests_of_tokens(total, args.docs, args.doc_tokens, seed=concurrency)
            else:
                workloads[concurrency] = requests_of_words(max(count, concurrency), args.docs, seed=concurrency)
        results[name] = {}
        for config in args.configs:
            results[name][config] = []
            with rerankrt_serve(artifact, CONFIGS[config]) as server:
                for concurrency in args.concurrency:
                    level = asyncio.run(run_level(server.base, workloads[concurrency], concurrency, args.workload))
                    results[name][config].append(level)
                    print(
                        f"{name:10s} {config:29s} c={concurrency:<3d} {level['requests_per_s']:7.2f} req/s "
                        f"{level['documents_per_s']:8.1f} docs/s p50 {level['p50_s']:.3f} s p95 {level['p95_s']:.3f} s "
                        f"p99 {level['p99_s']:.3f} s p50/wall {level['p50_over_wall']:.2f} "
                        f"padding {level['padding_ratio'] or 0:.2f} batches {level['batches']:.0f} "
                        f"errors {level['errors']}",
                        flush=True,
                    )
    stem = "load" if args.workload == "closed" else "load_burst"
    path = write_result(stem, {"benchmark": "load", "config": vars(args) | {"workdir": str(args.workdir)},
                               "machine": machine(), "results": results})  # fmt: skip
    load_figure(results, RESULTS / f"{stem}.png")
    print(f"written {path} and {RESULTS / f'{stem}.png'}")


if __name__ == "__main__":
    main()
