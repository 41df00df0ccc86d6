"""Cross-encoders: any `*ForSequenceClassification` with one label (bge-reranker, ms-marco MiniLM, ...).

The score of a pair is the classification head's single logit. Pairs are
encoded as the tokenizer's own pair template (`<s> q </s></s> d </s>` for
XLM-R, `[CLS] q [SEP] d [SEP]` for BERT) with `only_second` truncation, as
sentence-transformers and FlagEmbedding do.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from rerankrt.errors import UnsupportedModelError
from rerankrt.families.base import (
    Family,
    Features,
    PairEncoder,
    load_fast_tokenizer,
    resolve_max_length,
    save_tokenizer,
)
from rerankrt.model_source import read_config

log = logging.getLogger(__name__)

# A query may take at most this share of the token budget; the rest is the document's.
QUERY_SHARE = 3 / 4


def num_labels(config: dict) -> int:
    """transformers stores the label count as id2label; without it the default is 2."""
    if "id2label" in config:
        return len(config["id2label"])
    return int(config.get("num_labels", 2))


class CrossEncoderPairEncoder(PairEncoder):
    """Tokenizer pair encoding with the document truncated first and over-long queries cut."""

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
        self, query: str, documents: Sequence[str], instruct: str | None = None, truncate: bool = True
    ) -> list[Features]:
        # `instruct` is for instruction-following rerankers; a cross-encoder has no place for it.
        if truncate:
            query = self.fit_query(query)
            encoded = self.tokenizer(
                [query] * len(documents), list(documents), truncation="only_second", max_length=self.max_length
            )
        else:
            encoded = self.tokenizer([query] * len(documents), list(documents), truncation=False)
            for i, ids in enumerate(encoded["input_ids"]):
                if len(ids) > self.max_length:
                    raise self.too_long(i, len(ids))
        return [
            {name: np.asarray(encoded[name][i], dtype=np.int64) for name in self.input_names}
            for i in range(len(documents))
        ]

    def fit_query(self, query: str) -> str:
        """Cut a query to `max_query_tokens` at a token boundary, so `only_second` truncation can fit the pair."""
        limit = self.max_query_tokens
        while True:
            encoded = self.tokenizer(query, add_special_tokens=False, return_offsets_mapping=True)
            if len(encoded["input_ids"]) <= self.max_query_tokens:
                return query
            query = query[: encoded["offset_mapping"][limit][0]].rstrip()
            limit -= 1  # re-tokenising the cut text may merge differently; shrink until it fits

    def save(self, out_dir: Path) -> list[str]:
        return save_tokenizer(self.tokenizer, out_dir)


class CrossEncoderFamily(Family):
    name = "cross-encoder"
    default_max_length = 512
    int8_keep_float = (r"(^|/)classifier/",)  # the one-logit head: tiny, and it sets the scale
    int8_sensitive = (r"/intermediate/dense/",)  # BERT/XLM-R FFN up-projection: its int8 error ranks worst

    @classmethod
    def recognise(cls, config: dict, model_dir: Path) -> str | None:
        found = [a for a in config.get("architectures") or [] if a.endswith("ForSequenceClassification")]
        if not found or num_labels(config) != 1:
            return None
        return f"{found[0]} with one label: the head's logit is the score"

    @classmethod
    def describe(cls) -> str:
        return "cross-encoder (a *ForSequenceClassification checkpoint with exactly one label)"

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
