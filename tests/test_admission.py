"""Admission at arrival and the request timeout, through the whole app, on a fake clock.

The in-memory model of tests/fakes.py behind a backend whose forward pass takes a known time per padded token
on a fake clock (the scheduler's, which the server's deadlines and stall guard read too), held until the test
releases it: what is admitted, refused or answered follows from token counts, never from how fast this machine is.
"""

from __future__ import annotations

import asyncio

from rerankrt.server import create_app
from tests.fakes import make_model, settings
from tests.support import FakeClock, HeldBackend, asgi_client

QUERY = "what is panda"
DOCUMENTS = ["a bear in china", "a bear eating bamboo", "panda is a bear", "what is a panda"]
REQUEST_TOKENS = 4 * 9  # 4 pairs of [CLS] 3 query words [SEP] 4 document words
SECONDS_PER_TOKEN = 1.0  # on the fake clock: one request's pass takes 36 s


class SlowBackend(HeldBackend):
    """The in-memory model's backend, each forward pass SECONDS_PER_TOKEN per padded token on `clock`; every pass
    waits for `release`."""

    def __init__(self, inner, clock: FakeClock):
        super().__init__(inner)
        self.clock = clock

    def released(self, batch) -> None:
        self.clock.advance(batch["input_ids"].size * SECONDS_PER_TOKEN)


def slow_app(request_timeout: float, measured: float | None = SECONDS_PER_TOKEN):
    """An app on a fake clock whose scheduler has measured `measured` seconds per token (None: nothing yet); one
    request per batch (4 pairs), so no pass takes as long as the timeout."""
    model = make_model()
    clock = FakeClock()
    model.backend = backend = SlowBackend(model.backend, clock)
    app = create_app(settings(request_timeout=request_timeout, max_batch_size=4, batch_wait_ms=0), model)
    app.state.scheduler.clock = clock
    if measured is not None:
        app.state.scheduler.observe_throughput(REQUEST_TOKENS, REQUEST_TOKENS * measured)
    return app, backend, clock


def rerank(http):
    return asyncio.create_task(http.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS}))


async def first_held(http, backend: SlowBackend):
    """The first request, in the backend and held there."""
    first = rerank(http)
    await asyncio.to_thread(backend.entered.wait, 30)
    return first


