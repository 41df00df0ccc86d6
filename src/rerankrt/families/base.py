"""The contract every reranker family fulfils: the one place that knows a kind of model.

A family declares how to recognise a checkpoint (`recognise`), how to turn a
query and documents into model inputs (`load_encoder`), the torch module that
maps a batch of those inputs to one relevance logit per pair (`load_scorer`),
the ONNX graphs that compute the same function (`graphs`), how the export check
proves them (`parity_check`), which of an artifact's graphs a serving runs
(`serving_graphs`) and how they run in sequence (`serving_pipeline`), which
precisions and backends it supports, and what the exporter needs to know beyond
the graphs (`export_hints`). The exporter and the runtime are generic over these
declarations.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

import numpy as np
import torch

from rerankrt.errors import InputError, UnsupportedModelError
from rerankrt.model_source import read_config
from rerankrt.precision import Precision

Features = dict[str, np.ndarray]
"""One encoded pair: input name -> 1-D int64 array (unpadded); `input_ids` is always there.

Multimodal encoders add other arrays (3-D positions, image patches and grids); their `collate` knows them."""

Batch = dict[str, np.ndarray]
"""Collated pairs: input name -> [batch, seq] int64 array, padded (plus any multimodal arrays, per family)."""

Content = str | Sequence[Mapping[str, Any]]
"""A query or document: text, or (multimodal families) content parts with decoded media."""

SCORER = "scorer"
"""The graph role whose output is the logit (the one graph of most families)."""


def variant_role(role: str, precision: Precision | str) -> str:
    """The manifest role of `role`'s graph in `precision`: `role` for fp32, `role.<precision>` for a variant."""
    precision = Precision(precision)
    return role if precision == Precision.FP32 else f"{role}.{precision.value}"


def base_role(role: str) -> str:
    """The role a variant stands in for: `scorer.int8` -> `scorer`."""
    return role.split(".", 1)[0]


# --- what the exporter and the runtime are given ----------------------------------------------------


@dataclass(frozen=True)
class OptimumGraph:
    """A graph optimum exports: `model` for `task`, written as model.onnx; its one output is the logit."""

    role: str
    model: torch.nn.Module
    task: str = "text-classification"


@dataclass(frozen=True)
class TorchGraph:
    """A graph torch.onnx's dynamo exporter writes from `module(*args)`.

    `dynamic_axes[i]` names the axes of input i that vary, `{axis: (name, minimum)}`; the names are kept in the
    ONNX file (TensorRT profiles and readers rely on them).
    """

    role: str
    file: str
    module: torch.nn.Module
    args: tuple
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    dynamic_axes: tuple[Mapping[int, tuple[str, int]], ...]
    opset: int = 18


GraphSpec = OptimumGraph | TorchGraph


@dataclass
class ParityCheck:
    """What the export check compares the exported graphs with.

    `samples` are (query, documents) groups, encoded and scored in padded batches of `batch_size` pairs in arrival
    order; None means queries generated from the tokenizer's vocabulary (mixed lengths, some past max_length).
    """

    reference: Callable[[Batch], np.ndarray]
    reference_name: str
    samples: list[tuple[Content, list[Content]]] | None = None
    batch_size: int = 8


class EncodingCache(Protocol):
    """Per-document encodings kept across requests, as the runtime gives them to a family that declares
    `document_encodings` (`Family.use_document_cache`): keyed by the family's content hash of an encoded document,
    within the one artifact and serving plan the runtime scoped it to."""

    def get(self, key: bytes) -> np.ndarray | None:
        """The encoding stored under `key`, or None (a miss)."""
        ...

    def put(self, key: bytes, value: np.ndarray) -> None:
        """Keep `value` under `key` while the memory budget allows."""
        ...


