"""Grid-dependent inputs of the Qwen3-VL graphs, computed in numpy so the graphs have no data-dependent shapes.

- `vision_plan`: the vision encoder runs on *sequences* (an image, or one temporal
  patch of a video) whose patches attend only to each other, which is exactly
  transformers' block-diagonal attention over `cu_seqlens`. Sequences of the same
  length are stacked into one call [sequences, merged_tokens, merge_window, patch_dim],
  so no attention mask is needed and no compute is spent across images.
- `position_embedding_lookup`: transformers' `fast_pos_embed_interpolate` (bilinear
  interpolation of the learned grid), as four indices and weights per patch.
- `rotary_cos_sin`: transformers' `rot_pos_emb` (2-D rotary over row and column).
- `rope_positions`: the decoder's 3-D mrope position ids of one prompt (`get_rope_index`).

Per-patch arrays are in the processor's row order (grouped by merge window).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np


@dataclass(frozen=True)
class VisionGeometry:
    """What the grid-dependent inputs need from the vision config."""

    merge_size: int
    num_grid_per_side: int  # the learned position grid is num_grid_per_side ** 2
    head_dim: int
    rope_theta: float = 10000.0

    @classmethod
    def from_config(cls, vision_config: dict) -> VisionGeometry:
        return cls(
            merge_size=int(vision_config["spatial_merge_size"]),
            num_grid_per_side=int(vision_config["num_position_embeddings"] ** 0.5),
            head_dim=int(vision_config["hidden_size"]) // int(vision_config["num_heads"]),
        )


def _merge_order(values: np.ndarray, h: int, w: int, m: int) -> np.ndarray:
    """[..., h * w] in row-major order -> the same values in merge-window order."""
    lead = values.shape[:-1]
    grid = values.reshape(*lead, h // m, m, w // m, m)
    axes = len(lead)
    grid = grid.transpose(*range(axes), axes, axes + 2, axes + 1, axes + 3)
    return grid.reshape(*lead, h * w)


@lru_cache(maxsize=256)
def position_embedding_lookup(h: int, w: int, geometry: VisionGeometry) -> tuple[np.ndarray, np.ndarray]:
    """(indices int64 [4, h * w], weights float32 [4, h * w]): pos_embed = sum_k table[idx[k]] * weight[k]."""
    n = geometry.num_grid_per_side
    h_pos = np.linspace(0, n - 1, h, dtype=np.float32)
    w_pos = np.linspace(0, n - 1, w, dtype=np.float32)
    h_floor, w_floor = h_pos.astype(np.int64), w_pos.astype(np.int64)
    h_ceil, w_ceil = np.minimum(h_floor + 1, n - 1), np.minimum(w_floor + 1, n - 1)
    dh, dw = h_pos - h_floor, w_pos - w_floor
    index = np.stack(
        [
            (h_floor[:, None] * n + w_floor[None]).ravel(),
            (h_floor[:, None] * n + w_ceil[None]).ravel(),
            (h_ceil[:, None] * n + w_floor[None]).ravel(),
            (h_ceil[:, None] * n + w_ceil[None]).ravel(),
        ]
    )
    weight = np.stack(
        [
            ((1 - dh)[:, None] * (1 - dw)[None]).ravel(),
            ((1 - dh)[:, None] * dw[None]).ravel(),
            (dh[:, None] * (1 - dw)[None]).ravel(),
            (dh[:, None] * dw[None]).ravel(),
        ]
    ).astype(np.float32)
    m = geometry.merge_size
    return _merge_order(index, h, w, m), _merge_order(weight, h, w, m)


@lru_cache(maxsize=256)
def rotary_cos_sin(h: int, w: int, geometry: VisionGeometry) -> tuple[np.ndarray, np.ndarray]:
    """(cos, sin) float32 [h * w, head_dim] of the vision tower's 2-D rotary embedding."""
    dim = geometry.head_dim // 2
    inv_freq = (1.0 / (geometry.rope_theta ** (np.arange(0, dim, 2, dtype=np.float32) / dim))).astype(np.float32)
    rows = np.repeat(np.arange(h), w)
    cols = np.tile(np.arange(w), h)
    m = geometry.merge_size
    rows, cols = _merge_order(rows, h, w, m), _merge_order(cols, h, w, m)
    table = np.outer(np.arange(max(h, w), dtype=np.float32), inv_freq).astype(np.float32)
    half = np.concatenate([table[rows], table[cols]], axis=-1)
    emb = np.concatenate([half, half], axis=-1)
    return np.cos(emb).astype(np.float32), np.sin(emb).astype(np.float32)


