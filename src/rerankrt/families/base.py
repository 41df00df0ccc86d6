"""The contract every reranker family fulfils.

A family declares how to recognise a checkpoint (`matches`), how to turn a query
and documents into model inputs (`load_encoder`), and the torch module that maps
a batch of those inputs to one relevance logit per pair (`load_scorer`). The
same scorer is what gets exported to ONNX and what the torch backend runs, so
every backend computes the same function.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from rerankrt.errors import InputError, UnsupportedModelError
from rerankrt.model_source import read_config

Features = dict[str, np.ndarray]
"""One encoded pair: input name -> 1-D int64 array (unpadded); `input_ids` is always there.

Multimodal encoders add other arrays (3-D positions, image patches and grids); their `collate` knows them."""

Batch = dict[str, np.ndarray]
"""Collated pairs: input name -> [batch, seq] int64 array, padded (plus any multimodal arrays, per family)."""

Content = str | Sequence[Mapping[str, Any]]
"""A query or document: text, or (multimodal families) content parts with decoded media, see families.qwen3_vl."""


class PairEncoder(ABC):
    """Turns (query, documents) into one `Features` per document, and pads them into a `Batch`."""

    input_names: tuple[str, ...]
    pad_values: Mapping[str, int]
    padding_side: Literal["left", "right"] = "right"
    max_length: int
    tokenizer: Any  # the Hugging Face fast tokenizer behind the encoding

    @abstractmethod
    def encode(
        self, query: str, documents: Sequence[str], instruct: str | None = None, truncate: bool = True
    ) -> list[Features]:
        """Encode each (query, document) pair, truncated to `max_length`; never fails on long text.

        With `truncate=False` a pair over `max_length` is an InputError naming `documents[i]`.
        """

    def too_long(self, index: int, tokens: int) -> InputError:
        return InputError(
            f"documents[{index}]",
            f"the pair is {tokens} tokens, over max_length {self.max_length}; send truncate=true to cut it",
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
    """A kind of reranker: detection, encoding, the torch scorer, and how to export it."""

    name: ClassVar[str]
    default_max_length: ClassVar[int]
    multimodal: ClassVar[bool] = False
    """True when the encoder takes content parts with images and videos besides text."""
    onnx_task: ClassVar[str]
    """optimum task whose export of `load_export_model` yields the one-logit graph."""

    @classmethod
    @abstractmethod
    def matches(cls, config: dict, model_dir: Path) -> bool:
        """True when the checkpoint in `model_dir` (with this config.json) belongs to the family."""

    @classmethod
    def describe(cls) -> str:
        """One line for error messages: which checkpoints the family takes."""
        return cls.name

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
        """The transformers model that optimum exports for `onnx_task`: its single output logit is the score."""


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

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
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