class GraphRunner(Protocol):
    """One loaded graph, as the runtime hands it to `Family.serving_pipeline`."""

    input_names: Sequence[str]

    def run(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> list[np.ndarray]:
        """The graph's outputs (all, or those named) for `feeds`."""
        ...


@dataclass(frozen=True)
class ServingGraphs:
    """The graphs one serving runs, as the family chooses them (`Family.serving_graphs`)."""

    graphs: Mapping[str, str]
    """role `serving_pipeline` runs it as -> the role it has among the roles offered (`scorer` -> `scorer.int8`)"""
    prefix_reuse: bool = False
    """the pipeline reuses prefixes: rows must carry `prefix_length` (`PairEncoder.use_prefix_reuse`)"""


def graphs_in(wanted: Sequence[str], available: Sequence[str], precision: Precision | str) -> dict[str, str] | str:
    """{role: its role in `precision`} when every `wanted` role is `available` in `precision`, else why not."""
    chosen = {role: variant_role(role, precision) for role in wanted}
    missing = [role for role in chosen.values() if role not in available]
    if not chosen or missing:
        return f"no {' or '.join(missing) or 'graph'} graph (there are: {', '.join(available) or 'none'})"
    return chosen


@dataclass(frozen=True)
class ExportHints:
    """What the exporter needs to know about a family's checkpoints beyond its graphs: one declaration per family."""

    int8_keep_float: tuple[str, ...] = ()
    """Regexes on ONNX node names whose matrix products stay fp32 in int8 variants (the one-logit head)."""
    int8_sensitive: tuple[str, ...] = ()
    """Regexes on ONNX node names the "mixed" int8 recipe also keeps fp32: the products whose int8 error moves
    rankings most (a sensitivity pass on trained weights: bench/int8_recipes.py, docs/precision.md). The int8
    search does not read them: it measures each model's own (export/int8_search.py)."""
    fusion: Mapping[str, str] = field(default_factory=dict)
    """config.json `model_type` -> onnxruntime's transformer optimizer model type, for the checkpoints its optimizer
    can fuse before dynamic int8 quantization (`fusion_type`)."""
    language_config: str | None = None
    """The config.json key holding the language model's sizes when the config nests it (multimodal checkpoints);
    TensorRT profiles are planned from them (`language_sizes`)."""

    def fusion_type(self, config: Mapping[str, Any]) -> str | None:
        """onnxruntime's optimizer model type for this checkpoint, or None when it is not fused."""
        return self.fusion.get(config.get("model_type") or "")

    def language_sizes(self, config: Mapping[str, Any]) -> Mapping[str, Any]:
        """The part of config.json that holds the language model's sizes (hidden_size, heads, ...)."""
        return config[self.language_config] if self.language_config else config


@dataclass(frozen=True)
class Recognition:
    """Why a family claims a checkpoint: recorded in the artifact and shown by `rerankrt info`."""

    family: str
    reason: str


@dataclass(frozen=True)
class Truncation:
    """A request's own limits on its pairs, beyond the encoder's `max_length`.

    Encoders apply them to the document's tokens as the tokenizer made them in the prompt (the id list is cut, the
    text is not tokenized again), so one encoding gives the exact length; the query, the prompt template and the
    special tokens stay whole.
    """

    max_length: int | None = None  # tokens per pair, at most the encoder's (vLLM's truncate_prompt_tokens)
    side: Literal["right", "left"] = "right"  # which end of the document loses tokens (TEI's truncation_direction)
    max_tokens_per_doc: int | None = None  # the document keeps at most its first N tokens (Cohere's field)


MODEL_LIMITS = Truncation()
"""No request limits: the encoder's `max_length`, documents cut on the right."""


class PairEncoder(ABC):
    """Turns (query, documents) into one `Features` per document, and pads them into a `Batch`."""

    input_names: tuple[str, ...]
    pad_values: Mapping[str, int]
    padding_side: Literal["left", "right"] = "right"
    prefix_reuse: bool = False
    """True when `encode` marks where each pair's shared prompt ends (`prefix_length`, see families.prefix_reuse).
    Encoders that can mark it declare True; `use_prefix_reuse` sets it to what the chosen plan runs."""
    max_length: int
    tokenizer: Any  # the Hugging Face fast tokenizer behind the encoding

    @abstractmethod
    def encode(
        self,
        query: Content,
        documents: Sequence[Content],
        instruct: str | None = None,
        truncate: bool = True,
        truncation: Truncation = MODEL_LIMITS,
    ) -> list[Features]:
        """Encode each (query, document) pair, cut to `truncation` (`kept`) and to `max_length`: with `truncate`,
        long text is cut, never refused; without it a pair over `max_length` is an InputError naming `documents[i]`.

        Content parts are for multimodal families' encoders (the server joins text parts into one string for the
        others).
        """

    def use_prefix_reuse(self, on: bool) -> None:
        """Mark prefixes from now on when `on` and this kind of encoder can (its class's `prefix_reuse`); the loader
        calls it with each plan it tries (`ServingPlan.prefix_reuse`, the family's `ServingGraphs.prefix_reuse`)."""
        self.prefix_reuse = on and type(self).prefix_reuse

    def kept(self, index: int, document: int, others: int, truncate: bool, truncation: Truncation) -> tuple[int, int]:
        """[start, stop) of the `document` tokens of pair `index` that stay beside its `others` (query, prompt,
        special tokens): its first `max_tokens_per_doc`, less what must go on `side` for the pair to fit the
        request's max_length, else `max_length`.

        Without `truncate` a pair still over `max_length` is refused. Others alone over the request's max_length
        are an error; over `max_length` they empty the document and the encoder cuts the rest in its own order.
        """
        stop = document if truncation.max_tokens_per_doc is None else min(document, truncation.max_tokens_per_doc)
        if not truncate and others + stop > self.max_length:
            raise self.too_long(index, others + stop)
        limit = truncation.max_length or self.max_length
        if truncation.max_length is not None and others > limit:
            raise InputError(
                "max_length", f"the query and the prompt alone are over {limit} tokens; select a larger one"
            )
        over = min(stop, max(0, others + stop - limit))
        return (over, stop) if truncation.side == "left" else (0, stop - over)

    def too_long(self, index: int, tokens: int) -> InputError:
        return InputError(
            f"documents[{index}]",
            f"the pair is {tokens} tokens, over max_length {self.max_length}. Please reduce the length of the "
            "input. Or send truncate=true to cut it",
        )

    @abstractmethod
    def save(self, out_dir: Path) -> list[str]:
        """Write what is needed to load this encoder again (tokenizer, template); return the file names."""

    def collate(self, pairs: Sequence[Features]) -> Batch:
        """Pad pairs to the longest one, on `padding_side`, with each input's pad value."""
        width = max(len(pair["input_ids"]) for pair in pairs)
        batch: Batch = {}
        for name in self.input_names:
            out = np.full((len(pairs), width), self.pad_values.get(name, 0), dtype=np.int64)
            for row, pair in enumerate(pairs):
                values = pair[name]
                if self.padding_side == "right":
                    out[row, : len(values)] = values
                else:
                    out[row, width - len(values) :] = values
            batch[name] = out
        return batch


class Family(ABC):
    """A kind of reranker: recognition, encoding, the torch scorer, its graphs, and what it supports."""

    name: ClassVar[str]
    default_max_length: ClassVar[int]
    multimodal: ClassVar[bool] = False
    """True when the encoder takes content parts with images and videos besides text."""
    precisions: ClassVar[tuple[Precision, ...]] = tuple(Precision)
    """Precisions the exporter can make a variant of (fp32 always)."""
    precision_note: ClassVar[str] = ""
    """Why a precision is missing from `precisions`, for the refusal."""
    tensorrt_problem: ClassVar[str | None] = None
    """Why TensorRT engines cannot serve this family, or None when they can (an engine runs the one graph
    `serving_graphs` chooses; `serving_pipeline` runs it)."""
    export_hints: ClassVar[ExportHints] = ExportHints()
    """int8 keep-float and sensitive products, onnxruntime fusion, where a nested config keeps the sizes."""
    options: ClassVar[Mapping[str, str]] = {}
    """Export options the family takes (`rerankrt export --family-option NAME=VALUE`): name -> what it sets. The
    manifest records them resolved (`family_options`) and `configure` is given them again when the artifact loads."""
    logit_scores: ClassVar[bool] = True
    """True when a pair's score is a logit (the HTTP APIs answer sigmoid(logit), or the logit asked raw); False when
    it is a similarity that is the score itself (late interaction's MaxSim): raw or not, the APIs answer it."""
    document_encodings: ClassVar[bool] = False
    """True when a pair's score comes from the query and the document encoded apart (late interaction): the runtime
    then gives `serving_pipeline` a cache of document encodings across requests (`use_document_cache`)."""
    document_cache: EncodingCache | None = None
    """The cache the runtime set for the next `serving_pipeline` (None: no cache)."""

    @classmethod
    @abstractmethod
    def recognise(cls, config: dict, model_dir: Path) -> str | None:
        """Why the checkpoint in `model_dir` (with this config.json) is this family's, or None when it is not.

        Claim only what is known for certain: the registry refuses a checkpoint that no family or two families
        claim, rather than guess.
        """

    @classmethod
    def describe(cls) -> str:
        """One line for error messages: which checkpoints the family takes."""
        return cls.name

    def configure(self, options: Mapping[str, str], model_dir: Path) -> dict[str, str]:
        """Take the export `options` for the checkpoint (or artifact) in `model_dir`, before anything is loaded;
        returns them resolved (defaults filled in) as the manifest records them. An UnsupportedModelError names an
        option the family does not take or a value it refuses."""
        if unknown := sorted(set(options) - set(self.options)):
            takes = ", ".join(self.options) or "none"
            raise UnsupportedModelError(
                f"--family-option {unknown[0]}: the {self.name} family takes no such option (it takes: {takes})"
            )
        return dict(options)

    @abstractmethod
    def load_encoder(
        self, model_dir: Path, max_length: int | None = None, chat_template: Path | None = None
    ) -> PairEncoder:
        """The encoder for a model or artifact folder (both hold the tokenizer files)."""

    def load_scorer(self, model_dir: Path, dtype: torch.dtype | None = None, device: str = "cpu") -> torch.nn.Module:
        """The torch module: `forward(**batch) -> float32 logits [batch]`, in eval mode.

        It wraps exactly the model that is exported, so every backend computes the same function.
        """
        return self.wrap_scorer(self.load_export_model(model_dir, dtype)).to(device).eval()

    def wrap_scorer(self, export_model: torch.nn.Module) -> torch.nn.Module:
        """The scorer around an already loaded `load_export_model` (export reuses the one it exported)."""
        return ClassifierLogitScorer(export_model)

    @abstractmethod
    def load_export_model(self, model_dir: Path, dtype: torch.dtype | None = None) -> torch.nn.Module:
        """The torch model the graphs are exported from (fp32 unless asked), in eval mode."""

    def serving_graphs(
        self, roles: Sequence[str], precision: Precision | str, prefix_reuse: bool
    ) -> ServingGraphs | str:
        """The graphs one serving in `precision` runs, chosen among `roles` (an artifact's graph roles, or those a
        backend can run: `role` in fp32, `role.<precision>` for a variant), each under the role `serving_pipeline`
        reads, and whether they reuse prefixes (asked for with `prefix_reuse`); or why they cannot serve.

        By default: every graph of the artifact, each in `precision`, no prefix reuse."""
        wanted = list(dict.fromkeys(base_role(role) for role in roles))
        chosen = graphs_in(wanted, roles, precision)
        return chosen if isinstance(chosen, str) else ServingGraphs(chosen)

    def graphs(self, export_model: torch.nn.Module, encoder: PairEncoder) -> list[GraphSpec]:
        """The ONNX graphs of an artifact; by default one: optimum's export of a one-logit classifier."""
        return [OptimumGraph(SCORER, export_model)]

    def parity_check(self, export_model: torch.nn.Module, model_dir: Path, encoder: PairEncoder) -> ParityCheck:
        """What the exported graphs must match within the fp32 tolerance; by default the torch scorer."""
        scorer = self.wrap_scorer(export_model).eval()
        return ParityCheck(lambda batch: run_torch(scorer, batch), "torch scorer, fp32, cpu")

    def serving_pipeline(self, folder: Path, graphs: Mapping[str, GraphRunner]) -> Callable[[Batch], np.ndarray]:
        """`run(batch) -> logits [batch]` over the loaded graphs (by role); by default the scorer graph alone."""
        scorer = graphs[SCORER]

        def run(batch: Batch) -> np.ndarray:
            logits = scorer.run({name: batch[name] for name in scorer.input_names})[0]
            return logits.reshape(-1).astype(np.float32, copy=False)

        return run

    def packed_module(self, scorer: torch.nn.Module) -> torch.nn.Module | str:
        """The `families.packed.PackedModule` over this family's torch scorer (`load_scorer`'s, the same weights):
        padding-free packed batches on the torch backend; or why this family's batches stay padded."""
        return f"the {self.name} family has no packed path (its batches stay padded)"

    def torch_graphs(self, scorer: torch.nn.Module, device: str) -> Mapping[str, GraphRunner] | None:
        """The torch backend's graphs, by the roles `serving_pipeline` reads, made of the torch scorer's modules when
        the family's pipeline does more than run one graph (late interaction: the cache, MaxSim); None (default): the
        torch backend runs the scorer on the whole batch."""
        return None

    def use_document_cache(self, cache: EncodingCache | None) -> None:
        """The document cache the pipelines made from now on use (families with `document_encodings` read it); the
        loader calls it with each plan it opens, scoped to that artifact and plan."""
        self.document_cache = cache

    def label_tokens(self, encoder: PairEncoder) -> tuple[int, int] | None:
        """The (yes, no) token ids when the graph's logit is logit(yes) - logit(no) at the next-token position,
        so a softmax over those two tokens is [sigmoid(logit), 1 - sigmoid(logit)]; None when the logit is anything
        else (a classification head's, or one token's logit alone). SGLang's score API (`label_token_ids`) reads it.
        """
        return None

    @classmethod
    def precision_problem(cls, precision: Precision | str) -> str | None:
        """Why this family cannot make `precision`, or None when it can."""
        if Precision(precision) in cls.precisions:
            return None
        note = f" ({cls.precision_note})" if cls.precision_note else ""
        return f"the {cls.name} family exports {', '.join(p.value for p in cls.precisions)} only{note}"


def run_torch(module: torch.nn.Module, batch: Batch) -> np.ndarray:
    """A scorer module on a numpy batch (CPU), float32 logits."""
    with torch.inference_mode():
        return module(**{k: torch.from_numpy(v) for k, v in batch.items()}).float().numpy()


class ClassifierLogitScorer(torch.nn.Module):
    """A one-label `*ForSequenceClassification` model -> its logit, float32, shape [batch]."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits
        return logits[:, 0].float()


def load_fast_tokenizer(model_dir: Path):
    """The folder's Hugging Face tokenizer; encoders rely on a fast one (offsets, batch encoding)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)  # no code from the folder
    if not tokenizer.is_fast:
        raise UnsupportedModelError(f"{model_dir}: needs a fast (tokenizer.json) tokenizer")
    return tokenizer


def save_tokenizer(tokenizer, out_dir: Path) -> list[str]:
    """Save the tokenizer; the names of the files written (transformers also lists ones it did not write)."""
    written = [Path(f) for f in tokenizer.save_pretrained(out_dir)]
    return sorted({f.name for f in written if f.is_file()})


def resolve_max_length(model_dir: Path, requested: int | None, default: int) -> int:
    """`requested`, or the family default capped by the model's positions; an error past the model's limit."""
    limit = model_max_positions(model_dir)
    if requested is None:
        return default if limit is None else min(default, limit)
    if limit is not None and requested > limit:
        raise UnsupportedModelError(f"max_length {requested} exceeds what the model takes ({limit} tokens)")
    return requested


def model_max_positions(model_dir: Path) -> int | None:
    """Usable sequence length from config.json (RoBERTa-style models reserve padding_idx + 1 positions)."""
    config = read_config(model_dir)
    positions = config.get("max_position_embeddings")
    if positions is None:
        return None
    if config.get("model_type") in {"roberta", "xlm-roberta", "camembert", "xlm-roberta-xl"}:
        positions -= config.get("pad_token_id", 1) + 1
    return int(positions)


def random_text(tokenizer, rng: np.random.Generator, n_tokens: int) -> str:
    """About `n_tokens` tokens drawn from the tokenizer's vocabulary (no special tokens): export-check samples."""
    special = set(tokenizer.all_special_ids)
    ids = [int(i) for i in rng.integers(0, len(tokenizer), size=n_tokens * 2) if int(i) not in special][:n_tokens]
    return tokenizer.decode(ids, skip_special_tokens=True)


def model_names(model_dir: Path, config: dict | None = None) -> list[str]:
    """Names a checkpoint goes by: its folder path (a Hub snapshot's path holds the repo id), config.json's
    `_name_or_path`, and the model card's (README.md) `base_model` entries and first title."""
    names = [str(Path(model_dir).resolve())]
    if config and isinstance(config.get("_name_or_path"), str):
        names.append(config["_name_or_path"])
    card = Path(model_dir) / "README.md"
    try:
        text = card.read_text(errors="replace")[:20_000] if card.is_file() else ""
    except OSError:
        text = ""
    names += re.findall(r"^\s*(?:-\s*|base_model:\s*)([\w.-]+/[\w.-]+)\s*$", text, flags=re.MULTILINE)
    names += re.findall(r"^#\s+(.+)$", text, flags=re.MULTILINE)[:1]
    return names


def named(model_dir: Path, config: dict, pattern: str) -> str | None:
    """The first of `model_names` that matches `pattern` (case-insensitive), or None."""
    return next((n for n in model_names(model_dir, config) if re.search(pattern, n, flags=re.IGNORECASE)), None)
