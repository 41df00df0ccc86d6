"""Soak test for `rerankrt serve`: a fixed request rate at ~80% of measured capacity for a long time, watching the
server process for leaks and drift: RSS, open file descriptors, threads, p50/p99 latency and errors per window.

The server runs in a subprocess on 127.0.0.1 (the tiny test cross-encoder, exported here, unless --model-path
names an artifact). First a closed loop of --concurrency clients measures capacity (requests/s); then an open
loop sends requests at --load x capacity on a fixed schedule (a slow server cannot slow the offered load down)
for --minutes, sampling every --window seconds. Each request is a query and --documents documents of mixed
length; a tenth of them also carry hostile parts the budgets must refuse (an over-long text without truncation,
too many documents), so the refusal paths soak too. JSON and a PNG go to bench/results/soak.{json,png}.

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python -m bench.soak                    # the full hour
    .venv/bin/python -m bench.soak --minutes 10       # a shorter run
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bench.lib.models import exported_xlmr
from bench.lib.plotting import soak_figure
from bench.lib.results import RESULTS, cpu_model, machine, write_result
from bench.lib.servers import rerankrt_serve
from rerankrt.testing.reference import WORDS


def process_stats(pid: int) -> dict:
    """RSS (MB), threads and open descriptors of a process, from /proc."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {
        "rss_mb": int(status["VmRSS"].split()[0]) / 1024,
        "threads": int(status["Threads"]),
        "fds": len(list(Path(f"/proc/{pid}/fd").iterdir())),
    }


def body(rng: random.Random, documents: int) -> dict:
    docs = [" ".join(rng.choices(WORDS, k=rng.randint(5, 80))) for _ in range(documents)]
    request = {"query": " ".join(rng.choices(WORDS, k=rng.randint(2, 10))), "documents": docs}
    if rng.random() < 0.05:  # hostile: over the text budget without truncation (400)
        request.update(documents=["x" * 100_000], truncate=False)
    elif rng.random() < 0.05:  # hostile: over the documents limit (413)
        request["documents"] = ["d"] * 1001
    return request


async def one(client: httpx.AsyncClient, base: str, request: dict, latencies: list, errors: list) -> None:
    started = time.perf_counter()
    try:
        response = await client.post(f"{base}/v1/rerank", json=request, timeout=30)
        expected = 400 if request.get("truncate") is False else 413 if len(request["documents"]) > 1000 else 200
        ok = response.status_code == expected
        if not ok:
            errors.append(f"HTTP {response.status_code}")
    except httpx.HTTPError as exc:
        errors.append(type(exc).__name__)
        return
    if ok and not (request.get("truncate") is False or len(request["documents"]) > 1000):
        latencies.append(time.perf_counter() - started)


async def capacity(base: str, seconds: float, concurrency: int, documents: int) -> float:
    """Requests/s a closed loop of `concurrency` clients gets (ordinary requests only)."""
    rng = random.Random(1)
    done, deadline = 0, time.monotonic() + seconds

    async def client_loop(client):
        nonlocal done
        while time.monotonic() < deadline:
            request = {"query": "a query", "documents": body(rng, documents)["documents"][:documents]}
            if len(request["documents"]) == documents:
                await client.post(f"{base}/v1/rerank", json=request, timeout=30)
                done += 1

    async with httpx.AsyncClient() as client:
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
    return done / seconds


