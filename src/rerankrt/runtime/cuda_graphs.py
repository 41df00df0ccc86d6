"""CUDA graphs for the packed torch path: steady shapes by bucketed token counts, no launch overhead.

A packed stream of T tokens is padded (`families.packed.pad_stream`: padding tokens in a group of their own, never
seen by a real token, never read) to the smallest bucket that holds it, and runs that bucket's compiled module:
`torch.compile(mode="reduce-overhead", dynamic=False)`, which captures CUDA graphs for its one shape. Each bucket is
compiled at most once (at warm-up or on first use); a stream longer than the largest bucket runs eagerly, so an
odd shape never makes torch recompile. Warm-up at start compiles the buckets smallest first until its time bound is
spent, and logs what it did; the buckets left compile on first use.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

import torch

from rerankrt.families.packed import pad_stream

log = logging.getLogger(__name__)

SMALLEST_BUCKET = 256
WARM_UP_SECONDS = 120.0

Compile = Callable[[torch.nn.Module], Callable]


def bucket_sizes(budget: int, smallest: int = SMALLEST_BUCKET) -> tuple[int, ...]:
    """Token counts of the buckets for streams of at most `budget` tokens: powers of two from `smallest` up to the
    first that holds `budget`."""
    sizes = [smallest]
    while sizes[-1] < budget:
        sizes.append(sizes[-1] * 2)
    return tuple(sizes)


def reduce_overhead(module: torch.nn.Module) -> Callable:
    """torch.compile with CUDA graphs, one static shape."""
    return torch.compile(module, mode="reduce-overhead", dynamic=False)


def _allow_recompiles(buckets: int) -> None:
    """One compiled entry per bucket shares the module's code: dynamo must keep that many entries."""
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):  # the name in torch >= 2.6, then the older one
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), 2 * buckets))
            return


class GraphBuckets:
    """`run_stream(tensors) -> logits [T]` for `families.packed.PackedScorer`: streams within a bucket run its
    compiled module (padded to it), longer ones the module eagerly. `compile_requests` counts compilations per
    bucket (never more than one)."""

    def __init__(self, module: torch.nn.Module, buckets: tuple[int, ...], compile: Compile = reduce_overhead):
        if not buckets:
            raise ValueError("no buckets")
        self.module, self.buckets, self.compile = module, tuple(sorted(buckets)), compile
        self.compiled: dict[int, Callable] = {}
        self.compile_requests: Counter[int] = Counter()
        self.eager_runs = 0
        _allow_recompiles(len(self.buckets))

    def bucket(self, tokens: int) -> int | None:
        """The smallest bucket holding `tokens`, None past the largest."""
        return next((size for size in self.buckets if size >= tokens), None)

    def __call__(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        tokens = tensors["input_ids"].shape[1]
        size = self.bucket(tokens)
        if size is None:
            self.eager_runs += 1
            return self.module(**tensors)
        mark_step = getattr(torch.compiler, "cudagraph_mark_step_begin", None)
        if mark_step is not None:  # each call a new step: the previous outputs are read already
            mark_step()
        return self._compiled(size)(**pad_stream(tensors, size))[:tokens]

    def _compiled(self, size: int) -> Callable:
        if size not in self.compiled:
            self.compile_requests[size] += 1
            self.compiled[size] = self.compile(self.module)
        return self.compiled[size]

    def warm_up(self, device: str, seconds: float = WARM_UP_SECONDS) -> list[int]:
        """Compile and run each bucket, smallest first, until `seconds` are spent; the buckets warmed (logged)."""
        started, warmed = time.perf_counter(), []
        for size in self.buckets:
            if time.perf_counter() - started > seconds:
                break
            one = torch.zeros((1, 1), dtype=torch.long, device=device)
            with torch.inference_mode():
                self(pad_stream({"input_ids": one, "position_ids": one, "group": one, "segment": one + 1}, size))
            warmed.append(size)
        left = [size for size in self.buckets if size not in warmed]
        log.info("CUDA graphs: buckets %s tokens warmed in %.1f s%s", warmed, time.perf_counter() - started,
                 f"; {left} compile on first use (warm-up bound {seconds:.0f} s)" if left else "")  # fmt: skip
        return warmed
