"""Timing a call: once, or repeated after a warm-up."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class Timing:
    """The wall times of the timed calls, in seconds, and what the last call returned."""

    times: list[float]
    output: Any

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def best(self) -> float:
        return min(self.times)


def once(fn: Callable[[], Any]) -> tuple[float, Any]:
    """`fn()` timed: (seconds, what it returned)."""
    started = time.perf_counter()
    output = fn()
    return time.perf_counter() - started, output


def repeat(fn: Callable[[], Any], repeats: int, warm_up: Callable[[], Any] | None = None) -> Timing:
    """One untimed warm-up call (`warm_up`, default `fn` itself), then `fn` timed `repeats` times."""
    output = (warm_up or fn)()
    times = []
    for _ in range(repeats):
        seconds, output = once(fn)
        times.append(seconds)
    return Timing(times, output)
