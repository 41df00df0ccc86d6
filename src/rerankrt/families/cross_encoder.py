"""Cross-encoders: any `*ForSequenceClassification` with one label (bge-reranker, ms-marco MiniLM, ...).

The score of a pair is the classification head's single logit. Pairs are
encoded as the tokenizer's own pair template (`<s> q </s></s> d </s>` for
XLM-R, `[CLS] q [SEP] d [SEP]` for BERT), then cut as FlagEmbedding cuts them:
a query over its share of the budget loses its last tokens, and the document's
tokens are cut to fit (`only_second` truncation, on either side).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from rerankrt.errors import UnsupportedModelError
from rerankrt.families import packed
from rerankrt.families.base import (
    MODEL_LIMITS,
    ExportHints,
    Family,
    Features,
    PairEncoder,
    Truncation,
    load_fast_tokenizer,
    resolve_max_length,
    save_tokenizer,
)
from rerankrt.model_source import read_config

log = logging.getLogger(__name__)

# config.json model_type -> onnxruntime's transformer optimizer model type (the architectures it can fuse)
FUSABLE_MODEL_TYPES = {"bert": "bert", "roberta": "bert", "xlm-roberta": "bert", "camembert": "bert"}

# A query may take at most this share of the token budget; the rest is the document's.
QUERY_SHARE = 3 / 4

# Decoder rerankers converted to a one-label head (families.qwen3_seq_cls) expect their prompt, which a plain
# tokenizer pair lacks: the cross-encoder does not claim them (`--family cross-encoder` still takes one).
PROMPT_CONVERSIONS = frozenset({"Qwen3ForSequenceClassification"})

# Remote-code classifiers ported natively by their own family (transformers has no such class).
NATIVE_PORTS = frozenset({"NewForSequenceClassification"})  # families.gte_new

# jina-reranker-v2 names transformers' XLM-R class but maps it to its own flash-attention code, whose weights have
# other names (transformers refuses the folder without trust_remote_code): families.jina_v2 takes it.
FLASH_XLMR_CLASS = "modeling_xlm_roberta.XLMRobertaForSequenceClassification"


def flash_xlmr(config: dict) -> bool:
    """config.json maps AutoModelForSequenceClassification to Jina's flash-attention XLM-R remote code."""
    auto_map = config.get("auto_map")
    target = auto_map.get("AutoModelForSequenceClassification") if isinstance(auto_map, dict) else None
    return isinstance(target, str) and target.split("--")[-1] == FLASH_XLMR_CLASS


def num_labels(config: dict) -> int:
    """transformers stores the label count as id2label; without it the default is 2."""
    if "id2label" in config:
        return len(config["id2label"])
    return int(config.get("num_labels", 2))


class CrossEncoderPairEncoder(PairEncoder):
    """Tokenizer pair encoding; the pair's id list is cut: the query to its share, then the document to fit."""

    padding_side = "right"

    def __init__(self, tokenizer, max_length: int):
        special = tokenizer.num_special_tokens_to_add(pair=True)
        if max_length < special + 2:
            raise UnsupportedModelError(f"max_length {max_length} leaves no room for a query and a document")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.max_query_tokens = int((max_length - special) * QUERY_SHARE)
        self.input_names = tuple(tokenizer.model_input_names)
        self.pad_values = {"input_ids": tokenizer.pad_token_id}

    def encode(
        self,
        query: str,
        documents: Sequence[str],
        instruct: str | None = None,
        truncate: bool = True,
        truncation: Truncation = MODEL_LIMITS,
    ) -> list[Features]:
        # `instruct` is for instruction-following rerankers; a cross-encoder has no place for it.
        encoded = self.tokenizer([query] * len(documents), list(documents), truncation=False, verbose=False)
        pairs = []
        for i in range(len(documents)):
            sequences = encoded.sequence_ids(i)  # None: a special token, 0: the query's, 1: the document's
            keep = np.ones(len(sequences), dtype=bool)
            query_start, query_tokens = _span(sequences, 0)
            if truncate and query_tokens > self.max_query_tokens:
                keep[query_start + self.max_query_tokens : query_start + query_tokens] = False
            start, tokens = _span(sequences, 1)
            cut = self.kept(i, tokens, int(keep.sum()) - tokens, truncate, truncation)
            keep[start : start + cut[0]] = False
            keep[start + cut[1] : start + tokens] = False
            pairs.append({name: np.asarray(encoded[name][i], dtype=np.int64)[keep] for name in self.input_names})
        return pairs

    def save(self, out_dir: Path) -> list[str]:
        return save_tokenizer(self.tokenizer, out_dir)


