"""Exact prefix reuse for the prompt-based decoder rerankers: the shared prompt runs once, the documents after it.

Every pair of a request starts with the same prompt (system line, instruction, query, up to the document). In a
causal decoder the keys and values of those tokens do not depend on what follows, so they are computed once and
each document continues from them. Nothing is approximated: the split only moves work between calls.

Where a pair splits. The encoder marks each pair with `prefix_length` (a per-pair feature, [batch] after
collate): its tokens before the first token that touches the document text, at most all but its last token. It is
a property of the pair alone (never of the other documents), so the pairs of one request, of all its encoding
slices, and of other requests with the same prompt and query share it exactly; truncation is already applied,
so a pair whose query was cut simply has another prefix. Rows are grouped by their prefix token ids, not by the
request they came from: the scheduler may batch rows of several requests.

One graph, `decoder` (decoder.onnx), does every call, so with prefix reuse on a backend holds the weights once:

    input_ids, attention_mask, position_ids [batch, sequence]   the new tokens, left-padded, explicit positions
    past_mask [batch, past]                                      which past positions are real
    past_keys, past_values [layers, batch, kv_heads, past, head_dim]
    -> logits [batch]                    the folded yes - no head at the last position (every row's last token)
       present_keys, present_values      [layers, batch, kv_heads, sequence, head_dim]: the new tokens' own
                                         keys/values, rotary already applied (positions as given)

A query sees every real past key and the real new keys up to itself; padded keys get the dtype's most negative
value (finite, so padded rows stay finite). A call without a past (a prefix, or a row run whole) feeds a
one-position dummy past that is masked out: every real query also sees its own key, so the dummy's attention
weight is exactly zero, and no zero-length tensor is ever needed (not every runtime takes them).

`PrefixReuse` plans a batch: rows whose prefix is shorter than `MIN_PREFIX_TOKENS`, or that are alone with their
prefix in the batch and not cached, run whole (dummy past); the distinct prefixes not in the small LRU cache run
in one call (left-padded, their present keys/values cached, so the batches a request is split into, and the next
request with the same prompt, compute a prefix once); the other rows then continue from their prefixes in one
call, whose present outputs are not used. The torch scorer runs the module the graph is exported from.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from rerankrt.families import packed
from rerankrt.families.base import (
    SCORER,
    Batch,
    ClassifierLogitScorer,
    Family,
    Features,
    GraphRunner,
    GraphSpec,
    OptimumGraph,
    PairEncoder,
    ParityCheck,
    ServingGraphs,
    TorchGraph,
    graphs_in,
    run_torch,
)
from rerankrt.precision import Precision

DECODER = "decoder"
ROLES = (DECODER,)
PREFIX_LENGTH = packed.PREFIX_LENGTH
DECODER_INPUTS = ("input_ids", "attention_mask", "position_ids", "past_mask", "past_keys", "past_values")
DECODER_OUTPUTS = ("logits", "present_keys", "present_values")
MIN_PREFIX_TOKENS = 16  # shorter shared prefixes are not worth a second call (bench: prefix_reuse)
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


# --- the module the decoder graph is exported from ---------------------------------------------------


class _Past:
    """What the decoder layers call `update` on: the given past keys/values prepended, the new ones recorded."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        self.keys, self.values = keys, values
        self.present: list[tuple[torch.Tensor, torch.Tensor]] = []

    def update(self, keys, values, layer_idx, cache_kwargs=None):
        self.present.append((keys, values))
        keys = torch.cat([self.keys[layer_idx].to(keys.dtype), keys], dim=2)
        values = torch.cat([self.values[layer_idx].to(values.dtype), values], dim=2)
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


