"""The cross-request batcher, on a recording backend whose logit is a function of each pair's tokens."""

import asyncio
import threading

import numpy as np
import pytest
from pydantic import ValidationError

from rerankrt.runtime.batching import plan_batches
from rerankrt.runtime.scheduler import (
    CANDIDATE_FACTOR,
    MAX_RETRY_AFTER,
    SCHEDULING,
    CannotFinishInTime,
    Overloaded,
    Scheduler,
    retry_after,
)
from rerankrt.runtime.settings import RerankerSettings
from tests.support import FakeClock


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


@pytest.mark.parametrize("scheduling", SCHEDULING)
def test_concurrent_requests_get_their_own_results_in_order(scheduling):
    backend = Recorder()
    scheduler = Scheduler(
        backend.run, collate, scheduling=scheduling, max_batch_size=8, max_batch_tokens=400, batch_wait_ms=5
    )
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


@pytest.mark.parametrize("scheduling", SCHEDULING)
def test_batches_respect_size_and_token_budget(scheduling):
    backend = Recorder()
    scheduler = Scheduler(
        backend.run, collate, scheduling=scheduling, max_batch_size=4, max_batch_tokens=100, batch_wait_ms=5
    )
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


@pytest.mark.parametrize("scheduling", SCHEDULING)
def test_cancelled_request_never_reaches_the_backend(scheduling):
    backend = Recorder(hold=True)
    scheduler = Scheduler(backend.run, collate, scheduling=scheduling, max_batch_size=2, batch_wait_ms=0)
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


@pytest.mark.parametrize("scheduling", SCHEDULING)
def test_full_queue_refuses_then_recovers(scheduling):
    backend = Recorder(hold=True)
    scheduler = Scheduler(
        backend.run, collate, scheduling=scheduling, max_batch_size=4, max_queued_pairs=10, batch_wait_ms=0
    )

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


@pytest.mark.parametrize("scheduling", SCHEDULING)
def test_a_failing_batch_fails_its_requests_and_the_scheduler_goes_on(scheduling):
    calls = []

    def flaky(batch):
        calls.append(batch["input_ids"].shape)
        if len(calls) == 1:
            raise RuntimeError("device lost")
        return batch["input_ids"].sum(axis=1).astype(np.float32)

    scheduler = Scheduler(flaky, collate, scheduling=scheduling, batch_wait_ms=0)

    async def main():
        with pytest.raises(RuntimeError, match="device lost"):
            await scheduler.run_async([pair(4, 1)])
        return await scheduler.run_async([pair(4, 2)])

    assert asyncio.run(main()).tolist() == [expected(pair(4, 2))]
    scheduler.close()


@pytest.mark.parametrize("scheduling", SCHEDULING)
def test_close_finishes_queued_work(scheduling):
    backend = Recorder()
    scheduler = Scheduler(backend.run, collate, scheduling=scheduling, max_batch_size=2, batch_wait_ms=20)

    async def main():
        task = asyncio.create_task(scheduler.run_async([pair(4, i) for i in range(6)]))
        await asyncio.sleep(0)
        await asyncio.to_thread(scheduler.close)
        return await task

    assert len(asyncio.run(main())) == 6


# --- scheduling policies: a held backend sees the whole queue at once, so batches are deterministic ---------------


def tagged(request: int, lengths) -> list[dict]:
    """Pairs whose first token says which request and document they are (1000 * request + document + 1)."""
    return [{"input_ids": np.full(n, 1000 * request + i + 1, dtype=np.int64)} for i, n in enumerate(lengths)]


