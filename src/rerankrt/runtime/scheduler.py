"""Dynamic batching across requests: one queue of encoded pairs, one inference thread per backend.

Requests submit their encoded pairs and await the logits. The inference thread
waits a short collection window, then forms a batch within `max_batch_size`
pairs, `max_batch_tokens` padded tokens (rows x longest pair) and
`max_padding_ratio` padded positions, by one of two policies:

- `oldest-first` (the default): the longest length-sorted group of the oldest
  request's pending pairs, topped up, only when that group cannot fill the
  batch, with newer requests' pairs that fit (those of the fewest next-oldest
  requests that fill it), up to `top_up_tokens` padded tokens (on CPU a pass
  costs what its tokens cost whatever the batch, so a full batch buys nothing
  there and topping up would only delay the oldest request). So under load requests finish in arrival order as far
  as the limits allow, rather than all together at the end.
- `interleaved`: the oldest pending pair plus those of similar length among the
  next `max_batch_size * CANDIDATE_FACTOR` pending pairs of any request.

Either way padding stays small, the oldest pair always makes progress, and
results are scattered back to each request in its own order.

The queue is bounded by pairs: a submission that would overflow it fails at
once with `Overloaded` (the server answers 503 with Retry-After), so memory
stays bounded under any load. A cancelled submission (client gone, timeout)
drops its pending pairs before they reach the backend.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field

import numpy as np

from rerankrt.errors import RerankrtError
from rerankrt.families import Batch, Features
from rerankrt.runtime.batching import plan_batches, top_up

log = logging.getLogger(__name__)

CANDIDATE_FACTOR = 8  # a batch is chosen among (tops up from) the oldest max_batch_size * CANDIDATE_FACTOR pairs
SCHEDULING = ("oldest-first", "interleaved")


class Overloaded(RerankrtError):
    """The queue is full; try again later."""

    def __init__(self, queued: int, limit: int):
        super().__init__(f"the server is busy: {queued} pairs queued (limit {limit}); retry later")


@dataclass
class BatchStats:
    """What one forward pass did, for metrics."""

    pairs: int
    tokens: int  # real tokens
    padded_tokens: int  # rows x longest
    seconds: float


@dataclass(eq=False)
class _Job:
    pairs: Sequence[Features]
    future: Future = field(default_factory=Future)
    logits: np.ndarray = field(init=False)
    remaining: int = field(init=False)
    cancelled: bool = False

    def __post_init__(self):
        self.logits = np.empty(len(self.pairs), dtype=np.float32)
        self.remaining = len(self.pairs)

    def resolve(self, error: BaseException | None = None) -> None:
        try:
            if error is None:
                self.future.set_result(self.logits)
            else:
                self.future.set_exception(error)
        except InvalidStateError:  # cancelled meanwhile: nobody waits for it
            pass


@dataclass(eq=False)
class _Pending:
    job: _Job
    index: int
    length: int


class Scheduler:
    """Queue + inference thread over `run(batch) -> logits` and the encoder's `collate`."""

    def __init__(
        self,
        run: Callable[[Batch], np.ndarray],
        collate: Callable[[Sequence[Features]], Batch],
        max_batch_size: int = 32,
        max_batch_tokens: int = 16384,
        max_queued_pairs: int = 10000,
        batch_wait_ms: float = 2.0,
        max_padding_ratio: float = 1.0,
        on_batch: Callable[[BatchStats], None] | None = None,
        scheduling: str = "oldest-first",
        top_up_tokens: int | None = None,
    ):
        if scheduling not in SCHEDULING:
            raise ValueError(f"unknown scheduling {scheduling!r}: expected one of {', '.join(SCHEDULING)}")
        self.run = run
        self.collate = collate
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_queued_pairs = max_queued_pairs
        self.batch_wait = batch_wait_ms / 1000
        self.max_padding_ratio = max_padding_ratio
        self.on_batch = on_batch
        self.top_up_tokens = top_up_tokens or max_batch_tokens
        self._choose = self._oldest_first if scheduling == "oldest-first" else self._interleaved
        self._queue: deque[_Pending] = deque()
        self._queued = 0  # pairs of live (not cancelled) jobs in the queue
        self._lock = threading.Condition()
        self._closed = False
        self.last_batch_at = time.monotonic()  # when the last forward pass ended (health checks read it)
        self._thread = threading.Thread(target=self._loop, name="rerankrt-inference", daemon=True)
        self._thread.start()

    @property
    def queued_pairs(self) -> int:
        return self._queued

    @property
    def alive(self) -> bool:
        """The inference thread runs and the scheduler takes work."""
        return self._thread.is_alive() and not self._closed

    def submit(self, pairs: Sequence[Features]) -> Future:
        """A future of the logits for `pairs`, in their order; cancelling it drops the pairs still queued.

        Raises Overloaded when the queue cannot take them.
        """
        job = _Job(pairs)
        if not pairs:
            job.future.set_result(np.empty(0, dtype=np.float32))
            return job.future
        with self._lock:
            if self._closed:
                raise Overloaded(self._queued, self.max_queued_pairs)
            if self._queued + len(pairs) > self.max_queued_pairs:
                raise Overloaded(self._queued, self.max_queued_pairs)
            self._queue.extend(_Pending(job, i, len(p["input_ids"])) for i, p in enumerate(pairs))
            self._queued += len(pairs)
            self._lock.notify()
        job.future.add_done_callback(lambda future: self._cancel(job) if future.cancelled() else None)
        return job.future

    async def run_async(self, pairs: Sequence[Features]) -> np.ndarray:
        """`submit`, awaited; a cancelled caller (client gone, timeout) drops its queued pairs."""
        future = self.submit(pairs)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.cancel()
            raise

    def _cancel(self, job: _Job) -> None:
        with self._lock:
            if not job.cancelled:
                job.cancelled = True
                self._queued -= sum(1 for p in self._queue if p.job is job)

    def close(self, timeout: float = 30.0) -> None:
        """Finish what is queued, then stop the thread."""
        with self._lock:
            self._closed = True
            self._lock.notify()
        self._thread.join(timeout)

    # --- inference thread ---------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._closed:
                    self._lock.wait()
                if not self._queue and self._closed:
                    return
            if self.batch_wait:
                time.sleep(self.batch_wait)  # let concurrent requests join this batch
            batch = self._take_batch()
            if batch:
                self._run(batch)

    def _take_batch(self) -> list[_Pending]:
        with self._lock:
            while self._queue and self._queue[0].job.cancelled:
                self._queue.popleft()
            if not self._queue:
                return []
            taken = self._choose([p for p in self._queue if not p.job.cancelled])
            taken_ids = {id(p) for p in taken}
            self._queue = deque(p for p in self._queue if id(p) not in taken_ids and not p.job.cancelled)
            self._queued -= len(taken)
            return taken

    def _interleaved(self, live: list[_Pending]) -> list[_Pending]:
        """The group holding the oldest pair, length-sorted among the oldest candidates of any request."""
        candidates = live[: self.max_batch_size * CANDIDATE_FACTOR]
        groups = plan_batches(
            [p.length for p in candidates], self.max_batch_size, self.max_batch_tokens, self.max_padding_ratio
        )
        chosen = next(group for group in groups if 0 in group)
        return [candidates[i] for i in chosen]

    def _oldest_first(self, live: list[_Pending]) -> list[_Pending]:
        """The oldest request's longest group, topped up with the pairs of the fewest next-oldest requests."""
        limits = (self.max_batch_size, self.max_batch_tokens, self.max_padding_ratio)
        oldest = live[0].job
        own = [p for p in live if p.job is oldest]
        taken = [own[i] for i in plan_batches([p.length for p in own], *limits)[0]]
        newer = [p for p in live if p.job is not oldest][: self.max_batch_size * CANDIDATE_FACTOR]
        room = self.max_batch_size - len(taken)
        padded = len(taken) * max(p.length for p in taken)
        if not room or not newer or padded >= self.top_up_tokens:
            return taken
        # newer pairs join only up to `top_up_tokens` padded tokens: beyond, they delay the oldest request
        limits = (self.max_batch_size, min(self.max_batch_tokens, self.top_up_tokens), self.max_padding_ratio)
        # queue order is request order: `ends[k]` closes the first k + 1 newer requests
        ends = [i for i in range(1, len(newer) + 1) if i == len(newer) or newer[i].job is not newer[i - 1].job]
        lengths = [p.length for p in taken]

        def fill(end: int) -> list[int]:
            return top_up(lengths, [p.length for p in newer[:end]], *limits)

        joined = fill(ends[-1])
        # bisect for the fewest requests that still add as many pairs (`hi` always does)
        lo, hi = 0, len(ends) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if len(fill(ends[mid])) == len(joined) else (mid + 1, hi)
        joined = fill(ends[hi])
        return taken + [newer[i] for i in joined]

    def _run(self, batch: list[_Pending]) -> None:
        started = time.perf_counter()
        try:
            logits = self.run(self.collate([p.job.pairs[p.index] for p in batch]))
        except Exception as exc:  # the whole batch failed: fail each job in it, keep serving
            log.exception("forward pass over %d pairs failed", len(batch))
            for job in {p.job for p in batch}:
                self._cancel(job)  # its other pairs need not run
                job.resolve(exc)
            return
        seconds = time.perf_counter() - started
        self.last_batch_at = time.monotonic()
        for pending, logit in zip(batch, logits, strict=True):
            job = pending.job
            job.logits[pending.index] = logit
            job.remaining -= 1
            if job.remaining == 0:
                job.resolve()
        if self.on_batch is not None:
            longest = max(p.length for p in batch)
            self.on_batch(BatchStats(len(batch), sum(p.length for p in batch), longest * len(batch), seconds))
