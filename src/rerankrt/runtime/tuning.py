"""Measure, then choose: under `auto`, the plan that serves is the fastest of those that pass the self-check here.

Which plan is fastest depends on the CPU more than any fixed order can say: OpenVINO's bf16 ran 2x its fp32 on a
Zen 4 and slower than fp32 on an Intel CPU without AMX; on an AVX2-only CPU a bf16 or weight-only int8 artifact
computes in fp32 anyway. So at the first start of an artifact on a machine, every candidate plan of the first
device that has one is opened, self-checked and timed on the artifact's golden set (`time_golden`: two passes
after the self-check's warm-up, the faster counts); the fastest serves, and the timings are written to a cache
file outside the artifact (`cache_folder()`), keyed by the artifact's manifest, the CPU's model and features, the
thread count and the runtimes' versions (`TimingKey`). A later start with the same key opens the recorded choice
first (its self-check still runs); any change in the key measures again. A plan that fails to load or misses the
self-check is never chosen, whatever its time. `--backend`, `--precision` and `--no-tune` skip all this: the
first plan of the fixed order that loads and passes serves.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from rerankrt.artifact import sha256_file
from rerankrt.families import Batch
from rerankrt.runtime.machine import Machine, package_version

log = logging.getLogger(__name__)

TIMING_REPEATS = 2  # timed passes of the golden set per plan; the faster counts
RUNTIMES = ("onnxruntime", "openvino", "torch")  # whose versions are part of the key (they pick the kernels)
CACHE_MAX_BYTES = 1 << 20  # a timings file is a few hundred bytes: anything larger is ignored unread


def cache_folder() -> Path:
    """Where plan timings are kept: $RERANKRT_CACHE_DIR, else $XDG_CACHE_HOME/rerankrt, else ~/.cache/rerankrt
    (outside the artifact, whose files are hashed and may be read-only)."""
    if folder := os.environ.get("RERANKRT_CACHE_DIR"):
        return Path(folder) / "plan-timings"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "rerankrt" / "plan-timings"


@dataclass(frozen=True)
class TimingKey:
    """What decides which plan is fastest: the artifact, the CPU, the threads, the runtimes."""

    artifact: str  # sha256 of the artifact's manifest.json (which hashes every graph)
    cpu: str  # the CPU's model name
    features: tuple[str, ...]  # those of machine.CPU_FEATURES it has
    threads: int
    runtimes: tuple[tuple[str, str], ...]  # (runtime, version) of those installed

    @classmethod
    def of(cls, manifest_file: Path, machine: Machine, threads: int) -> TimingKey:
        runtimes = tuple((name, version) for name in RUNTIMES if (version := package_version(name)))
        return cls(sha256_file(manifest_file), machine.cpu_model, machine.cpu_features, threads, runtimes)

    def to_dict(self) -> dict:
        return {**asdict(self), "features": list(self.features), "runtimes": dict(self.runtimes)}

    def file_name(self) -> str:
        text = json.dumps(self.to_dict(), sort_keys=True)
        return f"{self.artifact[:16]}-{hashlib.sha256(text.encode()).hexdigest()[:16]}.json"


@dataclass
class PlanTiming:
    plan: str  # ServingPlan.describe()
    seconds: float | None  # the golden set's faster timed pass; None when it was not timed
    outcome: str  # "served", "slower", or why it was not timed (failed to load, missed the self-check)


@dataclass
class Timings:
    """One measurement: every candidate's timing and the plan chosen."""

    chosen: str
    measured_at: str
    pairs: int
    tokens: int
    plans: list[PlanTiming]

    def summary(self) -> str:
        parts = [f"{t.plan} {t.seconds:.3f} s" if t.seconds is not None else f"{t.plan}: {t.outcome}"
                 for t in self.plans]  # fmt: skip
        return f"{self.chosen} is the fastest here ({'; '.join(parts)}; golden set, {self.pairs} pairs)"

    def by_plan(self) -> dict[str, float | str]:
        """Each plan's seconds, or why it was not timed."""
        return {t.plan: t.seconds if t.seconds is not None else t.outcome for t in self.plans}

    def to_dict(self) -> dict:
        return asdict(self)


class TimingCache:
    """The timings file of one key: read if present and well-formed (anything else is measured again), written
    atomically; a folder that cannot be written costs a warning and a measurement at every start, nothing more."""

    def __init__(self, key: TimingKey, folder: Path | None = None):
        self.key = key
        self.path = (folder or cache_folder()) / key.file_name()

    def read(self) -> Timings | None:
        try:
            if self.path.stat().st_size > CACHE_MAX_BYTES:
                raise ValueError(f"over {CACHE_MAX_BYTES} bytes")
            data = json.loads(self.path.read_text())
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            if data.get("key") != self.key.to_dict():
                raise ValueError("recorded for another key")
            body = data["timings"]
            plans = [PlanTiming(str(p["plan"]), _seconds(p["seconds"]), str(p["outcome"])) for p in body["plans"]]
            return Timings(
                str(body["chosen"]), str(body["measured_at"]), int(body["pairs"]), int(body["tokens"]), plans
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("plan timings %s unreadable (%s): measuring again", self.path, exc)
            return None

    def write(self, timings: Timings) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial = self.path.with_suffix(f".{os.getpid()}.tmp")
            partial.write_text(json.dumps({"key": self.key.to_dict(), "timings": timings.to_dict()}, indent=1))
            partial.replace(self.path)
        except OSError as exc:
            log.warning("plan timings not kept (%s): the next start measures again", exc)


def _seconds(value) -> float | None:
    if value is None:
        return None
    seconds = float(value)
    if not np.isfinite(seconds) or seconds < 0:
        raise ValueError(f"seconds {value!r}")
    return seconds


def time_golden(run: Callable, batches: Sequence[Batch], repeats: int = TIMING_REPEATS) -> float:
    """Seconds for `batches` (the self-check's, `self_check.golden_batches`) through `run`: the fastest of `repeats`
    passes. Run it after the self-check, whose pass is the warm-up (first-shape compilation)."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for batch in batches:
            run(batch)
        best = min(best, time.perf_counter() - started)
    return best


def measured_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
