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
stays bounded under any load. A cancelled submission (client gone, backend
stalled) drops its pending pairs before they reach the backend.

Admission: a submission with a deadline is refused at once (`CannotFinishInTime`,
a kind of `Overloaded`) when the work pending ahead of it plus its own, at the
measured throughput, would run past the deadline; an admitted one runs to
completion. Throughput is seconds per real token, a decaying average over the
forward passes weighted by their tokens: it is what the queue can be measured in
(padding is only known once a batch is formed), and it takes in the padding the
policy adds, as a pass costs about what its padded tokens cost. A request with
nothing pending ahead of it, or any before the first measurement, is admitted.
`stalled_seconds` tells a stuck backend (work pending, no pass ending) apart.
"""

from __future__ import annotations

import asyncio
import logging
import math
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
MEASURE_DECAY = 0.9  # per forward pass: the throughput weighs about the last 10 passes, each by its tokens
MAX_RETRY_AFTER = 60  # seconds: a refused request is told to come back within this, whatever the estimate


class Overloaded(RerankrtError):
    """The server cannot take the request now; retry after `retry_after` seconds (the server answers 503)."""

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after


class CannotFinishInTime(Overloaded):
    """Refused at admission: the work pending ahead and the request's own would not finish by its deadline."""


def retry_after(ahead: float, own: float, left: float) -> int:
    """Whole seconds until a request refused with `ahead` seconds of work before it would fit again: until the
    work ahead has drained to what `left` leaves beside its `own` (or drained entirely), 1 to MAX_RETRY_AFTER."""
    wait = ahead - max(0.0, left - own)
    return min(MAX_RETRY_AFTER, max(1, math.ceil(wait)))


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
    """Queue + inference thread over `run(batch) -> logits` and the encoder's `collate`.

    `initial_seconds_per_token` is the throughput to admit by until a forward pass is measured (None: admit all
    until then); `observe_throughput` takes more measurements (a start-up self-check's). `clock` gives deadlines,
    pass times and stalls (time.monotonic; tests drive a fake one).
    """

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
        initial_seconds_per_token: float | None = None,
        clock: Callable[[], float] = time.monotonic,
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
        self.clock = clock
        self._queue: deque[_Pending] = deque()
        self._queued = 0  # pairs of live (not cancelled) jobs in the queue
        self._queued_tokens = 0  # and their real tokens
        self._running_tokens = 0  # real tokens of the forward pass under way (0: none)
        self._running_since = 0.0
        self._progress_at = clock()  # when a pass last ended, or work came to an idle scheduler
        self._passes = 0
        self._measured_tokens = 0.0  # decaying sums of the measured passes
        self._measured_seconds = 0.0
        self._initial_seconds_per_token = initial_seconds_per_token
        self._lock = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="rerankrt-inference", daemon=True)
        self._thread.start()

    @property
    def queued_pairs(self) -> int:
        return self._queued

    @property
    def alive(self) -> bool:
        """The inference thread runs and the scheduler takes work."""
        return self._thread.is_alive() and not self._closed

    @property
    def idle(self) -> bool:
        """Nothing queued and no forward pass under way."""
        return not self._queued and not self._running_tokens

    @property
    def seconds_per_token(self) -> float | None:
        """The measured throughput: forward-pass seconds per real token (before any measurement, the initial
        estimate, or None)."""
        if not self._measured_tokens:
            return self._initial_seconds_per_token
        return self._measured_seconds / self._measured_tokens

    @property
    def pending_seconds(self) -> float:
        """The work pending (queued pairs, the rest of the pass under way) at the measured throughput, in seconds:
        how long a request arriving now waits behind it (0 with no throughput to go by)."""
        rate = self.seconds_per_token
        if rate is None:
            return 0.0
        running = self._running_tokens * rate - (self.clock() - self._running_since) if self._running_tokens else 0
        return self._queued_tokens * rate + max(0.0, running)

    @property
    def stalled_seconds(self) -> float:
        """Seconds since the last forward pass ended (or work came to an idle scheduler) while work is pending; 0
        when idle. The server's stall guard and Ray's health check read it."""
        return 0.0 if self.idle else self.clock() - self._progress_at

    def observe_throughput(self, tokens: int, seconds: float) -> None:
        """Fold `tokens` real tokens scored in `seconds` into the throughput (the scheduler does after each forward
        pass but its first, which pays for lazy initialisation; a start-up self-check may add its own)."""
        with self._lock:
            self._measured_tokens = MEASURE_DECAY * self._measured_tokens + tokens
            self._measured_seconds = MEASURE_DECAY * self._measured_seconds + seconds

    def submit(self, pairs: Sequence[Features], deadline: float | None = None) -> Future:
        """A future of the logits for `pairs`, in their order; cancelling it drops the pairs still queued.

        Raises Overloaded when the queue cannot take them, and CannotFinishInTime when the work pending ahead and
        theirs, at the measured throughput, would not finish by `deadline` (on `clock`; None: no deadline).
        """
        job = _Job(pairs)
        if not pairs:
            job.future.set_result(np.empty(0, dtype=np.float32))
            return job.future
        pending = [_Pending(job, i, len(p["input_ids"])) for i, p in enumerate(pairs)]
        tokens = sum(p.length for p in pending)
        with self._lock:
            if self._closed or self._queued + len(pairs) > self.max_queued_pairs:
                raise Overloaded(
                    f"the server is busy: {self._queued} pairs queued (limit {self.max_queued_pairs}); retry later"
                )
            if self.idle:
                self._progress_at = self.clock()
            elif deadline is not None:
                self._admit(tokens, deadline)
            self._queue.extend(pending)
            self._queued += len(pairs)
            self._queued_tokens += tokens
            self._lock.notify()
        job.future.add_done_callback(lambda future: self._cancel(job) if future.cancelled() else None)
        return job.future

    def _admit(self, tokens: int, deadline: float) -> None:
        rate = self.seconds_per_token
        if rate is None:
            return
        ahead, own, left = self.pending_seconds, tokens * rate, deadline - self.clock()
        if ahead + own > left:
            wait = retry_after(ahead, own, left)
            raise CannotFinishInTime(
                f"the server is busy: ~{ahead:.1f} s of work queued ahead of this request and ~{own:.1f} s of its "
                f"own, more than the {max(0.0, left):.1f} s left of its timeout; retry in {wait} s",
                wait,
            )

    async def run_async(self, pairs: Sequence[Features], deadline: float | None = None) -> np.ndarray:
        """`submit`, awaited; a cancelled caller (client gone) drops its queued pairs."""
        future = self.submit(pairs, deadline)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.cancel()
            raise

    def _cancel(self, job: _Job) -> None:
        with self._lock:
            if not job.cancelled:
                job.cancelled = True
                dropped = [p.length for p in self._queue if p.job is job]
                self._queued -= len(dropped)
                self._queued_tokens -= sum(dropped)

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
            self._running_tokens = sum(p.length for p in taken)
            self._queued_tokens -= self._running_tokens
            self._running_since = self.clock()
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
        started = self.clock()
        try:
            logits = self.run(self.collate([p.job.pairs[p.index] for p in batch]))
        except Exception as exc:  # the whole batch failed: fail each job in it, keep serving
            log.exception("forward pass over %d pairs failed", len(batch))
            self._ended()
            for job in {p.job for p in batch}:
                self._cancel(job)  # its other pairs need not run
                job.resolve(exc)
            return
        seconds = self.clock() - started
        self._ended()
        self._passes += 1
        if self._passes > 1:
            self.observe_throughput(sum(p.length for p in batch), seconds)
        for pending, logit in zip(batch, logits, strict=True):
            job = pending.job
            job.logits[pending.index] = logit
            job.remaining -= 1
            if job.remaining == 0:
                job.resolve()
        if self.on_batch is not None:
            longest = max(p.length for p in batch)
            self.on_batch(BatchStats(len(batch), sum(p.length for p in batch), longest * len(batch), seconds))

    def _ended(self) -> None:
        with self._lock:
            self._running_tokens = 0
            self._progress_at = self.clock()
