"""Group pairs into batches: sorted by length so padding stays small, bounded by size, padded tokens and padding."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def plan_batches(
    lengths: Sequence[int], max_batch_size: int, max_batch_tokens: int, max_padding_ratio: float = 1.0
) -> list[np.ndarray]:
    """Indices of each batch, longest pairs first.

    A batch's padded size (rows x longest) stays within `max_batch_tokens`, and its share of
    padded positions within `max_padding_ratio` (1.0: no limit). A single pair longer than
    `max_batch_tokens` still gets a batch of its own.
    """
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    while start < len(order):
        longest = max(int(lengths[order[start]]), 1)
        end, real = start + 1, longest
        while end < len(order) and end - start < max_batch_size:
            rows, candidate_real = end - start + 1, real + int(lengths[order[end]])
            if rows * longest > max_batch_tokens or 1 - candidate_real / (rows * longest) > max_padding_ratio:
                break
            end, real = end + 1, candidate_real
        batches.append(order[start:end])
        start = end
    return batches


def top_up(
    batch: Sequence[int],
    lengths: Sequence[int],
    max_batch_size: int,
    max_batch_tokens: int,
    max_padding_ratio: float = 1.0,
) -> list[int]:
    """Indices of `lengths` that join a batch of pairs of lengths `batch`, within the limits of `plan_batches`.

    Pairs no longer than the batch's longest join first, longest first (as `plan_batches` groups them), then
    pairs longer than it, shortest first, each while the batch stays within all limits.
    """
    rows, longest, real = len(batch), max(max(batch), 1), sum(batch)
    below = sorted((i for i, n in enumerate(lengths) if n <= longest), key=lambda i: -lengths[i])
    above = sorted((i for i, n in enumerate(lengths) if n > longest), key=lambda i: lengths[i])
    joined: list[int] = []
    for candidates in (below, above):
        for i in candidates:
            width = max(longest, int(lengths[i]))
            if rows >= max_batch_size or (rows + 1) * width > max_batch_tokens:
                break
            if 1 - (real + lengths[i]) / ((rows + 1) * width) > max_padding_ratio:
                break
            joined.append(i)
            rows, longest, real = rows + 1, width, real + int(lengths[i])
    return joined


def default_padding_ratio(device: str) -> float:
    """On CPU a padded position costs as much as a real one and big batches buy little (bench/load.py)."""
    return 0.1 if device == "cpu" else 1.0


def default_top_up_tokens(device: str) -> int | None:
    """Oldest-first fills a batch with newer requests' pairs up to this many padded tokens (None: the batch limit).

    On CPU a forward pass costs what its tokens cost, whatever the batch: past a thousand tokens or so a batch is
    matrix-bound, so filling it further only delays the oldest request (replayed: median request done at 0.58 of
    a 16 x 32-document burst instead of 0.77, the same padded tokens). A GPU gains from full batches.
    """
    return 1024 if device == "cpu" else None