@dataclass(frozen=True)
class VisionCall:
    """One call of the vision encoder: `sequences` stacked sequences of `merged` tokens each."""

    patch_rows: np.ndarray  # int64 [sequences * merged * window]: rows of the batch's pixel_values
    token_rows: np.ndarray  # int64 [sequences * merged]: rows of the batch's visual embeddings
    inputs: dict[str, np.ndarray]  # the grid-dependent graph inputs (pixel_values not included)
    sequences: int
    merged: int


def vision_plan(grid_thw: np.ndarray, geometry: VisionGeometry) -> list[VisionCall]:
    """Vision-encoder calls covering every image and video of a batch, items in `grid_thw` order.

    A video of t temporal patches is t sequences (transformers attends within each one).
    Sequences of equal length share a call; each call's output rows go to `token_rows`.
    """
    window = geometry.merge_size**2
    by_length: dict[int, list[tuple[int, int, int, int]]] = {}
    patch_offset = token_offset = 0
    for t, h, w in np.asarray(grid_thw, dtype=np.int64).reshape(-1, 3).tolist():
        for _ in range(t):
            by_length.setdefault(h * w, []).append((patch_offset, token_offset, h, w))
            patch_offset += h * w
            token_offset += h * w // window
    calls = []
    for length, members in by_length.items():
        merged = length // window
        lookups = [position_embedding_lookup(h, w, geometry) for _, _, h, w in members]
        rotary = [rotary_cos_sin(h, w, geometry) for _, _, h, w in members]
        s = len(members)
        calls.append(
            VisionCall(
                patch_rows=np.concatenate([np.arange(p, p + length) for p, _, _, _ in members]),
                token_rows=np.concatenate([np.arange(k, k + merged) for _, k, _, _ in members]),
                inputs={
                    "pos_index": np.stack([i for i, _ in lookups], axis=1).reshape(4, s, merged, window),
                    "pos_weight": np.stack([wt for _, wt in lookups], axis=1).reshape(4, s, merged, window),
                    "rotary_cos": np.stack([c for c, _ in rotary]).reshape(s, merged, window, -1),
                    "rotary_sin": np.stack([sn for _, sn in rotary]).reshape(s, merged, window, -1),
                },
                sequences=s,
                merged=merged,
            )
        )
    return calls


def rope_positions(input_ids: np.ndarray, visual_pad_ids: set[int], blocks: Sequence[tuple[int, int]]) -> np.ndarray:
    """3-D mrope position ids [3, len(input_ids)] of one unpadded prompt.

    Text advances all three by one per token. A visual block of merged grid (h, w) - an image,
    or one temporal patch of a video - sits at (p, p + row, p + col) where p is the next text
    position, and text after it resumes at p + max(h, w). `blocks` lists the blocks in order.
    """
    ids = np.asarray(input_ids)
    n = len(ids)
    positions = np.empty((3, n), dtype=np.int64)
    is_visual = np.isin(ids, list(visual_pad_ids))
    cursor, i, block = 0, 0, 0
    while i < n:
        if is_visual[i]:
            h, w = blocks[block]
            size = h * w
            if i + size > n or not is_visual[i : i + size].all():
                raise ValueError(f"visual block {block} ({h}x{w}) does not match its placeholder tokens")
            positions[0, i : i + size] = cursor
            positions[1, i : i + size] = cursor + np.repeat(np.arange(h), w)
            positions[2, i : i + size] = cursor + np.tile(np.arange(w), h)
            cursor += max(h, w)
            i += size
            block += 1
        else:
            j = i + 1
            while j < n and not is_visual[j]:
                j += 1
            positions[:, i:j] = cursor + np.arange(j - i)
            cursor += j - i
            i = j
    if block != len(blocks):
        raise ValueError(f"{len(blocks)} visual blocks given, {block} found in the prompt")
    return positions