class BatchLog:
    """Backend recording each batch as (request, document, length) rows; held until `release`."""

    def __init__(self):
        self.batches: list[list[tuple[int, int, int]]] = []
        self.entered = threading.Event()
        self.release = threading.Event()

    def collate(self, pairs):
        return {"rows": [(int(p["input_ids"][0]) - 1, len(p["input_ids"])) for p in pairs]}

    def run(self, batch):
        self.entered.set()
        assert self.release.wait(30)
        self.batches.append([(tag // 1000, tag % 1000, n) for tag, n in batch["rows"]])
        return np.array([tag for tag, _ in batch["rows"]], dtype=np.float32)


def replay(requests: list[list[int]], scheduling: str, **limits) -> list[list[tuple[int, int, int]]]:
    """Queue `requests` (lists of pair lengths) behind a held batch, release, return the batches that followed."""
    log = BatchLog()
    scheduler = Scheduler(log.run, log.collate, batch_wait_ms=0, scheduling=scheduling, **limits)
    blocker = scheduler.submit(tagged(999, [1]))
    assert log.entered.wait(30)
    futures = [scheduler.submit(tagged(r, lengths)) for r, lengths in enumerate(requests)]
    log.release.set()
    assert blocker.result(30).tolist() == [999000]
    for r, (future, lengths) in enumerate(zip(futures, requests, strict=True)):
        assert future.result(30).tolist() == [1000 * r + i for i in range(len(lengths))]
    scheduler.close()
    return log.batches[1:]


def completions(batches, count: int) -> list[int]:
    """The batch in which each request's last pair ran."""
    last = {}
    for b, batch in enumerate(batches):
        for request, _, _ in batch:
            last[request] = b
    return [last[r] for r in range(count)]


def test_oldest_first_draws_from_the_oldest_request_and_tops_up_from_the_next():
    requests = [[10, 20, 30, 40, 50, 60], [15, 25], [35, 45, 55], [5]]
    batches = replay(requests, "oldest-first", max_batch_size=4, max_batch_tokens=1000)
    assert [sorted(batch) for batch in batches] == [
        [(0, 2, 30), (0, 3, 40), (0, 4, 50), (0, 5, 60)],  # the oldest request fills the batch alone, longest first
        [(0, 0, 10), (0, 1, 20), (1, 0, 15), (1, 1, 25)],  # its last two, topped up by the next request (enough)
        [(2, 0, 35), (2, 1, 45), (2, 2, 55), (3, 0, 5)],
    ]
    assert completions(batches, 4) == [1, 1, 2, 2]


def test_interleaved_is_unchanged_length_sorted_across_requests():
    requests = [[10, 20, 30, 40, 50, 60], [15, 25], [35, 45, 55], [5]]
    batches = replay(requests, "interleaved", max_batch_size=4, max_batch_tokens=1000)
    assert [sorted(batch) for batch in batches] == [
        [(0, 0, 10), (0, 1, 20), (1, 0, 15), (3, 0, 5)],  # the group holding the oldest pair (length 10)
        [(0, 2, 30), (0, 3, 40), (1, 1, 25), (2, 0, 35)],
        [(0, 4, 50), (0, 5, 60), (2, 1, 45), (2, 2, 55)],
    ]
    assert completions(batches, 4) == [2, 1, 2, 0]


def reference_interleaved(requests, max_batch_size, max_batch_tokens, max_padding_ratio):
    """The batches the interleaved policy forms, computed from the queue as the pre-oldest-first scheduler did."""
    queue = [(r, i, n) for r, lengths in enumerate(requests) for i, n in enumerate(lengths)]
    batches = []
    while queue:
        candidates = queue[: max_batch_size * CANDIDATE_FACTOR]
        groups = plan_batches([n for _, _, n in candidates], max_batch_size, max_batch_tokens, max_padding_ratio)
        chosen = next(group for group in groups if 0 in group)
        batches.append(sorted(candidates[i] for i in chosen))
        queue = [p for p in queue if p not in batches[-1]]
    return batches


def burst(seed: int, count: int = 12, docs: int = 10) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [[int(n) for n in rng.integers(3, 50, size=docs)] for _ in range(count)]


@pytest.mark.parametrize("padding", [0.2, 1.0])
def test_interleaved_forms_the_same_batches_as_before(padding):
    requests = burst(seed=3)
    batches = replay(requests, "interleaved", max_batch_size=8, max_batch_tokens=300, max_padding_ratio=padding)
    assert [sorted(batch) for batch in batches] == reference_interleaved(requests, 8, 300, padding)


@pytest.mark.parametrize("padding", [0.2, 1.0])
def test_oldest_first_keeps_the_limits_and_tops_up_only_a_batch_the_oldest_cannot_fill(padding):
    requests = burst(seed=4)
    batches = replay(requests, "oldest-first", max_batch_size=8, max_batch_tokens=300, max_padding_ratio=padding)
    pending = {r: dict(enumerate(lengths)) for r, lengths in enumerate(requests)}
    for batch in batches:
        rows, width = len(batch), max(n for _, _, n in batch)
        assert rows <= 8 and (rows * width <= 300 or rows == 1)
        assert 1 - sum(n for _, _, n in batch) / (rows * width) <= padding + 1e-9
        oldest = min(r for r in pending if pending[r])
        own = [(r, i, n) for r, i, n in batch if r == oldest]
        # its longest length-sorted group, as many pairs as the limits let that request alone put in a batch
        group = plan_batches(list(pending[oldest].values()), 8, 300, padding)[0]
        assert sorted(n for _, _, n in own) == sorted(list(pending[oldest].values())[i] for i in group)
        if len(own) < len(batch):  # newer requests' pairs only in a batch the oldest could not fill
            assert len(own) < 8
        for r, i, _ in batch:
            del pending[r][i]
    assert not any(pending.values())


def test_oldest_first_finishes_requests_in_arrival_order_where_interleaved_finishes_them_together():
    requests = burst(seed=5, count=8, docs=8)
    oldest_first = completions(replay(requests, "oldest-first", max_batch_size=8, max_batch_tokens=1000), 8)
    interleaved = completions(replay(requests, "interleaved", max_batch_size=8, max_batch_tokens=1000), 8)
    assert oldest_first == list(range(8))  # one request per batch: its 8 pairs fill it
    assert interleaved == [5, 7, 7, 7, 7, 7, 7, 5]  # nearly all finish in the last batch


def test_oldest_first_tops_up_only_to_top_up_tokens():
    requests = [[100, 90], [95, 85, 80], [98]]
    full = replay(requests, "oldest-first", max_batch_size=8, max_batch_tokens=1000)
    capped = replay(requests, "oldest-first", max_batch_size=8, max_batch_tokens=1000, top_up_tokens=400)
    assert [sorted(batch) for batch in full] == [
        [(0, 0, 100), (0, 1, 90), (1, 0, 95), (1, 1, 85), (1, 2, 80), (2, 0, 98)]
    ]
    assert [sorted(batch) for batch in capped] == [
        [(0, 0, 100), (0, 1, 90), (1, 0, 95), (1, 1, 85)],  # 4 x 100 padded tokens: no more newer pairs
        [(1, 2, 80), (2, 0, 98)],
    ]
    assert completions(capped, 3) == [0, 1, 1]


def test_cancelled_oldest_request_is_skipped():
    log = BatchLog()
    scheduler = Scheduler(log.run, log.collate, max_batch_size=4, batch_wait_ms=0)
    blocker = scheduler.submit(tagged(9, [3]))
    assert log.entered.wait(30)
    first, second = scheduler.submit(tagged(0, [5, 6, 7])), scheduler.submit(tagged(1, [4, 8]))
    assert scheduler.queued_pairs == 5
    first.cancel()
    assert scheduler.queued_pairs == 2
    log.release.set()
    assert second.result(30).tolist() == [1000, 1001]
    blocker.result(30)
    scheduler.close()
    assert [sorted(batch) for batch in log.batches[1:]] == [[(1, 0, 4), (1, 1, 8)]]


def test_unknown_scheduling_is_refused():
    with pytest.raises(ValueError, match="unknown scheduling 'fifo': expected one of oldest-first, interleaved"):
        Scheduler(lambda batch: batch, collate, scheduling="fifo")
    with pytest.raises(ValidationError, match="scheduling"):
        RerankerSettings(model_path="m", scheduling="fifo")
    assert RerankerSettings(model_path="m").scheduling == "oldest-first"


# --- admission: deadlines against the measured throughput, on a fake clock ----------------------------------------


class Timed(Recorder):
    """A Recorder whose forward pass takes `seconds_per_token` per padded token on `clock`."""

    def __init__(self, clock: FakeClock, seconds_per_token: float, hold: bool = False):
        super().__init__(hold)
        self.clock, self.seconds_per_token = clock, seconds_per_token

    def run(self, batch):
        logits = super().run(batch)
        self.clock.advance(batch["input_ids"].size * self.seconds_per_token)
        return logits


def timed_scheduler(seconds_per_token: float = 0.5, hold: bool = False, **options) -> tuple[Scheduler, Timed]:
    clock = FakeClock()
    backend = Timed(clock, seconds_per_token, hold)
    return Scheduler(backend.run, collate, batch_wait_ms=0, clock=clock, **options), backend


def test_throughput_is_seconds_per_real_token_measured_after_the_first_pass():
    scheduler, backend = timed_scheduler(seconds_per_token=0.5, max_batch_size=4)
    assert scheduler.seconds_per_token is None and scheduler.pending_seconds == 0
    scheduler.submit([pair(10, 1)]).result(30)  # the first pass pays for lazy initialisation: not measured
    assert scheduler.seconds_per_token is None
    for i in range(3):
        scheduler.submit([pair(10, 10 * i + k) for k in range(4)]).result(30)
    scheduler.close()
    assert scheduler.seconds_per_token == pytest.approx(0.5)  # equal lengths: padded = real tokens


def test_throughput_weighs_each_pass_by_its_tokens_and_an_initial_estimate_gives_way():
    scheduler = Scheduler(lambda batch: batch, collate, initial_seconds_per_token=2.0)
    assert scheduler.seconds_per_token == 2.0  # admits by it until a pass is measured
    scheduler.observe_throughput(1000, 1.0)
    assert scheduler.seconds_per_token == 0.001
    scheduler.observe_throughput(10, 1.0)  # a small, slow pass (fixed overhead) moves it little
    assert scheduler.seconds_per_token == pytest.approx((0.9 * 1.0 + 1.0) / (0.9 * 1000 + 10))
    assert scheduler.seconds_per_token < 0.0021
    scheduler.close()


def test_retry_after_is_when_the_work_ahead_has_drained_enough_to_fit():
    assert retry_after(ahead=108, own=36, left=120) == 24  # 84 s of work ahead leave room for its 36 s
    assert retry_after(ahead=30, own=200, left=120) == 30  # never fits beside work: when nothing is ahead
    assert retry_after(ahead=500, own=36, left=120) == MAX_RETRY_AFTER
    assert retry_after(ahead=10, own=36, left=45.5) == 1


def test_work_that_cannot_finish_by_its_deadline_is_refused_at_submit():
    scheduler, backend = timed_scheduler(seconds_per_token=1.0, hold=True, max_batch_size=4)
    scheduler.observe_throughput(10, 10.0)  # 1 s per token, as the backend runs
    clock = scheduler.clock
    running = scheduler.submit([pair(9, i) for i in range(4)], deadline=1.0)  # nothing ahead: admitted all the same
    assert backend.entered.wait(30)
    assert scheduler.pending_seconds == 36  # the pass under way, 36 tokens
    admitted = scheduler.submit([pair(9, 10 + i) for i in range(4)], deadline=clock() + 120)  # 36 + 36 <= 120
    assert scheduler.pending_seconds == 72
    with pytest.raises(CannotFinishInTime) as refused:
        scheduler.submit([pair(9, 20 + i) for i in range(4)], deadline=clock() + 100)  # 72 + 36 > 100
    assert refused.value.retry_after == 8
    assert str(refused.value) == (
        "the server is busy: ~72.0 s of work queued ahead of this request and ~36.0 s of its own, more than the "
        "100.0 s left of its timeout; retry in 8 s"
    )
    assert scheduler.queued_pairs == 4  # nothing of it was queued
    clock.advance(30)  # the pass under way is 30 s along: 6 s of it left
    assert scheduler.pending_seconds == 42
    fits = scheduler.submit([pair(9, 30 + i) for i in range(4)], deadline=clock() + 100)  # 42 + 36 <= 100
    admitted.cancel()  # its pairs leave the estimate with the queue
    assert scheduler.pending_seconds == 42
    backend.release.set()
    assert len(running.result(30)) == 4 and len(fits.result(30)) == 4
    scheduler.close()


def test_without_a_measurement_or_a_deadline_everything_is_admitted():
    scheduler, backend = timed_scheduler(hold=True)
    first = scheduler.submit([pair(5, 1)])
    assert backend.entered.wait(30)
    late = scheduler.submit([pair(5, 2)], deadline=scheduler.clock() - 1)  # no throughput measured yet
    scheduler.observe_throughput(10, 100.0)
    unbounded = scheduler.submit([pair(5, 3)])  # no deadline (the CLI, Python callers)
    backend.release.set()
    assert [len(f.result(30)) for f in (first, late, unbounded)] == [1, 1, 1]
    scheduler.close()


def test_stalled_seconds_count_from_the_last_pass_while_work_is_pending():
    scheduler, backend = timed_scheduler(seconds_per_token=1.0, hold=True)
    clock = scheduler.clock
    clock.advance(1000)  # idle a long time: no stall
    assert scheduler.stalled_seconds == 0 and scheduler.idle
    first = scheduler.submit([pair(5, 1)])
    assert backend.entered.wait(30)
    clock.advance(7)
    assert scheduler.stalled_seconds == 7 and not scheduler.idle
    backend.release.set()
    first.result(30)
    assert scheduler.stalled_seconds == 0 and scheduler.idle
    scheduler.close()
