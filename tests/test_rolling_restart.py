"""A rolling restart of the plain server behind a second instance, under load, with no failed request.

Two `rerankrt serve` processes behind a round-robin client (what a Service does for the pods it lists). Each in
turn is replaced as a Deployment with maxSurge 1 / maxUnavailable 0 and a preStop hook does it (deploy/kubernetes/):
a new instance starts and becomes healthy, the old one leaves the rotation, then gets SIGTERM while requests are
still in flight on it; it finishes them (the drain) and exits cleanly."""

from __future__ import annotations

import contextlib
import itertools
import signal
import threading
import time

import httpx
import pytest

from tests.support import SERVERS, running_server

pytestmark = pytest.mark.integration

BODY = {"query": "what is panda?", "documents": [f"The giant panda {i} is a bear of Sichuan." * 4 for i in range(32)]}


class Rotation:
    """The instances that take new requests, round-robin, and the requests in flight on each."""

    def __init__(self):
        self.lock = threading.Lock()
        self.bases: list[str] = []
        self.in_flight: dict[str, int] = {}
        self.turn = itertools.count()

    def add(self, base: str) -> None:
        with self.lock:
            self.bases.append(base)
            self.in_flight.setdefault(base, 0)

    def remove(self, base: str) -> int:
        """Out of the rotation; returns the requests still in flight on it."""
        with self.lock:
            self.bases.remove(base)
            return self.in_flight[base]

    @contextlib.contextmanager
    def pick(self):
        with self.lock:
            base = self.bases[next(self.turn) % len(self.bases)]
            self.in_flight[base] += 1
        try:
            yield base
        finally:
            with self.lock:
                self.in_flight[base] -= 1


def test_rolling_restart_behind_a_second_instance_fails_no_request(artifact_dirs):
    rotation = Rotation()
    stacks: dict[str, contextlib.ExitStack] = {}

    def start() -> str:
        stack = contextlib.ExitStack()
        base = stack.enter_context(running_server(artifact_dirs["xlmr"], "--threads", "1"))
        stacks[base] = stack
        rotation.add(base)
        return base

    outcomes: list[tuple[str, int | str]] = []
    stop = threading.Event()

    def client():
        with httpx.Client(timeout=60) as http:
            while not stop.is_set():
                with rotation.pick() as base:
                    try:
                        outcomes.append((base, http.post(f"{base}/v1/rerank", json=BODY).status_code))
                    except httpx.HTTPError as exc:
                        outcomes.append((base, repr(exc)))

    first = [start(), start()]
    clients = [threading.Thread(target=client, daemon=True) for _ in range(4)]
    drained = []  # requests in flight on each old instance when it got SIGTERM
    try:
        for thread in clients:
            thread.start()
        time.sleep(2)
        for old in first:
            start()  # surge: the replacement is healthy before the old instance leaves
            time.sleep(1)
            drained.append(rotation.remove(old))
            SERVERS[old].send_signal(signal.SIGTERM)
            SERVERS[old].wait(60)
            stacks.pop(old).close()  # running_server checks the clean shutdown ("Application shutdown complete")
        time.sleep(2)
    finally:
        stop.set()
        for thread in clients:
            thread.join(60)
        for stack in stacks.values():
            stack.close()
    failed = [o for o in outcomes if o[1] != 200]
    served = {base: sum(1 for b, _ in outcomes if b == base) for base in rotation.in_flight}
    summary = f"{len(outcomes)} requests, {len(failed)} failed; in flight at SIGTERM: {drained}; served: {served}"
    print(summary)
    assert not failed, f"{summary}: {failed[:5]}"
    assert sum(drained) >= 1, f"nothing was in flight when SIGTERM came: {summary}"
    assert all(count > 0 for count in served.values()), summary  # all four instances answered
