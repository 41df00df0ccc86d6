"""Ray Serve (`rerankrt serve --ray`): the options and the proxy middleware (unit tier), and on a local Ray cluster
(integration tier) the same API through Ray's proxy with 2 replicas, overload as 503 + Retry-After, and the loss of
a replica under load: what the clients saw, the replacement replica, the throughput after.

Skipped when ray is not installed (the `ray` extra; `dev` includes it)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

pytest.importorskip("ray", reason="Ray Serve is not installed: pip install -e '.[ray]'")

from rerankrt.server import create_app  # noqa: E402
from rerankrt.server.ray_serve import REPLICA_HEADER, ReplicaLost, RerankrtReplica, deployment_options  # noqa: E402
from rerankrt.server.settings import ServeSettings  # noqa: E402
from tests.fakes import make_model  # noqa: E402
from tests.support import ENV, FakeClock, free_port  # noqa: E402

REPLICA = REPLICA_HEADER.decode()
DOCS = [f"The giant panda number {i} is a bear that eats bamboo in the mountains of Sichuan." for i in range(24)]
BODY = {"query": "what is panda?", "documents": DOCS}

# --- unit tier -------------------------------------------------------------------------------------------


def test_options_fixed_replicas_and_limits():
    options = deployment_options(
        ServeSettings(model_path="m", replicas=3, max_ongoing_requests=4, max_queued_requests=8, replica_gpus=1)
    )
    assert options["num_replicas"] == 3 and "autoscaling_config" not in options
    assert options["max_ongoing_requests"] == 4 and options["max_queued_requests"] == 8
    assert options["backpressure_config"] == {"status_code": 503, "retry_after_s": 1}
    assert options["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 1.0}


def test_options_autoscaling():
    settings = ServeSettings(
        model_path="m", autoscale_min_replicas=1, autoscale_max_replicas=4, autoscale_target_ongoing_requests=2
    )
    options = deployment_options(settings)
    assert "num_replicas" not in options
    assert options["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 2.0}


def test_health_check_scores_a_pair_when_idle_and_fails_a_stalled_scheduler():
    gate = threading.Event()
    config = ServeSettings(model_path="-", request_timeout=60, warmup=False, max_padding_ratio=1.0)
    app = create_app(config, make_model(gate=gate))
    app.state.ready = True
    scheduler, clock = app.state.scheduler, FakeClock()
    scheduler.clock = clock
    replica = SimpleNamespace(app=app, settings=config)  # check_health reads only these
    gate.set()
    asyncio.run(RerankrtReplica.check_health(replica))  # idle: one pair through the Reranker
    gate.clear()
    busy = scheduler.submit(app.state.reranker.encoder.encode("what is panda", ["the panda"]))
    while scheduler.queued_pairs:  # until its pass is under way, held at the gate
        time.sleep(0.01)
    clock.advance(59)  # nothing queued, yet not idle: no pair is sent to wait behind the pass
    asyncio.run(RerankrtReplica.check_health(replica))
    clock.advance(2)
    with pytest.raises(RuntimeError, match="no forward pass finished for 60 s"):
        asyncio.run(RerankrtReplica.check_health(replica))
    gate.set()
    assert len(busy.result(30)) == 1
    app.state.reranker.close()


def test_autoscaling_bounds_are_checked_by_the_cli(capsys):
    """Refused while the flags are read, before anything starts (in-process: `rerankrt serve` is cli.main)."""
    from rerankrt.cli import main

    assert main(["serve", "--model-path", "m", "--ray", "--autoscale-min-replicas", "2"]) == 2
    assert "--autoscale-min-replicas and --autoscale-max-replicas go together" in capsys.readouterr().err
    assert main(["serve", "--model-path", "m", "--autoscale-min-replicas", "3", "--autoscale-max-replicas", "2"]) == 2
    assert "--autoscale-min-replicas 3 is above --autoscale-max-replicas 2" in capsys.readouterr().err


def run_asgi(app) -> tuple[int, dict[str, str], bytes]:
    """One GET through the ASGI `app`: status, headers, body."""
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/v1/rerank", "headers": [], "query_string": b""}
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    headers = {}
    for name, value in start["headers"]:
        headers[name.decode().lower()] = headers.get(name.decode().lower(), ()) + (value.decode(),)
    return start["status"], headers, body


def fixed_response(status: int, headers: list[tuple[bytes, bytes]], body: bytes = b"x"):
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def test_replica_lost_turns_the_proxys_500_into_503_with_retry_after():
    status, headers, body = run_asgi(ReplicaLost(fixed_response(500, [(b"x-request-id", b"r1")], b"RayActorError")))
    assert status == 503 and headers["retry-after"] == ("1",)
    assert b"replica serving this request was lost" in body and b"RayActorError" not in body


def test_replica_lost_answers_503_when_the_proxy_sends_nothing_or_raises():
    async def silent(scope, receive, send):
        return None

    async def failing(scope, receive, send):
        raise RuntimeError("actor died")

    for app in (silent, failing):
        status, headers, _ = run_asgi(ReplicaLost(app))
        assert status == 503 and headers["retry-after"] == ("1",)


def test_replica_lost_passes_a_replicas_answers_through():
    replica = [(REPLICA_HEADER, b"abc"), (b"x-request-id", b"r1"), (b"X-Request-ID", b"r1")]
    for code in (200, 500, 503):
        status, headers, body = run_asgi(ReplicaLost(fixed_response(code, replica, b"ours")))
        assert (status, body) == (code, b"ours")
        assert headers["x-request-id"] == ("r1",)  # the replica's and the proxy's copy of one id, sent once


# --- integration tier: a local Ray cluster ---------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_artifact(artifact_dirs) -> Path:
    """The tiny XLM-R cross-encoder (`tiny_models.build_xlmr`), exported (the session's `artifact_dirs`)."""
    return artifact_dirs["xlmr"]


def replica_pids() -> list[int]:
    """Processes of Ray Serve replicas on this machine (Ray titles them `ray::ServeReplica:<app>:<deployment>`)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "cmdline").read_bytes().startswith(b"ray::ServeReplica:rerankrt"):
                    pids.append(int(entry.name))
    return pids


@contextlib.contextmanager
def ray_server(model_path: Path, *flags: str):
    """`rerankrt serve --ray` in a subprocess (a local Ray cluster); yields (base URL, process, its output so far),
    then stops it with SIGTERM."""
    port = free_port()
    env = {name: value for name, value in ENV.items() if name != "RAY_ADDRESS"}  # a local cluster of its own
    env["RERANKRT_PORT"] = str(port)
    proc = subprocess.Popen(
        [sys.executable, "-m", "rerankrt.cli", "serve", "--ray", "--model-path", str(model_path), *flags],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    output: list[str] = []
    threading.Thread(target=lambda: output.extend(proc.stdout), daemon=True).start()
    base = f"http://127.0.0.1:{port}"
    try:
        yield base, proc, output
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def wait_for_replicas(base: str, count: int, proc, output, timeout: float = 120) -> set[str]:
    """Block until `count` distinct replicas have answered /v1/rerank; their ids."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=10) as client:
        while time.monotonic() < deadline:
            assert proc.poll() is None, "".join(output)
            with contextlib.suppress(httpx.TransportError):
                response = client.post(f"{base}/v1/rerank", json=BODY)
                if response.status_code == 200:
                    seen.add(response.headers[REPLICA])
                    if len(seen) >= count:
                        return seen
                    continue
            time.sleep(0.3)
    pytest.fail(f"{count} replicas did not answer within {timeout} s (saw {seen}):\n{''.join(output)[-4000:]}")


@dataclass
class Outcome:
    started: float
    ended: float
    status: int | None  # None: no HTTP answer (connection error, client timeout)
    replica: str | None = None
    retry_after: str | None = None
    error: str | None = None


def load(base: str, clients: int, stop: threading.Event, outcomes: list[Outcome], timeout: float = 30) -> list:
    """`clients` threads, each posting BODY back to back until `stop`; every answer (or failure) in `outcomes`."""

    def client_loop():
        with httpx.Client(timeout=timeout) as client:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    r = client.post(f"{base}/v1/rerank", json=BODY)
                    outcomes.append(
                        Outcome(started, time.monotonic(), r.status_code, r.headers.get(REPLICA),
                                r.headers.get("retry-after"), None if r.status_code == 200 else r.text[:200])
                    )  # fmt: skip
                    if r.status_code == 503:
                        time.sleep(float(r.headers.get("retry-after", 1)) / 4)  # a polite client, shortened
                except httpx.HTTPError as exc:
                    outcomes.append(Outcome(started, time.monotonic(), None, error=repr(exc)))

    threads = [threading.Thread(target=client_loop, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    return threads


def rate(outcomes: list[Outcome], start: float, end: float) -> float:
    """Successful requests per second that ended in [start, end)."""
    return sum(1 for o in outcomes if o.status == 200 and start <= o.ended < end) / (end - start)


RAY_FLAGS = (
    "--replicas", "2", "--threads", "1", "--max-ongoing-requests", "2", "--max-queued-requests", "4",
    "--max-queued-pairs", "256", "--log-level", "warning",
)  # fmt: skip


@pytest.fixture(scope="module")
def ray_cluster(tiny_artifact):
    """2 replicas of the tiny model behind Ray's proxy; each replica takes 2 requests at once, each proxy holds 4."""
    with ray_server(tiny_artifact, *RAY_FLAGS) as (base, proc, output):
        replicas = wait_for_replicas(base, 2, proc, output)
        yield base, proc, output, replicas


@pytest.mark.integration
def test_ray_serves_the_same_api_as_the_plain_server(ray_cluster):
    base, *_ = ray_cluster
    with httpx.Client(timeout=30) as client:
        assert client.get(f"{base}/health").json()["status"] == "ok"
        ranked = client.post(f"{base}/v1/rerank", json={"query": "panda?", "documents": ["a bear", "a car"]}).json()
        assert sorted(r["index"] for r in ranked) == [0, 1]
        results = client.post(f"{base}/rerank", json={"query": "panda?", "documents": ["a bear", "a car"]}).json()
        assert len(results["results"]) == 2
        tei = client.post(f"{base}/rerank", json={"query": "panda?", "texts": ["a bear", "a car"]}).json()
        assert len(tei) == 2
        models = client.get(f"{base}/v1/models").json()
        assert models["data"][0]["id"] == "xlmr" and models["data"][0]["backend"] == "openvino"
        metrics = client.get(f"{base}/metrics").text
        assert "rerankrt_queue_pairs" in metrics
        bad = client.post(f"{base}/v1/rerank", json={"query": "panda?"})
        assert bad.status_code == 400 and bad.json()["param"] == "documents"  # our error body, through the proxy
        assert bad.headers.get_list("x-request-id") == [bad.headers["x-request-id"]]
        too_many = client.post(f"{base}/v1/rerank", json={"query": "q", "documents": ["d"] * 300})
        # more pairs than a replica's --max-queued-pairs can ever hold: 413, no Retry-After; overload
        # within it is a 503 + Retry-After (test_ray_overload_is_503_with_retry_after)
        assert too_many.status_code == 413 and "retry-after" not in too_many.headers


@pytest.mark.integration
def test_ray_overload_is_503_with_retry_after(ray_cluster):
    """16 clients at once against 2 replicas x 2 ongoing + 4 queued in the proxy: the rest get Ray's backpressure
    503 with Retry-After at once, never a hang or a 500. (How many Ray admits depends on when its router learns
    each replica's load: 4 to 8 were seen.)"""
    base, *_ = ray_cluster
    body = {"query": "what is panda?", "documents": DOCS * 4}

    async def burst():
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(*(client.post(f"{base}/v1/rerank", json=body) for _ in range(16)))

    responses = asyncio.run(burst())
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) == {200, 503}, statuses
    assert statuses.count(200) >= 2  # at least one request per replica got through (Ray admits 4 to 8 here)
    assert all(r.headers.get("retry-after") == "1" for r in responses if r.status_code == 503)


@pytest.mark.integration
def test_losing_a_replica_under_load(ray_cluster):
    """4 clients posting back to back; after 4 s one replica's process is killed (SIGKILL). Every request is answered
    200, or 503 + Retry-After (those in flight on the lost replica); none hangs or gets a 500. Ray starts a
    replacement, which then answers, and the successful requests per second come back."""
    base, proc, output, replicas = ray_cluster
    outcomes: list[Outcome] = []
    stop = threading.Event()
    threads = load(base, 4, stop, outcomes)
    try:
        time.sleep(4)
        pids = replica_pids()
        assert len(pids) == 2, pids
        killed_at = time.monotonic()
        os.kill(pids[0], signal.SIGKILL)
        # the replacement: a replica id not seen before answers
        deadline = killed_at + 90
        while time.monotonic() < deadline and not any(o.replica and o.replica not in replicas for o in outcomes):
            time.sleep(0.2)
        back_at = time.monotonic()
        time.sleep(5)  # throughput with the replacement
    finally:
        stop.set()
        for thread in threads:
            thread.join(40)
    ended = time.monotonic()
    first = outcomes[0].started
    before = rate(outcomes, first + 1, killed_at)
    after = rate(outcomes, back_at, ended)
    new = {o.replica for o in outcomes if o.replica and o.replica not in replicas}
    statuses: dict = {}
    for o in outcomes:
        statuses[o.status] = statuses.get(o.status, 0) + 1
    in_flight: dict = {}  # requests sent before the kill and answered after it, by who answered (None: no one)
    for o in outcomes:
        if o.started < killed_at < o.ended:
            key = (o.status, "lost replica" if o.replica is None else "survivor" if o.replica in replicas else "new")
            in_flight[key] = in_flight.get(key, 0) + 1
    summary = (
        f"{len(outcomes)} requests: {statuses}; in flight at the kill: {in_flight}; replacement answered "
        f"{back_at - killed_at:.1f} s after the kill; {before:.1f} req/s before, {after:.1f} req/s after"
    )
    print(summary)
    failures = [o for o in outcomes if o.status not in (200, 503)]
    assert not failures, f"{summary}\n{failures[:5]}\n{''.join(output)[-3000:]}"
    assert all(o.retry_after == "1" for o in outcomes if o.status == 503), summary
    # a 503 without a replica's header is ReplicaLost's answer for a request the killed replica held
    assert all(
        "replica serving this request was lost" in o.error for o in outcomes if o.status == 503 and not o.replica
    )
    assert max(o.ended - o.started for o in outcomes) < 30, summary  # no hang
    assert new, f"no replacement replica answered: {summary}"
    assert len(replica_pids()) == 2, summary
    assert after >= 0.5 * before, summary


def test_engine_check_runs_under_the_artifact_lock(tmp_path, monkeypatch):
    import fcntl

    import rerankrt.export.tensorrt as tensorrt
    from rerankrt.server.ray_serve import LOCK_FILE, ensure_engine_once

    calls = []

    def fake_ensure_engine(artifact, required):
        with open(artifact / LOCK_FILE) as other:  # another replica's attempt to take the lock fails meanwhile
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        calls.append((artifact, required))

    monkeypatch.setattr(tensorrt, "ensure_engine", fake_ensure_engine)
    ensure_engine_once(tmp_path, required=True)
    assert calls == [(tmp_path, True)]
