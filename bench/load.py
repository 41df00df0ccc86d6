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
    .venv/bin/python bench/load.py                       # closed loop, both models, ~25 min on 2 cores
    .venv/bin/python bench/load.py --models tiny --requests 40
    # issue 15's comparison (run on a quiet machine): bursts of 16 x 32 documents to the base-sized model,
    # oldest-first vs interleaved scheduling, concurrency 1/4/16/64, ~15 min on 2 cores
    .venv/bin/python bench/load.py --models xlmr-base --workload burst --docs 32 --base-requests 16 \
        --configs oldest-first interleaved "oldest-first, no padding cap" "interleaved, no padding cap"
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, machine, write_result  # noqa: E402
from rerankrt.testing.tiny_models import CORPUS, build_xlmr, build_xlmr_tokenizer  # noqa: E402

WORDS = sorted({w for line in CORPUS for w in line.split()})
CONFIGS = {
    "oldest-first": [],  # the defaults: oldest-first scheduling; on CPU, batches hold at most 10% padding
    "interleaved": ["--scheduling", "interleaved"],
    "oldest-first, no padding cap": ["--max-padding-ratio", "1"],  # a GPU's default padding
    "interleaved, no padding cap": ["--scheduling", "interleaved", "--max-padding-ratio", "1"],
    "batching off": ["--max-batch-size", "1"],
}


