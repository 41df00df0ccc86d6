"""The cross-request batcher, on a recording backend whose logit is a function of each pair's tokens."""

import asyncio
import threading

import numpy as np
import pytest

from rerankrt.runtime.scheduler import Overloaded, Scheduler


def pair(length: int, seed: int) -> dict:
    ids = np.random.default_rng(seed).integers(1, 1000, size=length).astype(np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


def collate(pairs):
    width = max(len(p["input_ids"]) for p in pairs)
    ids = np.zeros((len(pairs), width), dtype=np.int64)
    for row, p in enumerate(pairs):
        ids[row, : len(p["input_ids"])] = p["input_ids"]
    return {"input_ids": ids, "attention_mask": (ids != 0).astype(np.int64)}


def expected(p) -> float:
    return float(p["input_ids"].sum())


class Recorder:
    """Backend: logit = sum of the row's ids (padding is 0); records batch shapes; can be held."""

    def __init__(self, hold: bool = False):
        self.shapes: list[tuple[int, int]] = []
        self.seen: list[float] = []
        self.release = threading.Event()
        self.entered = threading.Event()
        if not hold:
            self.release.set()

    def run(self, batch):
        self.entered.set()
        assert self.release.wait(30)
        self.shapes.append(batch["input_ids"].shape)
        logits = batch["input_ids"].sum(axis=1).astype(np.float32)
        self.seen.extend(logits.tolist())
        return logits


def test_concurrent_requests_get_their_own_results_in_order():
    backend = Recorder()
    scheduler = Scheduler(backend.run, collate, max_batch_size=8, max_batch_tokens=400, batch_wait_ms=5)
    rng = np.random.default_rng(0)
    jobs = [[pair(int(n), seed=100 * j + i) for i, n in enumerate(rng.integers(1, 60, size=rng.integers(1, 12)))]
            for j in range(40)]  # fmt: skip

    async def main():
        return await asyncio.gather(*(scheduler.run_async(job) for job in jobs))

    results = asyncio.run(main())
    scheduler.close()
    for job, logits in zip(jobs, results, strict=True):
        assert logits.tolist() == [expected(p) for p in job]
    assert len(backend.shapes) < sum(len(j) for j in jobs)  # pairs of different requests shared batches


def test_batches_respect_size_and_token_budget():
    backend = Recorder()
    scheduler = Scheduler(backend.run, collate, max_batch_size=4, max_batch_tokens=100, batch_wait_ms=5)
    rng = np.random.default_rng(1)
    pairs = [pair(int(n), seed=i) for i, n in enumerate(rng.integers(1, 50, size=60))]
    pairs.append(pair(250, seed=99))  # longer than the budget on its own

    async def main():
        return await asyncio.gather(*(scheduler.run_async(pairs[i : i + 7]) for i in range(0, len(pairs), 7)))

    asyncio.run(main())
    scheduler.close()
    for rows, width in backend.shapes:
        assert rows <= 4
        assert rows * width <= 100 or rows == 1
    assert (1, 250) in backend.shapes


def test_cancelled_request_never_reaches_the_backend():
    backend = Recorder(hold=True)
    scheduler = Scheduler(backend.run, collate, max_batch_size=2, batch_wait_ms=0)
    first, second = [pair(5, 1), pair(5, 2)], [pair(7, 3), pair(7, 4)]

    async def main():
        running = asyncio.create_task(scheduler.run_async(first))
        await asyncio.to_thread(backend.entered.wait, 30)  # `first` is in the backend, held
        waiting = asyncio.create_task(scheduler.run_async(second))
        await asyncio.sleep(0.05)
        assert scheduler.queued_pairs == 2
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert scheduler.queued_pairs == 0
        backend.release.set()
        return await running

    assert asyncio.run(main()).tolist() == [expected(p) for p in first]
    scheduler.close()
    assert sorted(backend.seen) == sorted(expected(p) for p in first)


def test_full_queue_refuses_then_recovers():
    backend = Recorder(hold=True)
    scheduler = Scheduler(backend.run, collate, max_batch_size=4, max_queued_pairs=10, batch_wait_ms=0)

    async def main():
        held = asyncio.create_task(scheduler.run_async([pair(3, i) for i in range(4)]))
        await asyncio.to_thread(backend.entered.wait, 30)
        queued = asyncio.create_task(scheduler.run_async([pair(3, 10 + i) for i in range(8)]))
        await asyncio.sleep(0.05)
        with pytest.raises(Overloaded, match="8 pairs queued \\(limit 10\\)"):
            await scheduler.run_async([pair(3, 20 + i) for i in range(3)])
        backend.release.set()
        await asyncio.gather(held, queued)
        return await scheduler.run_async([pair(3, 30 + i) for i in range(10)])  # room again

    assert len(asyncio.run(main())) == 10
    scheduler.close()


def test_a_failing_batch_fails_its_requests_and_the_scheduler_goes_on():
    calls = []

    def flaky(batch):
        calls.append(batch["input_ids"].shape)
        if len(calls) == 1:
            raise RuntimeError("device lost")
        return batch["input_ids"].sum(axis=1).astype(np.float32)

    scheduler = Scheduler(flaky, collate, batch_wait_ms=0)

    async def main():
        with pytest.raises(RuntimeError, match="device lost"):
            await scheduler.run_async([pair(4, 1)])
        return await scheduler.run_async([pair(4, 2)])

    assert asyncio.run(main()).tolist() == [expected(pair(4, 2))]
    scheduler.close()


def test_close_finishes_queued_work():
    backend = Recorder()
    scheduler = Scheduler(backend.run, collate, max_batch_size=2, batch_wait_ms=20)

    async def main():
        task = asyncio.create_task(scheduler.run_async([pair(4, i) for i in range(6)]))
        await asyncio.sleep(0)
        await asyncio.to_thread(scheduler.close)
        return await task

    assert len(asyncio.run(main())) == 6
