"""Padding-free packed batches and multi-item scoring for the torch scorers (the CUDA path; exact on any device).

A packed stream is one sequence [1, T] holding many pairs back to back, no padding between them. Every token carries
a `group` and a `segment`; a query token sees a key token only when both are in the same group and the key's segment
is the query's own or the group's shared prefix (segment 0), and, for a decoder, when the key comes no later. So
attention never crosses pairs, and each pair computes exactly what it computes alone:

- plain packing: each pair is its own group (one segment); positions restart per pair (a cross-encoder's from its
  position offset: XLM-R's padding_idx + 1, BERT's 0), token type ids are the pair's own; the score is read at the
  pair's first token (a cross-encoder's CLS) or its last (a decoder's);
- multi-item scoring (decoders, rows carrying `prefix_length`): the rows that share a prompt prefix become one group,
  `prefix + item 1 + item 2 + ...` (an item: the document and the prompt's suffix after it, segment k), each item
  seeing the prefix and itself only (causal), its positions continuing from the prefix, its score read at its last
  token. The prefix runs once per stream; a group's items are chunked so each stream stays within the token budget.

Streams hold at most `budget` tokens (a pair or prefix + item longer than that gets a stream of its own), so a batch
is cut by tokens, not by a pair count. The attention mask is dense (`[T, T]`, any device, the exactness proof) or
FlexAttention's BlockMask (CUDA: blocks wholly outside a pair are never computed). `PackedScorer` runs it all over a
family's `PackedModule` (`Family.packed_module`); a runner for the stream (`run_stream`: CUDA-graph buckets, in
runtime) may replace the module's call.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from rerankrt.families.base import Batch

PREFIX_LENGTH = "prefix_length"  # as families.prefix_reuse marks rows
PAD_GROUP = -1  # a bucket's padding tokens: a group of their own, never read
ATTENTIONS = ("dense", "flex")


@dataclass
class Stream:
    """One packed sequence: token arrays [T], and which positions hold which batch row's score."""

    input_ids: np.ndarray
    position_ids: np.ndarray
    group: np.ndarray
    segment: np.ndarray
    token_type_ids: np.ndarray | None
    reads: np.ndarray  # positions whose logit is a row's score
    rows: np.ndarray  # the batch row of each read

    def __len__(self) -> int:
        return len(self.input_ids)

    def tensors(self, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        """The module's inputs, each [1, T] (token_type_ids only when the stream has them)."""
        names = ["input_ids", "position_ids", "group", "segment"]
        if self.token_type_ids is not None:
            names.append("token_type_ids")
        return {name: torch.from_numpy(np.ascontiguousarray(getattr(self, name)))[None].to(device) for name in names}


@dataclass
class _Item:
    row: int
    ids: np.ndarray
    types: np.ndarray | None


class _Builder:
    """Appends pairs and groups to streams of at most `budget` tokens."""

    def __init__(self, budget: int, offset: int, read_last: bool, has_types: bool):
        self.budget, self.offset, self.read_last, self.has_types = budget, offset, read_last, has_types
        self.streams: list[Stream] = []
        self._parts: list[tuple] = []
        self._size = 0

    def _room(self, tokens: int) -> None:
        if self._parts and self._size + tokens > self.budget:
            self.flush()

    def add_group(self, prefix: np.ndarray | None, items: Sequence[_Item]) -> None:
        """One group: an optional shared prefix (segment 0), then its items (segments 1, 2, ...)."""
        p = 0 if prefix is None else len(prefix)
        self._room(p + sum(len(item.ids) for item in items))
        group = len(self._parts)
        parts = []
        if prefix is not None:
            parts.append((prefix, None, np.arange(p) + self.offset, 0, None))
        for k, item in enumerate(items, start=1):
            n = len(item.ids)
            read = (n - 1) if self.read_last else 0
            parts.append((item.ids, item.types, np.arange(p, p + n) + self.offset, k, (read, item.row)))
        self._parts.append((group, parts))
        self._size += p + sum(len(item.ids) for item in items)

    def flush(self) -> None:
        if not self._parts:
            return
        ids, positions, groups, segments, types, reads, rows = [], [], [], [], [], [], []
        start = 0
        for group, parts in self._parts:
            for tokens, token_types, pos, segment, read in parts:
                n = len(tokens)
                ids.append(tokens)
                positions.append(pos)
                groups.append(np.full(n, group))
                segments.append(np.full(n, segment))
                types.append(np.zeros(n, dtype=np.int64) if token_types is None else token_types)
                if read is not None:
                    reads.append(start + read[0])
                    rows.append(read[1])
                start += n
        cat = lambda arrays: np.concatenate(arrays).astype(np.int64)  # noqa: E731
        self.streams.append(Stream(cat(ids), cat(positions), cat(groups), cat(segments),
                                   cat(types) if self.has_types else None, np.asarray(reads, dtype=np.int64),
                                   np.asarray(rows, dtype=np.int64)))  # fmt: skip
        self._parts, self._size = [], 0


def _items(batch: Batch) -> list[_Item]:
    """Each row's real tokens (padding on either side dropped by its attention mask)."""
    ids, mask = batch["input_ids"], batch["attention_mask"].astype(bool)
    types = batch.get("token_type_ids")
    return [_Item(r, ids[r][mask[r]], None if types is None else types[r][mask[r]]) for r in range(len(ids))]


def pack(batch: Batch, budget: int, position_offset: int = 0, read_last: bool = False) -> list[Stream]:
    """A padded batch as packed streams of at most `budget` tokens, one group per pair, longest pairs first."""
    items = sorted(_items(batch), key=lambda item: -len(item.ids))
    builder = _Builder(budget, position_offset, read_last, "token_type_ids" in batch)
    for item in items:
        builder.add_group(None, [item])
    builder.flush()
    return builder.streams


def pack_multi_item(batch: Batch, budget: int, min_prefix: int) -> list[Stream]:
    """A decoder batch whose rows carry `prefix_length`: rows sharing a prefix of at least `min_prefix` tokens as
    multi-item groups (the prefix once per stream, items chunked to the budget); other rows whole, one group each.
    Scores are read at each item's last token."""
    items = _items(batch)
    lengths = batch[PREFIX_LENGTH]
    shared: dict[bytes, list[int]] = {}
    for item in items:
        p = int(lengths[item.row])
        if p >= min_prefix:
            shared.setdefault(item.ids[:p].tobytes(), []).append(item.row)
    builder = _Builder(budget, 0, True, False)
    alone = [item for item in items if len(shared.get(item.ids[: int(lengths[item.row])].tobytes(), ())) < 2]
    for rows in shared.values():
        if len(rows) < 2:
            continue
        p = int(lengths[rows[0]])
        prefix = items[rows[0]].ids[:p]
        rest = sorted((_Item(r, items[r].ids[p:], None) for r in rows), key=lambda item: -len(item.ids))
        chunk: list[_Item] = []
        for item in rest:
            if chunk and p + sum(len(i.ids) for i in chunk) + len(item.ids) > budget:
                builder.add_group(prefix, chunk)
                chunk = []
            chunk.append(item)
        builder.add_group(prefix, chunk)
    for item in sorted(alone, key=lambda item: -len(item.ids)):
        builder.add_group(None, [item])
    builder.flush()
    return builder.streams


def pad_stream(tensors: dict[str, torch.Tensor], length: int) -> dict[str, torch.Tensor]:
    """Stream tensors [1, T] padded to [1, length]: padding tokens in a group of their own (PAD_GROUP), id 0."""
    extra = length - tensors["input_ids"].shape[1]
    if extra <= 0:
        return tensors
    fill = {"group": PAD_GROUP, "segment": 0}
    return {
        name: torch.nn.functional.pad(value, (0, extra), value=fill.get(name, 0)) for name, value in tensors.items()
    }


# --- attention masks ------------------------------------------------------------------------------------------


def allowed(group: torch.Tensor, segment: torch.Tensor, causal: bool) -> torch.Tensor:
    """[T, T] bool: may query q see key k (same group; the key's segment the query's own or the prefix; causal)."""
    g, s = group.reshape(-1), segment.reshape(-1)
    ok = (g[:, None] == g[None, :]) & ((s[None, :] == s[:, None]) | (s[None, :] == 0))
    if causal:
        ok &= torch.ones_like(ok).tril()
    return ok


def additive_mask(group: torch.Tensor, segment: torch.Tensor, causal: bool, dtype: torch.dtype) -> torch.Tensor:
    """[1, 1, T, T] additive mask: 0 where allowed, the dtype's most negative value elsewhere (finite)."""
    ok = allowed(group, segment, causal)
    blocked = torch.full((), torch.finfo(dtype).min, dtype=dtype, device=ok.device)
    return torch.where(ok, torch.zeros((), dtype=dtype, device=ok.device), blocked)[None, None]


def block_mask(group: torch.Tensor, segment: torch.Tensor, causal: bool):
    """FlexAttention's BlockMask of the same rule (blocks wholly outside a pair are skipped)."""
    from torch.nn.attention.flex_attention import create_block_mask

    g, s = group.reshape(-1), segment.reshape(-1)

    def mask_mod(b, h, q, k):
        ok = (g[q] == g[k]) & ((s[k] == s[q]) | (s[k] == 0))
        return ok & (k <= q) if causal else ok

    return create_block_mask(mask_mod, None, None, len(g), len(g), device=g.device)


# --- the modules --------------------------------------------------------------------------------------------------


class PackedModule(torch.nn.Module):
    """A family's model on one packed stream: `forward(input_ids, position_ids, group, segment, token_type_ids=None)
    -> float32 logits [T]` (the one-logit head at every token; `PackedScorer` reads the pairs' own).

    `causal` (decoders), `read_last` (decoders read a pair's last token, cross-encoders its first), `position_offset`
    (the first position of a pair), `attention` ("dense" or "flex", `use_attention`)."""

    causal: bool
    read_last: bool
    position_offset: int = 0
    attention: str = "dense"

    def use_attention(self, kind: str) -> str:
        """Switch to "flex" (FlexAttention, its BlockMask) where the model has it, else stay "dense"; the kind used."""
        if kind not in ATTENTIONS:
            raise ValueError(f"attention {kind!r}: one of {', '.join(ATTENTIONS)}")
        if kind == "flex":
            model = self.transformer()
            if not getattr(model, "_supports_flex_attn", False):
                return self.attention
            model.set_attn_implementation("flex_attention")
        self.attention = kind
        return kind

    def transformer(self) -> torch.nn.Module:
        """The transformers model whose attention implementation `use_attention` sets."""
        raise NotImplementedError

    def mask(self, group: torch.Tensor, segment: torch.Tensor, dtype: torch.dtype):
        if self.attention == "flex":
            return block_mask(group, segment, self.causal)
        return additive_mask(group, segment, self.causal, dtype)


class DecoderPacked(PackedModule):
    """A folded decoder classifier (the body and its one-row `score` head) on a packed stream."""

    causal, read_last = True, True

    def __init__(self, classifier: torch.nn.Module):
        super().__init__()
        self.classifier = classifier
        self.body = getattr(classifier, classifier.base_model_prefix)

    def transformer(self) -> torch.nn.Module:
        return self.body  # its config, not the folded classifier's copy, is what the layers read

    def forward(self, input_ids, position_ids, group, segment, token_type_ids=None):
        mask = self.mask(group, segment, self.body.embed_tokens.weight.dtype)
        hidden = self.body(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, use_cache=False)
        return self.classifier.score(hidden.last_hidden_state)[0, :, 0].float()


def _old_encoder_masks(base: torch.nn.Module) -> bool:
    """True for BERT-like models written the transformers 4.x way (per-implementation attention classes, a custom
    mask taken as [batch, T, T] of 0/1 by get_extended_attention_mask); those of 5.x take a 4-D mask as given."""
    module = sys.modules[type(base).__module__]
    return any(name.endswith("_SELF_ATTENTION_CLASSES") for name in vars(module))


class EncoderPacked(PackedModule):
    """A BERT-like `*ForSequenceClassification` (a pooler + classifier, or a classification head on the first
    token's hidden state) on a packed stream; the head is applied at every token, the first of each pair is read."""

    causal, read_last = False, False

    def __init__(self, model: torch.nn.Module, position_offset: int, pooled: bool):
        super().__init__()
        self.model, self.position_offset, self.pooled = model, position_offset, pooled
        self.base = getattr(model, model.base_model_prefix)
        self.old_masks = _old_encoder_masks(self.base)

    def transformer(self) -> torch.nn.Module:
        return self.base

    def mask(self, group, segment, dtype):
        if self.attention == "dense" and self.old_masks:
            return allowed(group, segment, False)[None].long()
        return super().mask(group, segment, dtype)

    def forward(self, input_ids, position_ids, group, segment, token_type_ids=None):
        mask = self.mask(group, segment, self.base.embeddings.word_embeddings.weight.dtype)
        if token_type_ids is None:  # given always: the default is a buffer of max_positions, not of T
            token_type_ids = torch.zeros_like(input_ids)
        hidden = self.base(input_ids=input_ids, attention_mask=mask, position_ids=position_ids,
                           token_type_ids=token_type_ids)[0]  # fmt: skip
        tokens = hidden[0][:, None, :]  # every token as the "first token" of its own row: [T, 1, hidden]
        if self.pooled:
            return self.model.classifier(self.base.pooler(tokens))[:, 0].float()
        return self.model.classifier(tokens)[:, 0].float()


# --- the scorer -------------------------------------------------------------------------------------------------


class PackedScorer:
    """`scorer(batch) -> float32 logits [batch]` on packed streams of at most `budget` tokens through `module`
    (or `run_stream(tensors) -> logits [T]`, a runner over it); multi-item groups when rows carry `prefix_length`
    and `multi_item`. `streams_run` keeps the streams of the last batch (for benchmarks and tests)."""

    def __init__(
        self,
        module: PackedModule,
        budget: int,
        device: str = "cpu",
        multi_item: bool = False,
        min_prefix: int = 1,
        run_stream: Callable[[dict[str, torch.Tensor]], torch.Tensor] | None = None,
    ):
        self.module, self.budget, self.device = module, budget, device
        self.multi_item, self.min_prefix = multi_item and module.causal, min_prefix
        self.run_stream = run_stream or (lambda tensors: module(**tensors))
        self.streams_run: list[Stream] = []

    @property
    def last_streams(self) -> list[int]:
        """The lengths of the last batch's streams."""
        return [len(stream) for stream in self.streams_run]

    def streams(self, batch: Batch) -> list[Stream]:
        if self.multi_item and PREFIX_LENGTH in batch:
            return pack_multi_item(batch, self.budget, self.min_prefix)
        return pack(batch, self.budget, self.module.position_offset, self.module.read_last)

    def __call__(self, batch: Batch) -> np.ndarray:
        out = np.empty(len(batch["input_ids"]), dtype=np.float32)
        streams = self.streams_run = self.streams(batch)
        with torch.inference_mode():
            for stream in streams:
                logits = self.run_stream(stream.tensors(self.device))
                out[stream.rows] = logits[torch.from_numpy(stream.reads).to(logits.device)].float().cpu().numpy()
        return out
