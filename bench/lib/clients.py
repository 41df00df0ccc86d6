"""Load generators against a running `rerankrt serve`: closed-loop clients or bursts, latency percentiles."""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import numpy as np


def padding_stats(text: str) -> tuple[float, float]:
    """The sum and count of rerankrt_batch_padding_ratio in a /metrics page."""
    total = float(re.search(r"^rerankrt_batch_padding_ratio_sum (\S+)$", text, re.M).group(1))
    count = float(re.search(r"^rerankrt_batch_padding_ratio_count (\S+)$", text, re.M).group(1))
    return total, count


async def run_level(base: str, requests: list[dict], concurrency: int, workload: str = "closed") -> dict:
    """POST /v1/rerank `requests` to `base` at `concurrency`: closed (`concurrency` clients, each sending its next
    request when the last is answered) or burst (`concurrency` requests at once, the next burst after the last
    answer). Requests/s, documents/s, p50/p95/p99 latency, p50/wall (burst: the median over bursts of p50 / the
    burst's wall time; closed: p50 / the level's wall time), mean padding and batches (from /metrics), errors."""
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