def past_geometry(config) -> tuple[int, int, int]:
    """(layers, kv_heads, head_dim) of a decoder config (a transformers config or config.json's dict)."""
    get = config.get if isinstance(config, dict) else lambda name, default=None: getattr(config, name, default)
    heads = get("num_attention_heads")
    return (
        int(get("num_hidden_layers")),
        int(get("num_key_value_heads", heads)),
        int(get("head_dim") or get("hidden_size") // heads),
    )


class DecoderModule(torch.nn.Module):
    """A folded classifier's decoder body and head on new tokens after given past keys/values (see the module
    docstring): -> (logits float32 [batch], present_keys, present_values)."""

    def __init__(self, classifier: torch.nn.Module):
        super().__init__()
        self.body = _body(classifier)
        self.score = classifier.score

    def forward(self, input_ids, attention_mask, position_ids, past_mask, past_keys, past_values):
        dtype = self.body.embed_tokens.weight.dtype
        key_mask = torch.cat([past_mask, attention_mask], dim=1)
        past = _Past(past_keys, past_values)
        hidden = self.body(
            input_ids=input_ids, attention_mask=attention_bias(key_mask, input_ids.shape[1], dtype),
            position_ids=position_ids, cache_position=position_ids[0], past_key_values=past, use_cache=False,
        ).last_hidden_state  # fmt: skip
        logits = self.score(hidden[:, -1]).float()[:, 0]
        return logits, torch.stack([k for k, _ in past.present]), torch.stack([v for _, v in past.present])


def graph_specs(classifier: torch.nn.Module) -> list[TorchGraph]:
    """decoder.onnx from the folded classifier (the same weights as its scorer graph, model.onnx)."""
    layers, heads, head_dim = past_geometry(classifier.config)
    batch, sequence, past = ("batch", 1), ("sequence", 1), ("past", 1)
    mask = torch.ones(2, 5, dtype=torch.long)
    mask[1, :2] = 0
    past_mask = torch.ones(2, 7, dtype=torch.long)
    past_mask[0, :3] = 0
    decoder = TorchGraph(
        role=DECODER,
        file="decoder.onnx",
        module=DecoderModule(classifier).eval(),
        args=(
            torch.full((2, 5), 3, dtype=torch.long),
            mask,
            torch.arange(7, 12).repeat(2, 1),
            past_mask,
            torch.randn(layers, 2, heads, 7, head_dim),
            torch.randn(layers, 2, heads, 7, head_dim),
        ),
        input_names=DECODER_INPUTS,
        output_names=DECODER_OUTPUTS,
        dynamic_axes=(
            {0: batch, 1: sequence},
            {0: batch, 1: sequence},
            {0: batch, 1: sequence},
            {0: batch, 1: past},
            {1: batch, 3: past},
            {1: batch, 3: past},
        ),
    )
    return [decoder]


# --- serving: one batch, rows grouped by prefix ---------------------------------------------------

Decoder = Callable[[Batch, object, object, bool], tuple]
"""`decoder(feeds, past_keys, past_values, present) -> (logits float32 [batch], present_keys, present_values)`:
`feeds` are the numpy input_ids, attention_mask, position_ids and past_mask; the present keys/values are None
unless `present`."""


@dataclass
class _Plan:
    rows: list[np.ndarray]  # each row's tokens, padding dropped
    plain: np.ndarray  # rows run whole
    reuse: np.ndarray  # rows run after their prefix
    prefixes: list[np.ndarray]  # distinct prefix ids, in first-seen order
    prefix_of: np.ndarray  # for each reuse row, its index in `prefixes`
    suffixes: list[np.ndarray]  # for each reuse row, its tokens after the prefix


class PrefixReuse:
    """`run(batch) -> logits` over one decoder (graph or module, numpy or torch past alike), with a prefix cache.

    `dummy_past(rows) -> (keys, values)`: one position per row, masked out. One instance serves one inference
    thread.
    """

    def __init__(
        self,
        decoder: Decoder,
        dummy_past: Callable[[int], tuple],
        min_prefix: int = MIN_PREFIX_TOKENS,
        cache_bytes: int = CACHE_BYTES,
    ):
        self.decoder, self.dummy_past = decoder, dummy_past
        self.min_prefix, self.cache_bytes = min_prefix, cache_bytes
        self.cache: OrderedDict[bytes, tuple] = OrderedDict()

    def __call__(self, batch: Batch) -> np.ndarray:
        plan = self._plan(batch)
        logits = np.empty(len(batch["input_ids"]), dtype=np.float32)
        if len(plan.plain):  # left-padded again: the decoder reads the last position (batches may pad right)
            input_ids, mask = _left_pad([plan.rows[r] for r in plan.plain])
            logits[plan.plain] = self._fresh(input_ids, mask, present=False)[0]
        if len(plan.reuse):
            pasts = self._pasts(plan.prefixes)
            feeds, keys, values = _continuation_inputs(plan, pasts)
            logits[plan.reuse] = self.decoder(feeds, keys, values, False)[0]
        return logits

    def _fresh(self, input_ids: np.ndarray, attention_mask: np.ndarray, present: bool) -> tuple:
        """Rows without a past (left-padded): the decoder after the masked dummy past."""
        positions = np.maximum(attention_mask.cumsum(axis=1) - 1, 0)
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": positions,
                 "past_mask": np.zeros((len(input_ids), 1), dtype=np.int64)}  # fmt: skip
        return self.decoder(feeds, *self.dummy_past(len(input_ids)), present)

    def _plan(self, batch: Batch) -> _Plan:
        ids, mask = batch["input_ids"], batch["attention_mask"]
        lengths = batch.get(PREFIX_LENGTH, np.zeros(len(ids), dtype=np.int64))
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
        return _Plan(rows, np.asarray(plain, dtype=np.int64), np.asarray(reuse, dtype=np.int64), prefixes,
                     np.asarray(prefix_of, dtype=np.int64), suffixes)  # fmt: skip

    def _pasts(self, prefixes: list[np.ndarray]) -> list[tuple]:
        """Each prefix's (keys, values) [layers, 1, kv_heads, length, head_dim]: from the cache, the missing ones
        computed in one call (left-padded) and cached."""
        pasts: list[tuple | None] = []
        for ids in prefixes:
            key = ids.tobytes()
            if key in self.cache:
                self.cache.move_to_end(key)
            pasts.append(self.cache.get(key))
        missing = [i for i, past in enumerate(pasts) if past is None]
        if missing:
            input_ids, mask = _left_pad([prefixes[i] for i in missing])
            _, keys, values = self._fresh(input_ids, mask, present=True)
            width = input_ids.shape[1]
            for row, i in enumerate(missing):
                start = width - len(prefixes[i])
                pasts[i] = (_copy(keys[:, row : row + 1, :, start:]), _copy(values[:, row : row + 1, :, start:]))
                self.cache[prefixes[i].tobytes()] = pasts[i]
            while len(self.cache) > 1 and sum(k.nbytes + v.nbytes for k, v in self.cache.values()) > self.cache_bytes:
                self.cache.popitem(last=False)
        return pasts