async def soak(
    base: str, pid: int, rate: float, minutes: float, window: float, documents: int, max_in_flight: int
) -> list[dict]:
    """Requests at `rate`/s on a fixed schedule; one sample per window. A request due while `max_in_flight` are
    unanswered is not sent (counted as shed): when another process takes the machine and the server falls behind,
    the backlog would otherwise pile up in this client, whose connection pool slows with it until it answers
    nothing, and the soak would measure the client."""
    rng = random.Random(2)
    samples, pending = [], set()
    start = time.monotonic()
    end = start + minutes * 60
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
    async with httpx.AsyncClient(limits=limits) as client:
        sent = 0
        completed, failed = [], []  # latencies and errors as requests end; each window takes those that ended in it
        while time.monotonic() < end:
            window_start, offered, shed = time.monotonic(), 0, 0
            while time.monotonic() < min(window_start + window, end):
                due = start + sent / rate
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                sent += 1
                offered += 1
                if len(pending) >= max_in_flight:
                    shed += 1
                    continue
                task = asyncio.ensure_future(one(client, base, body(rng, documents), completed, failed))
                pending.add(task)
                task.add_done_callback(pending.discard)
            stats = process_stats(pid)
            latencies, errors = completed[:], failed[:]
            del completed[:], failed[:]
            ordered = sorted(latencies)
            sample = {
                "t_s": round(time.monotonic() - start, 1),
                "offered_rps": round(offered / window, 2),
                "answered": len(latencies),
                "errors": len(errors),
                "error_kinds": sorted(set(errors)),
                "shed": shed,
                "in_flight": len(pending),
                "p50_ms": round(1000 * statistics.median(ordered), 1) if ordered else None,
                "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 1)
                if ordered
                else None,
                **stats,
            }
            samples.append(sample)
            print(
                f"{sample['t_s']:7.0f} s  {sample['offered_rps']:5.1f} req/s  p50 {sample['p50_ms']} ms  "
                f"p99 {sample['p99_ms']} ms  errors {sample['errors']}  shed {shed}  rss {stats['rss_mb']:.0f} MB  "
                f"fds {stats['fds']}  threads {stats['threads']}",
                flush=True,
            )
        await asyncio.gather(*pending, return_exceptions=True)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", help="an artifact folder (default: the tiny cross-encoder, exported here)")
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--load", type=float, default=0.8, help="share of measured capacity to offer")
    parser.add_argument("--window", type=float, default=10.0, help="seconds per sample")
    parser.add_argument("--documents", type=int, default=8, help="documents per request")
    parser.add_argument("--concurrency", type=int, default=8, help="clients while measuring capacity")
    parser.add_argument("--threads", type=int, default=1, help="the server's --threads")
    parser.add_argument("--max-in-flight", type=int, default=256, help="unanswered requests at most (the rest: shed)")
    parser.add_argument("--port", type=int, default=30917)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="rerankrt-soak-") as tmp:
        model_path = args.model_path or exported_xlmr("tiny", Path(tmp))
        log = Path(tmp) / "server.log"
        flags = ["--threads", str(args.threads)]
        with rerankrt_serve(model_path, flags, port=args.port, start_s=120, log=log) as server:
            rps = asyncio.run(capacity(server.base, 20, args.concurrency, args.documents))
            rate = args.load * rps
            print(f"capacity {rps:.1f} req/s; soaking at {rate:.1f} req/s for {args.minutes:g} min", flush=True)
            samples = asyncio.run(
                soak(server.base, server.proc.pid, rate, args.minutes, args.window, args.documents, args.max_in_flight)
            )
        stderr = log.read_text()
    first, last = samples[0], samples[-1]
    summary = {
        "capacity_rps": round(rps, 2),
        "offered_rps": round(rate, 2),
        "minutes": args.minutes,
        "requests_answered": sum(s["answered"] for s in samples),
        "errors": sum(s["errors"] for s in samples),
        "shed_by_client": sum(s["shed"] for s in samples),
        "rss_mb": {"first": first["rss_mb"], "last": last["rss_mb"], "max": max(s["rss_mb"] for s in samples)},
        "fds": {"first": first["fds"], "last": last["fds"], "max": max(s["fds"] for s in samples)},
        "threads": {"first": first["threads"], "last": last["threads"], "max": max(s["threads"] for s in samples)},
        "p50_ms_median": statistics.median(s["p50_ms"] for s in samples if s["p50_ms"] is not None),
        "p99_ms_max": max(s["p99_ms"] for s in samples if s["p99_ms"] is not None),
    }
    result = {
        "machine": machine(),
        "settings": vars(args),
        "summary": summary,
        "samples": samples,
        "server_warnings": stderr.splitlines()[-20:],
    }
    path = write_result("soak", result)
    title = f"rerankrt soak: {rate:.1f} req/s ({args.load:.0%} of capacity), {args.minutes:g} min, {cpu_model()}"
    soak_figure(samples, RESULTS / "soak.png", title)
    print(f"{path}\n{summary}")


if __name__ == "__main__":
    main()
