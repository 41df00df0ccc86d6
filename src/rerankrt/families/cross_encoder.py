"""Cross-encoders: any `*ForSequenceClassification` with one label (bge-reranker, ms-marco MiniLM, ...).

The score of a pair is the classification head's single logit. Pairs are
encoded as the tokenizer's own pair template (`<s> q </s></s> d </s>` for
XLM-R, `[CLS] q [SEP] d [SEP]` for BERT) with `only_second` truncation, as
sentence-transformers and FlagEmbedding do.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from rerankrt.errors import UnsupportedModelError
from rerankrt.families.base import Family, Features, PairEncoder

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

    def encode(self, query: str, documents: Sequence[str], instruct: str | None = None) -> list[Features]:
        # `instruct` is for instruction-following rerankers; a cross-encoder has no place for it.
        query = self.fit_query(query)
        encoded = self.tokenizer(
            [query] * len(documents),
            list(documents),
            truncation="only_second",
            max_length=self.max_length,
        )
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
        written = [Path(f) for f in self.tokenizer.save_pretrained(out_dir)]
        return sorted(f.name for f in written if f.is_file())  # transformers lists files it did not write


class CrossEncoderFamily(Family):
    name = "cross-encoder"
    default_max_length = 512
    onnx_task = "text-classification"

    @classmethod
    def matches(cls, config: dict) -> bool:
        architectures = config.get("architectures") or []
        return any(a.endswith("ForSequenceClassification") for a in architectures) and num_labels(config) == 1

    @classmethod
    def describe(cls) -> str:
        return "cross-encoder (a *ForSequenceClassification checkpoint with exactly one label)"

    def load_encoder(self, model_dir: Path, max_length: int | None = None) -> CrossEncoderPairEncoder:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        if not tokenizer.is_fast:
            raise UnsupportedModelError(f"{model_dir}: needs a fast (tokenizer.json) tokenizer")
        limit = max_length or self.default_max_length
        model_limit = model_max_positions(model_dir)
        if model_limit is not None and limit > model_limit:
            raise UnsupportedModelError(f"max_length {limit} exceeds what the model takes ({model_limit} tokens)")
        return CrossEncoderPairEncoder(tokenizer, limit)

    def load_export_model(self, model_dir: Path):
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification.from_pretrained(model_dir).eval()

    def load_scorer(self, model_dir: Path, dtype: torch.dtype | None = None, device: str = "cpu") -> torch.nn.Module:
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(model_dir, torch_dtype=dtype)
        return CrossEncoderScorer(model).to(device).eval()


def model_max_positions(model_dir: Path) -> int | None:
    """Usable sequence length from config.json (RoBERTa-style models reserve padding_idx + 1 positions)."""
    from rerankrt.model_source import read_config

    config = read_config(model_dir)
    positions = config.get("max_position_embeddings")
    if positions is None:
        return None
    if config.get("model_type") in {"roberta", "xlm-roberta", "camembert", "xlm-roberta-xl"}:
        positions -= config.get("pad_token_id", 1) + 1
    return int(positions)


class CrossEncoderScorer(torch.nn.Module):
    """Sequence-classification model -> its single logit, float32, shape [batch]."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits
        return logits[:, 0].float()