def _copy(array):
    """A compact copy of a slice (a cached prefix must not keep its whole batch's keys alive)."""
    return array.copy() if isinstance(array, np.ndarray) else array.contiguous().clone()


def _left_pad(sequences: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(s) for s in sequences)
    input_ids = np.zeros((len(sequences), width), dtype=np.int64)
    mask = np.zeros((len(sequences), width), dtype=np.int64)
    for row, s in enumerate(sequences):
        input_ids[row, width - len(s) :] = s
        mask[row, width - len(s) :] = 1
    return input_ids, mask


def _continuation_inputs(plan: _Plan, pasts: list[tuple]) -> tuple[Batch, object, object]:
    """Decoder feeds for the reuse rows: suffixes left-padded, prefixes' keys/values left-padded to the longest."""
    n = len(plan.reuse)
    prefix_lengths = np.asarray([len(plan.prefixes[i]) for i in plan.prefix_of], dtype=np.int64)
    longest_past = int(prefix_lengths.max())
    input_ids, attention_mask = _left_pad(plan.suffixes)
    longest = input_ids.shape[1]
    position_ids = np.zeros((n, longest), dtype=np.int64)
    past_mask = np.zeros((n, longest_past), dtype=np.int64)
    first_keys = pasts[0][0]
    shape = (first_keys.shape[0], n, first_keys.shape[2], longest_past, first_keys.shape[4])
    keys, values = _zeros(shape, first_keys), _zeros(shape, first_keys)
    for row, (suffix, p, which) in enumerate(zip(plan.suffixes, prefix_lengths, plan.prefix_of, strict=True)):
        s = len(suffix)
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


def graph_pipeline(
    folder: Path, graphs: Mapping[str, GraphRunner], geometry: tuple[int, int, int] | None = None
) -> Callable[[Batch], np.ndarray]:
    """run(batch) -> logits over the loaded graphs: the decoder graph alone when it is there (prefix reuse), else
    the scorer graph alone (prefix reuse off, a reduced-precision scorer, or an artifact without the decoder).
    `geometry`: the decoder graph's (layers, kv_heads, head_dim) when config.json's are not its (a cut-off)."""
    if DECODER not in graphs:
        scorer = graphs[SCORER]

        def plain(batch: Batch) -> np.ndarray:
            logits = scorer.run({name: batch[name] for name in scorer.input_names})[0]
            return logits.reshape(-1).astype(np.float32, copy=False)

        return plain
    decoder = graphs[DECODER]
    layers, heads, head_dim = geometry or past_geometry(json.loads((Path(folder) / "config.json").read_text()))

    def run(feeds: Batch, keys: np.ndarray, values: np.ndarray, present: bool) -> tuple:
        outputs = decoder.run({**feeds, "past_keys": keys, "past_values": values},
                              DECODER_OUTPUTS if present else DECODER_OUTPUTS[:1])  # fmt: skip
        logits = outputs[0].reshape(-1).astype(np.float32, copy=False)
        return (logits, *outputs[1:]) if present else (logits, None, None)

    def dummy_past(rows: int) -> tuple[np.ndarray, np.ndarray]:
        zeros = np.zeros((layers, rows, heads, 1, head_dim), dtype=np.float32)
        return zeros, zeros

    return PrefixReuse(run, dummy_past)


