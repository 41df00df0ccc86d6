"""Exact prefix reuse for the prompt-based decoder rerankers: the shared prompt runs once, the documents after it.

Every pair of a request starts with the same prompt (system line, instruction, query, up to the document). In a
causal decoder the keys and values of those tokens do not depend on what follows, so they are computed once and
each document continues from them. Nothing is approximated: the split only moves work between two graphs.

Where a pair splits. The encoder marks each pair with `prefix_length` (a per-pair feature, [batch] after
collate): its tokens before the first token that touches the document text, at most all but its last token. It is
a property of the pair alone (never of the other documents), so the pairs of one request, of all its encoding
slices, and of other requests with the same prompt and query share it exactly; truncation is already applied,
so a pair whose query was cut simply has another prefix. Rows are grouped by their prefix token ids, not by the
request they came from: the scheduler may batch rows of several requests.

Two graphs beside the plain scorer (one graph with optional past inputs would need zero-length tensors, which not
every runtime takes):

- `prefix`: `input_ids` [1, past] -> `past_keys`, `past_values` [layers, 1, kv_heads, past, head_dim], keys
  already rotated (rotary embedding is applied before caching, at positions 0..past-1).
- `continuation`: `input_ids` [batch, sequence] (each row's tokens after its prefix, left-padded),
  `attention_mask` [batch, sequence], `position_ids` [batch, sequence] (prefix length + 0, 1, ...),
  `past_mask` [batch, past] and `past_keys`, `past_values` [layers, batch, kv_heads, past, head_dim] (each
  row's prefix, left-padded to the longest in the batch) -> `logits` [batch]: the trimmed yes - no head on the
  last position, which is every row's last real token.

A query sees every real past key and the real suffix keys up to itself; padded keys get the dtype's most negative
value (finite, so padded rows stay finite). `PrefixReuse` plans a batch: rows whose prefix is shorter than
`MIN_PREFIX_TOKENS`, or that are alone with their prefix in the batch and not cached, run through the plain
scorer graph; the others run the prefix graph once per distinct prefix (kept in a small LRU cache, so the
batches a request is split into, and the next request with the same prompt, compute it once) and the
continuation graph once for all of them. The torch scorer runs the same modules the graphs are exported from.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from rerankrt.families.base import SCORER, Batch, Features, GraphRunner, TorchGraph

PREFIX, CONTINUATION = "prefix", "continuation"
ROLES = (PREFIX, CONTINUATION)
PREFIX_LENGTH = "prefix_length"
PREFIX_OUTPUTS = ("past_keys", "past_values")
CONTINUATION_INPUTS = ("input_ids", "attention_mask", "position_ids", "past_mask", "past_keys", "past_values")
MIN_PREFIX_TOKENS = 16  # shorter shared prefixes are not worth a second graph call (bench: prefix_reuse)
CACHE_BYTES = 256 * 1024 * 1024  # prefix keys/values kept across batches, at most


# --- encoder side ---------------------------------------------------------------------------------


def mark_prefix(pair: Features, offsets: Sequence[tuple[int, int]], document_start: int | None) -> Features:
    """`pair` with its `prefix_length`: the tokens that end before character `document_start` of the prompt
    (`offsets`: each token's character span), at most all but the last token; 0 without a document span."""
    length = len(pair["input_ids"])
    before = 0 if document_start is None else sum(1 for _, end in offsets if end <= document_start)
    pair[PREFIX_LENGTH] = np.asarray([min(before, length - 1)], dtype=np.int64)
    return pair


def collate_prefix_lengths(batch: Batch, pairs: Sequence[Features]) -> Batch:
    """Add the pairs' `prefix_length` ([batch]) to a collated batch when every pair carries one."""
    if pairs and all(PREFIX_LENGTH in pair for pair in pairs):
        batch[PREFIX_LENGTH] = np.concatenate([pair[PREFIX_LENGTH] for pair in pairs])
    return batch


# --- the modules the two graphs are exported from --------------------------------------------------


class _Past:
    """What the decoder layers call `update` on: the given past keys/values prepended, the new ones recorded."""

    def __init__(self, keys: torch.Tensor | None = None, values: torch.Tensor | None = None):
        self.keys, self.values = keys, values
        self.present: list[tuple[torch.Tensor, torch.Tensor]] = []

    def update(self, keys, values, layer_idx, cache_kwargs=None):
        if self.keys is not None:
            keys = torch.cat([self.keys[layer_idx].to(keys.dtype), keys], dim=2)
            values = torch.cat([self.values[layer_idx].to(values.dtype), values], dim=2)
        self.present.append((keys, values))
        return keys, values


def attention_bias(key_mask: torch.Tensor, queries: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive [batch, 1, queries, keys] mask: the last `queries` keys are the queries themselves (causal), the
    keys before them are all visible; keys where `key_mask` is 0 are hidden (finite, so padded rows stay finite)."""
    keys = key_mask.shape[1]
    key_positions = torch.arange(keys, device=key_mask.device)
    query_positions = torch.arange(queries, device=key_mask.device) + (keys - queries)
    allowed = (key_positions[None, :] <= query_positions[:, None])[None] & key_mask.bool()[:, None, :]
    zero = torch.zeros((), dtype=dtype, device=key_mask.device)
    blocked = torch.full((), torch.finfo(dtype).min, dtype=dtype, device=key_mask.device)
    return torch.where(allowed, zero, blocked).unsqueeze(1)


def _body(classifier: torch.nn.Module) -> torch.nn.Module:
    return getattr(classifier, classifier.base_model_prefix)


class PrefixModule(torch.nn.Module):
    """input_ids [1, past] -> (past_keys, past_values) [layers, 1, kv_heads, past, head_dim] of a folded classifier's
    decoder body (its own embedding, rotary and layers)."""

    def __init__(self, classifier: torch.nn.Module):
        super().__init__()
        self.body = _body(classifier)

    def forward(self, input_ids):
        length = input_ids.shape[1]
        positions = torch.arange(length, device=input_ids.device)[None]
        dtype = self.body.embed_tokens.weight.dtype
        past = _Past()
        self.body(
            input_ids=input_ids, attention_mask=attention_bias(torch.ones_like(input_ids), length, dtype),
            position_ids=positions, cache_position=positions[0], past_key_values=past, use_cache=False,
        )  # fmt: skip
        return torch.stack([k for k, _ in past.present]), torch.stack([v for _, v in past.present])


class ContinuationModule(torch.nn.Module):
    """Each row's tokens after its prefix, given its prefix's keys/values -> the folded head's logit, float32."""

    def __init__(self, classifier: torch.nn.Module):
        super().__init__()
        self.body = _body(classifier)
        self.score = classifier.score

    def forward(self, input_ids, attention_mask, position_ids, past_mask, past_keys, past_values):
        dtype = self.body.embed_tokens.weight.dtype
        key_mask = torch.cat([past_mask, attention_mask], dim=1)
        hidden = self.body(
            input_ids=input_ids, attention_mask=attention_bias(key_mask, input_ids.shape[1], dtype),
            position_ids=position_ids, cache_position=position_ids[0], past_key_values=_Past(past_keys, past_values),
            use_cache=False,
        ).last_hidden_state  # fmt: skip
        return self.score(hidden[:, -1]).float()[:, 0]


def graph_specs(classifier: torch.nn.Module) -> list[TorchGraph]:
    """prefix.onnx and continuation.onnx from the folded classifier (weights shared with its scorer graph)."""
    config = classifier.config
    layers, heads = config.num_hidden_layers, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    batch, sequence, past = ("batch", 1), ("sequence", 1), ("past", 1)
    prefix = TorchGraph(
        role=PREFIX,
        file="prefix.onnx",
        module=PrefixModule(classifier).eval(),
        args=(torch.full((1, 7), 3, dtype=torch.long),),
        input_names=("input_ids",),
        output_names=PREFIX_OUTPUTS,
        dynamic_axes=({1: past},),
    )
    mask = torch.ones(2, 5, dtype=torch.long)
    mask[1, :2] = 0
    past_mask = torch.ones(2, 7, dtype=torch.long)
    past_mask[0, :3] = 0
    continuation = TorchGraph(
        role=CONTINUATION,
        file="continuation.onnx",
        module=ContinuationModule(classifier).eval(),
        args=(
            torch.full((2, 5), 3, dtype=torch.long),
            mask,
            torch.arange(7, 12).repeat(2, 1),
            past_mask,
            torch.randn(layers, 2, heads, 7, head_dim),
            torch.randn(layers, 2, heads, 7, head_dim),
        ),
        input_names=CONTINUATION_INPUTS,
        output_names=("logits",),
        dynamic_axes=(
            {0: batch, 1: sequence},
            {0: batch, 1: sequence},
            {0: batch, 1: sequence},
            {0: batch, 1: past},
            {1: batch, 3: past},
            {1: batch, 3: past},
        ),
    )
    return [prefix, continuation]


# --- serving: one batch, rows grouped by prefix ---------------------------------------------------


@dataclass
class _Plan:
    plain: np.ndarray  # rows run whole
    reuse: np.ndarray  # rows run after their prefix
    prefixes: list[np.ndarray]  # distinct prefix ids, in first-seen order
    prefix_of: np.ndarray  # for each reuse row, its index in `prefixes`
    suffixes: list[np.ndarray]  # for each reuse row, its tokens after the prefix


class PrefixReuse:
    """`run(batch) -> logits` over three runners (numpy or torch arrays alike), with a cache of prefixes.

    `plain(batch)` scores rows whole; `prefix(ids [1, p]) -> (keys, values)`; `continuation(feeds, keys, values)`
    scores the continuation feeds (numpy) with the assembled past. One instance serves one inference thread.
    """

    def __init__(
        self,
        plain: Callable[[Batch], np.ndarray],
        prefix: Callable[[np.ndarray], tuple],
        continuation: Callable[[Batch, object, object], np.ndarray],
        min_prefix: int = MIN_PREFIX_TOKENS,
        cache_bytes: int = CACHE_BYTES,
    ):
        self.plain, self.prefix, self.continuation = plain, prefix, continuation
        self.min_prefix, self.cache_bytes = min_prefix, cache_bytes
        self.cache: OrderedDict[bytes, tuple] = OrderedDict()

    def __call__(self, batch: Batch) -> np.ndarray:
        if PREFIX_LENGTH not in batch:
            return self.plain(batch)
        plan = self._plan(batch)
        logits = np.empty(len(batch["input_ids"]), dtype=np.float32)
        if len(plan.plain):
            logits[plan.plain] = self.plain(_rows(batch, plan.plain))
        if len(plan.reuse):
            pasts = [self._past(ids) for ids in plan.prefixes]
            feeds, keys, values = _continuation_inputs(plan, pasts)
            logits[plan.reuse] = self.continuation(feeds, keys, values)
        return logits

    def _plan(self, batch: Batch) -> _Plan:
        ids, mask, lengths = batch["input_ids"], batch["attention_mask"], batch[PREFIX_LENGTH]
        rows = [ids[r][mask[r].astype(bool)] for r in range(len(ids))]
        keys = [row[:p].tobytes() if p >= self.min_prefix else None for row, p in zip(rows, lengths, strict=True)]
        counts: dict[bytes, int] = {}
        for key in keys:
            if key is not None:
                counts[key] = counts.get(key, 0) + 1
        order: dict[bytes, int] = {}
        plain, reuse, prefix_of, suffixes, prefixes = [], [], [], [], []
        for r, key in enumerate(keys):
            if key is None or (counts[key] < 2 and key not in self.cache):
                plain.append(r)
                continue
            if key not in order:
                order[key] = len(prefixes)
                prefixes.append(rows[r][: lengths[r]])
            reuse.append(r)
            prefix_of.append(order[key])
            suffixes.append(rows[r][lengths[r] :])
        return _Plan(np.asarray(plain, dtype=np.int64), np.asarray(reuse, dtype=np.int64), prefixes,
                     np.asarray(prefix_of, dtype=np.int64), suffixes)  # fmt: skip

    def _past(self, ids: np.ndarray) -> tuple:
        key = ids.tobytes()
        if key in self.cache:
            self.cache.move_to_end(key)
            return self.cache[key]
        past = self.prefix(ids[None])
        self.cache[key] = past
        while len(self.cache) > 1 and sum(k.nbytes + v.nbytes for k, v in self.cache.values()) > self.cache_bytes:
            self.cache.popitem(last=False)
        return past


def _rows(batch: Batch, rows: np.ndarray) -> Batch:
    """The rows' inputs, columns that are padding in every one of them dropped."""
    mask = batch["attention_mask"][rows]
    used = np.flatnonzero(mask.any(axis=0))
    columns = slice(used[0], used[-1] + 1) if len(used) else slice(0, 1)
    return {name: values[rows][:, columns] for name, values in batch.items() if name != PREFIX_LENGTH}


def _continuation_inputs(plan: _Plan, pasts: list[tuple]) -> tuple[Batch, object, object]:
    """Continuation feeds for the reuse rows: suffixes left-padded, prefixes' keys/values left-padded to the longest."""
    n = len(plan.reuse)
    prefix_lengths = np.asarray([len(plan.prefixes[i]) for i in plan.prefix_of], dtype=np.int64)
    longest_past = int(prefix_lengths.max())
    longest = max(len(s) for s in plan.suffixes)
    input_ids = np.zeros((n, longest), dtype=np.int64)
    attention_mask = np.zeros((n, longest), dtype=np.int64)
    position_ids = np.zeros((n, longest), dtype=np.int64)
    past_mask = np.zeros((n, longest_past), dtype=np.int64)
    first_keys = pasts[0][0]
    shape = (first_keys.shape[0], n, first_keys.shape[2], longest_past, first_keys.shape[4])
    keys, values = _zeros(shape, first_keys), _zeros(shape, first_keys)
    for row, (suffix, p, which) in enumerate(zip(plan.suffixes, prefix_lengths, plan.prefix_of, strict=True)):
        s = len(suffix)
        input_ids[row, longest - s :] = suffix
        attention_mask[row, longest - s :] = 1
        position_ids[row, longest - s :] = np.arange(p, p + s)
        past_mask[row, longest_past - p :] = 1
        keys[:, row, :, longest_past - p :] = pasts[which][0][:, 0]
        values[:, row, :, longest_past - p :] = pasts[which][1][:, 0]
    feeds = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids,
             "past_mask": past_mask}  # fmt: skip
    return feeds, keys, values


def _zeros(shape: tuple, like):
    if isinstance(like, np.ndarray):
        return np.zeros(shape, dtype=like.dtype)
    return like.new_zeros(shape)


def graph_pipeline(graphs: Mapping[str, GraphRunner]) -> Callable[[Batch], np.ndarray]:
    """run(batch) -> logits over the loaded graphs: with prefix reuse when the prefix and continuation graphs are
    there (an artifact without them, or a plan that left them out, runs the scorer graph alone)."""
    scorer = graphs[SCORER]

    def plain(batch: Batch) -> np.ndarray:
        logits = scorer.run({name: batch[name] for name in scorer.input_names})[0]
        return logits.reshape(-1).astype(np.float32, copy=False)

    if not all(role in graphs for role in ROLES):
        return plain
    prefix, continuation = graphs[PREFIX], graphs[CONTINUATION]

    def run_prefix(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        keys, values = prefix.run({"input_ids": ids}, PREFIX_OUTPUTS)
        return keys, values

    def run_continuation(feeds: Batch, keys: np.ndarray, values: np.ndarray) -> np.ndarray:
        (logits,) = continuation.run({**feeds, "past_keys": keys, "past_values": values}, ("logits",))
        return logits.reshape(-1).astype(np.float32, copy=False)

    return PrefixReuse(plain, run_prefix, run_continuation)


class PrefixReuseScorer(torch.nn.Module):
    """The torch scorer: the folded classifier on whole rows, the prefix and continuation modules on the rest
    (`forward(input_ids, attention_mask, prefix_length=None) -> float32 logits [batch]`)."""

    def __init__(self, classifier: torch.nn.Module):
        super().__init__()
        self.classifier = classifier
        self.prefix = PrefixModule(classifier)
        self.continuation = ContinuationModule(classifier)
        self.reuse = PrefixReuse(self._plain, self._prefix, self._continuation)

    def _apply(self, fn, *args, **kwargs):  # .to(dtype / device): cached keys/values are stale
        self.reuse.cache.clear()
        return super()._apply(fn, *args, **kwargs)

    @property
    def _device(self) -> torch.device:
        return self.classifier.score.weight.device

    def forward(self, input_ids, attention_mask, prefix_length=None):
        if prefix_length is None:
            return self._whole(input_ids, attention_mask)
        batch = {"input_ids": input_ids.cpu().numpy(), "attention_mask": attention_mask.cpu().numpy(),
                 PREFIX_LENGTH: prefix_length.cpu().numpy()}  # fmt: skip
        return torch.from_numpy(self.reuse(batch)).to(input_ids.device)

    def _whole(self, input_ids, attention_mask):
        return self.classifier(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0].float()

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array).to(self._device)

    def _plain(self, batch: Batch) -> np.ndarray:
        return self._whole(self._tensor(batch["input_ids"]), self._tensor(batch["attention_mask"])).cpu().numpy()

    def _prefix(self, ids: np.ndarray):
        return self.prefix(self._tensor(ids))

    def _continuation(self, feeds: Batch, keys, values) -> np.ndarray:
        inputs = {name: self._tensor(array) for name, array in feeds.items()}
        return self.continuation(**inputs, past_keys=keys, past_values=values).cpu().numpy()
