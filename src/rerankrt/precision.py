"""The one precision vocabulary: CLI flags, settings, manifests, the exporter and TensorRT engines all use it."""

from __future__ import annotations

import math
from enum import Enum


class Precision(str, Enum):
    """The number format a graph, engine or torch model computes in."""

    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"
    INT8 = "int8"

    def __str__(self) -> str:
        return self.value

    def __hash__(self) -> int:  # as its string, so a Precision finds "fp16" keys and vice versa
        return hash(self.value)


PRECISIONS: tuple[str, ...] = tuple(p.value for p in Precision)
ENGINE_PRECISIONS: tuple[Precision, ...] = (Precision.FP16, Precision.BF16, Precision.FP32)
"""TensorRT engine precisions, fastest first (int8 is a CPU graph)."""
INT8_METHODS: tuple[str, ...] = ("dynamic", "blockwise", "mixed", "search")
"""int8 recipes (export/precision.py), fastest first, then the search for the model's own products to keep fp32
(export/int8_search.py): the export keeps the first that passes the fidelity gate."""
INT8_SEARCH_BUDGET_S = 900.0
"""The int8 search's default time budget in seconds (`--int8-search-budget`)."""


def int8_search_budget(seconds) -> float:
    """The int8 search's time budget as seconds, or ValueError naming the option."""
    try:
        value = float(seconds)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"int8 search budget {seconds!r}: expected seconds, a finite number > 0")
    return value