def build_base_xlmr(out: Path) -> Path:
    """bge-reranker-base's shape (hidden 768, 12 layers, vocab 250002), random weights, the tiny tokenizer."""
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    tokenizer = build_xlmr_tokenizer()
    config = XLMRobertaConfig(
        vocab_size=250002, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
        max_position_embeddings=514, type_vocab_size=1, num_labels=1, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    XLMRobertaForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(proc: subprocess.Popen, base: str, seconds: float) -> bool:
    """Poll `base`/health until it answers 200 (True), the process exits or `seconds` pass (False)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return True
        except httpx.TransportError:
            time.sleep(0.5)
    return False


@contextmanager
def server(artifact: Path, flags: list[str]):
    port = free_port()
    cmd = [sys.executable, "-m", "rerankrt.cli", "serve", "--model-path", str(artifact), "--port", str(port)]
    cmd += ["--log-level", "warning", *flags]
    proc = subprocess.Popen(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        if not wait_healthy(proc, base, 300):
            raise RuntimeError(f"`rerankrt serve {' '.join(flags)}` did not start (exit code {proc.returncode})")
        yield base
    finally:
        proc.terminate()
        proc.wait(60)


def make_requests(count: int, docs: int, seed: int) -> list[dict]:
    """Requests of `docs` documents, 5-300 words each (mixed lengths, as real retrieval results are)."""
    rng = np.random.default_rng(seed)
    return [
        {
            "query": " ".join(rng.choice(WORDS, size=int(rng.integers(3, 12)))),
            "documents": [" ".join(rng.choice(WORDS, size=int(rng.integers(5, 300)))) for _ in range(docs)],
            "return_documents": False,
        }
        for _ in range(count)
    ]


def make_burst_requests(count: int, docs: int, tokens: tuple[int, int], seed: int) -> list[dict]:
    """Requests of `docs` documents of `tokens` (low, high) tokens each, uniformly, with 3-12 word queries."""
    from bench.cpu_speed import text_of_tokens

    tokenizer = build_xlmr_tokenizer()
    rng = np.random.default_rng(seed)
    return [
        {
            "query": " ".join(rng.choice(WORDS, size=int(rng.integers(3, 12)))),
            "documents": [
                text_of_tokens(tokenizer, rng, int(rng.integers(tokens[0], tokens[1] + 1))) for _ in range(docs)
            ],
            "return_documents": False,
        }
        for _ in range(count)
    ]


def padding_stats(text: str) -> tuple[float, float]:
    total = float(re.search(r"^rerankrt_batch_padding_ratio_sum (\S+)$", text, re.M).group(1))
    count = float(re.search(r"^rerankrt_batch_padding_ratio_count (\S+)$", text, re.M).group(1))
    return total, count


async def run_level(base: str, requests: list[dict], concurrency: int, workload: str = "closed") -> dict:
    latencies: list[float] = []
    ratios: list[float] = []  # burst: each burst's p50 / its wall time
    errors = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=600, limits=limits) as client:
        before = padding_stats((await client.get("/metrics")).text)

        async def send(body: dict) -> float | None:
            nonlocal errors
            started = time.perf_counter()
            response = await client.post("/v1/rerank", json=body)
            if response.status_code != 200:
                errors += 1
                return None
            latencies.append(time.perf_counter() - started)
            return latencies[-1]

        started = time.perf_counter()
        if workload == "burst":
            for start in range(0, len(requests), concurrency):
                burst_started = time.perf_counter()
                answered = await asyncio.gather(*(send(body) for body in requests[start : start + concurrency]))
                wall = time.perf_counter() - burst_started
                answered = [seconds for seconds in answered if seconds is not None]
                if answered:
                    ratios.append(float(np.percentile(answered, 50)) / wall)
        else:
            queue: asyncio.Queue = asyncio.Queue()
            for body in requests:
                queue.put_nowait(body)

            async def worker():
                while not queue.empty():
                    await send(queue.get_nowait())

            await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        after = padding_stats((await client.get("/metrics")).text)
    done = len(latencies)
    docs = sum(len(body["documents"]) for body in requests) * done / len(requests)
    batches = after[1] - before[1]
    p50 = float(np.percentile(latencies, 50)) if latencies else None
    return {
        "concurrency": concurrency,
        "requests": len(requests),
        "errors": errors,
        "requests_per_s": done / elapsed,
        "documents_per_s": docs / elapsed,
        "p50_s": p50,
        "p95_s": float(np.percentile(latencies, 95)) if latencies else None,
        "p99_s": float(np.percentile(latencies, 99)) if latencies else None,
        "p50_over_wall": float(np.median(ratios)) if ratios else (p50 / elapsed if p50 is not None else None),
        "wall_s": elapsed,
        "padding_ratio": (after[0] - before[0]) / batches if batches else None,
        "batches": batches,
    }


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(results)
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        for config, levels in results[model].items():
            xs = [level["documents_per_s"] for level in levels]
            ys = [level["p50_s"] for level in levels]
            ax.plot(xs, ys, marker="o", label=config)
            for level, x, y in zip(levels, xs, ys, strict=True):
                ax.annotate(f"c={level['concurrency']}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_title(model)
        ax.set_xlabel("documents / s")
        ax.set_ylabel("p50 latency (s)")
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tiny", "xlmr-base"], choices=["tiny", "xlmr-base"])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS), help="server configs")
    parser.add_argument("--workload", default="closed", choices=["closed", "burst"])
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 4, 16, 64])
    parser.add_argument("--docs", type=int, default=8, help="documents per request")
    parser.add_argument("--doc-tokens", nargs=2, type=int, default=[33, 432], help="burst: document tokens, low high")
    parser.add_argument("--requests", type=int, default=64, help="requests per level (tiny model)")
    parser.add_argument("--base-requests", type=int, default=16, help="requests per level (base-sized model)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/rerankrt-bench-load"))
    args = parser.parse_args()

    from rerankrt.export import export_model

    shutil.rmtree(args.workdir, ignore_errors=True)
    builders = {"tiny": build_xlmr, "xlmr-base": build_base_xlmr}
    results: dict = {}
    for name in args.models:
        model_dir = builders[name](args.workdir / name)
        artifact = args.workdir / f"{name}-artifact"
        export_model(str(model_dir), artifact)
        count = args.requests if name == "tiny" else args.base_requests
        workloads = {}  # the same requests for every config
        for concurrency in args.concurrency:
            if args.workload == "burst":  # whole bursts: at least one, of `concurrency` requests each
                total = -(-max(count, concurrency) // concurrency) * concurrency
                workloads[concurrency] = make_burst_requests(total, args.docs, args.doc_tokens, seed=concurrency)
            else:
                workloads[concurrency] = make_requests(max(count, concurrency), args.docs, seed=concurrency)
        results[name] = {}
        for config in args.configs:
            results[name][config] = []
            with server(artifact, CONFIGS[config]) as base:
                for concurrency in args.concurrency:
                    level = asyncio.run(run_level(base, workloads[concurrency], concurrency, args.workload))
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
    RESULTS.mkdir(exist_ok=True)
    plot(results, RESULTS / f"{stem}.png")
    print(f"written {path} and {RESULTS / f'{stem}.png'}")


if __name__ == "__main__":
    main()