async def until(condition) -> None:
    """Wait for `condition()`; fail, rather than hang, if it never holds."""
    for _ in range(3000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition never held")


def metric(app, name: str) -> float | None:
    return app.state.metrics.registry.get_sample_value(name)


def test_a_burst_the_timeout_allows_is_admitted_whole_and_finishes_within_it():
    app, backend, clock = slow_app(request_timeout=600)

    async def scenario():
        async with asgi_client(app) as http:
            first = await first_held(http, backend)
            burst = [rerank(http) for _ in range(15)]  # 16 x 36 s = 576 s of work, all under 600 s
            await until(lambda: app.state.scheduler.queued_pairs == 15 * 4)
            backend.release.set()
            return await asyncio.gather(first, *burst)

    responses = asyncio.run(scenario())
    assert [r.status_code for r in responses] == [200] * 16
    assert all(len(r.json()) == 4 for r in responses)  # SGLang's shape: a list of results
    assert metric(app, "rerankrt_requests_refused_at_admission_total") == 0
    assert clock() == 16 * REQUEST_TOKENS * SECONDS_PER_TOKEN <= 600  # the estimate held: the last within 600 s


def test_requests_that_cannot_finish_in_time_are_refused_at_arrival():
    app, backend, clock = slow_app(request_timeout=120)

    async def scenario():
        async with asgi_client(app) as http:
            first = await first_held(http, backend)
            later = [rerank(http) for _ in range(5)]
            # with 36 s under way, two more fit in 120 s (36 + 36 + 36); a third would make 144 s
            await until(lambda: sum(task.done() for task in later) == 3)
            assert backend.batches == 0 and clock() == 0  # refused before any forward pass ended, theirs or not
            assert metric(app, "rerankrt_queue_seconds") == 108
            assert metric(app, "rerankrt_seconds_per_token") == SECONDS_PER_TOKEN
            refused = [task.result() for task in later if task.done()]
            backend.release.set()
            return refused, await asyncio.gather(first, *(task for task in later if not task.done()))

    refused, answered = asyncio.run(scenario())
    assert [r.status_code for r in refused] == [503] * 3
    assert {r.headers["retry-after"] for r in refused} == {"24"}  # 108 s ahead drained to 84 s: room for 36 s
    assert refused[0].json()["message"] == (
        "the server is busy: ~108.0 s of work queued ahead of this request and ~36.0 s of its own, more than the "
        "120.0 s left of its timeout; retry in 24 s"
    )
    assert [r.status_code for r in answered] == [200] * 3
    assert backend.batches == 3  # no refused request's pairs ever ran
    assert metric(app, "rerankrt_requests_refused_at_admission_total") == 3


def test_an_admitted_request_is_answered_past_the_timeout():
    app, backend, clock = slow_app(request_timeout=100, measured=0.1)  # the estimate is 10x too low

    async def scenario():
        async with asgi_client(app) as http:
            first = await first_held(http, backend)
            burst = [rerank(http) for _ in range(7)]  # 8 x 3.6 s estimated, 8 x 36 s taken
            await until(lambda: app.state.scheduler.queued_pairs == 7 * 4)
            backend.release.set()
            return await asyncio.gather(first, *burst)

    responses = asyncio.run(scenario())
    assert [r.status_code for r in responses] == [200] * 8
    assert clock() == 8 * REQUEST_TOKENS * SECONDS_PER_TOKEN > 2 * 100  # the last answered long past the timeout


def test_a_stalled_backend_fails_the_waiting_requests_after_the_timeout():
    app, backend, clock = slow_app(request_timeout=60, measured=None)  # nothing measured: all admitted

    async def scenario():
        async with asgi_client(app) as http:
            first = await first_held(http, backend)
            waiting = rerank(http)
            await until(lambda: app.state.scheduler.queued_pairs == 4)
            clock.advance(59)  # a long pass is no stall yet
            await asyncio.sleep(0.6)  # two polls of the guard
            assert not first.done() and not waiting.done()
            clock.advance(2)  # no pass has ended for 61 s
            stalled = await asyncio.gather(first, waiting)
            assert app.state.scheduler.queued_pairs == 0  # the waiting request's pairs left the queue
            backend.release.set()
            return stalled, await rerank(http)

    stalled, recovered = asyncio.run(scenario())
    assert [r.status_code for r in stalled] == [503, 503]
    assert all(r.headers["retry-after"] == "1" for r in stalled)
    assert stalled[1].json()["message"] == "no forward pass finished for 60 s (the backend is stuck); retry later"
    assert recovered.status_code == 200
    assert backend.batches == 2  # the stalled pass, then the recovered request: the waiting one never ran


def test_a_pairwise_request_refused_in_part_leaves_none_of_its_pairs_queued():
    app, backend, clock = slow_app(request_timeout=60)

    async def scenario():
        async with asgi_client(app) as http:
            first = await first_held(http, backend)
            # vLLM's pairwise score (different queries): one Reranker request per pair, 9 s each behind the 36 s under
            # way; two fit in 60 s
            queries = ["what is panda", "what is bamboo", "where is china", "who eats bamboo"]
            refused = await http.post("/v1/score", json={"text_1": queries, "text_2": DOCUMENTS})
            assert app.state.scheduler.queued_pairs == 0  # the two admitted pairs were dropped with the rest
            backend.release.set()
            return refused, await first

    refused, first = asyncio.run(scenario())
    assert refused.status_code == 503 and refused.headers["retry-after"] == "3"  # 54 s ahead, 51 s would fit
    assert first.status_code == 200
    assert backend.batches == 1