class PrefixReuseScorer(torch.nn.Module):
    """The torch scorer: with `prefix_length` (prefix reuse on), the decoder module the graph is exported from on
    every row, as `PrefixReuse` plans; without it, the folded classifier on whole rows (the same weights).
    `forward(input_ids, attention_mask, prefix_length=None) -> float32 logits [batch]`."""

    def __init__(self, classifier: torch.nn.Module):
        super().__init__()
        self.classifier = classifier
        self.decoder = DecoderModule(classifier)
        self.geometry = past_geometry(classifier.config)
        self.reuse = PrefixReuse(self._decode, self._dummy_past)

    def _apply(self, fn, *args, **kwargs):  # .to(dtype / device): cached keys/values are stale
        self.reuse.cache.clear()
        return super()._apply(fn, *args, **kwargs)

    def forward(self, input_ids, attention_mask, prefix_length=None):
        if prefix_length is None:
            return self.classifier(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0].float()
        batch = {"input_ids": input_ids.cpu().numpy(), "attention_mask": attention_mask.cpu().numpy(),
                 PREFIX_LENGTH: prefix_length.cpu().numpy()}  # fmt: skip
        return torch.from_numpy(self.reuse(batch)).to(input_ids.device)

    def _dummy_past(self, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        weight = self.classifier.score.weight
        layers, heads, head_dim = self.geometry
        zeros = weight.new_zeros((layers, rows, heads, 1, head_dim))
        return zeros, zeros

    def _decode(self, feeds: Batch, keys, values, present: bool) -> tuple:
        device = self.classifier.score.weight.device
        inputs = {name: torch.from_numpy(array).to(device) for name, array in feeds.items()}
        logits, present_keys, present_values = self.decoder(**inputs, past_keys=keys, past_values=values)
        logits = logits.cpu().numpy()
        return (logits, present_keys, present_values) if present else (logits, None, None)


class PrefixReuseFamily(Family):
    """What the decoder families with prefix reuse share: the plain scorer graph plus the decoder graph, the torch
    scorer that reuses prefixes, and the parity check of both against the folded classifier on whole rows."""

    whole_reference: str  # how the parity reference is described: the folded classifier, whole pairs
    packed_batches: ClassVar[bool] = False  # the torch backend packs its batches (proven exact: tests/test_packed.py)

    def graphs(self, export_model: torch.nn.Module, encoder: PairEncoder) -> list[GraphSpec]:
        """The plain scorer (optimum's export of the folded classifier), then the prefix-reuse decoder graph."""
        return [OptimumGraph(SCORER, export_model), *graph_specs(export_model)]

    def wrap_scorer(self, export_model: torch.nn.Module) -> torch.nn.Module:
        return PrefixReuseScorer(export_model)

    def serving_graphs(self, roles: Sequence[str], precision: Precision | str, prefix_reuse: bool):
        """With `prefix_reuse` and the decoder graph among `roles` in `precision` (the export makes it in fp32): it
        alone, for every row (one copy of the weights); otherwise the scorer graph alone (`graph_pipeline`)."""
        if prefix_reuse and not isinstance(reuse := graphs_in(ROLES, roles, precision), str):
            return ServingGraphs(reuse, prefix_reuse=True)
        scorer = graphs_in((SCORER,), roles, precision)
        return scorer if isinstance(scorer, str) else ServingGraphs(scorer)

    def packed_module(self, scorer: torch.nn.Module) -> torch.nn.Module | str:
        """The folded classifier on packed streams: pairs back to back, or (rows carrying `prefix_length`) the
        shared prefix once and each document after it in the same sequence (multi-item, `families.packed`); for
        the families that declare `packed_batches` (proven exact for them), else their batches stay padded."""
        if not self.packed_batches:
            return super().packed_module(scorer)
        return packed.DecoderPacked(scorer.classifier)

    def parity_samples(self, encoder: PairEncoder) -> list | None:
        """The parity check's samples (None: the exporter's generated text)."""
        return None

    def parity_check(self, export_model: torch.nn.Module, model_dir: Path, encoder: PairEncoder) -> ParityCheck:
        """The graphs, with prefix reuse as served, against the folded classifier on whole rows."""
        whole = ClassifierLogitScorer(export_model).eval()
        return ParityCheck(
            lambda batch: run_torch(whole, {k: v for k, v in batch.items() if k != PREFIX_LENGTH}),
            self.whole_reference,
            samples=self.parity_samples(encoder),
        )

    def serving_pipeline(self, folder: Path, graphs: Mapping[str, GraphRunner]) -> Callable[[Batch], np.ndarray]:
        return graph_pipeline(folder, graphs)