def _span(sequences: list[int | None], sequence: int) -> tuple[int, int]:
    """(first position, length) of one sequence's tokens in a pair (they are consecutive)."""
    tokens = sequences.count(sequence)
    return (sequences.index(sequence) if tokens else 0), tokens


class CrossEncoderFamily(Family):
    name = "cross-encoder"
    default_max_length = 512
    export_hints = ExportHints(
        int8_keep_float=(r"(^|/)classifier/",),  # the one-logit head: tiny, and it sets the scale
        int8_sensitive=(r"/intermediate/dense/",),  # BERT/XLM-R FFN up-projection: its int8 error ranks worst
        fusion=FUSABLE_MODEL_TYPES,
    )

    @classmethod
    def recognise(cls, config: dict, model_dir: Path) -> str | None:
        found = [a for a in config.get("architectures") or [] if a.endswith("ForSequenceClassification")]
        if not found or num_labels(config) != 1 or found[0] in PROMPT_CONVERSIONS | NATIVE_PORTS or flash_xlmr(config):
            return None
        return f"{found[0]} with one label: the head's logit is the score"

    @classmethod
    def describe(cls) -> str:
        aside = ", ".join(sorted(PROMPT_CONVERSIONS)) + " nor remote-code ports (" + ", ".join(sorted(NATIVE_PORTS))
        aside += ", Jina's flash-attention XLM-R)"
        return f"cross-encoder (a *ForSequenceClassification checkpoint with exactly one label, but {aside})"

    def load_encoder(
        self, model_dir: Path, max_length: int | None = None, chat_template: Path | None = None
    ) -> CrossEncoderPairEncoder:
        if chat_template is not None:
            log.warning("a cross-encoder has no prompt template: --chat-template %s is ignored", chat_template)
        tokenizer = load_fast_tokenizer(model_dir)
        return CrossEncoderPairEncoder(tokenizer, resolve_max_length(model_dir, max_length, self.default_max_length))

    def load_export_model(self, model_dir: Path, dtype: torch.dtype | None = None) -> torch.nn.Module:
        from transformers import AutoModelForSequenceClassification

        labels = num_labels(read_config(model_dir))
        if labels != 1:  # also catches a forced --family on a checkpoint without a one-logit head
            raise UnsupportedModelError(
                f"{model_dir}: the classification head has {labels} labels; a cross-encoder needs 1"
            )
        return AutoModelForSequenceClassification.from_pretrained(
            model_dir, dtype=dtype, trust_remote_code=False
        ).eval()

    def packed_module(self, scorer: torch.nn.Module) -> torch.nn.Module | str:
        """BERT-like checkpoints (the model types onnxruntime fuses: BERT, RoBERTa, XLM-R, CamemBERT): positions
        restart per pair from the embeddings' offset (RoBERTa-like: padding_idx + 1), token types per pair."""
        model = scorer.model
        model_type = model.config.model_type
        if model_type not in FUSABLE_MODEL_TYPES:
            return f"packed batches are proven for {', '.join(FUSABLE_MODEL_TYPES)} only, not {model_type}"
        base = getattr(model, model.base_model_prefix)
        padding_idx = getattr(base.embeddings, "padding_idx", None)
        offset = 0 if padding_idx is None else padding_idx + 1
        pooled = getattr(base, "pooler", None) is not None and isinstance(model.classifier, torch.nn.Linear)
        return packed.EncoderPacked(model, offset, pooled)
