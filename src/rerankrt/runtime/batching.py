"""Group pairs into batches: sorted by length so padding stays small, bounded by size and padded tokens."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def plan_batches(lengths: Sequence[int], max_batch_size: int, max_batch_tokens: int) -> list[np.ndarray]:
    """Indices of each batch, longest pairs first; a batch's padded size (rows x longest) stays within budget.

    A single pair longer than `max_batch_tokens` still gets a batch of its own.
    """
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    while start < len(order):
        longest = lengths[order[start]]
        rows = max(1, min(max_batch_size, max_batch_tokens // max(longest, 1)))
        batches.append(order[start : start + rows])
        start += rows
    return batches
