"""Qwen3 yes/no rerankers (Qwen/Qwen3-Reranker-0.6B/4B/8B): P(yes) at the prompt's last token.

The model card scores a pair as softmax([logit(no), logit(yes)])[1] at the last
token, which equals sigmoid(logit(yes) - logit(no)) = sigmoid((W[yes] - W[no]) · h_last).
So the LM head is folded away (`fold_head`): the causal LM's body goes into the
architecture's `*ForSequenceClassification` (one label, which pools the last
non-padding token), whose score row is W[yes] - W[no], computed in fp32. The
graph never computes the vocabulary-wide projection.

The prompt is the model card's, rendered from a sandboxed Jinja template
(`templates/qwen3_reranker.jinja`, or `--chat-template`; see `families.yes_no`).

Besides the plain scorer graph (model.onnx), an artifact holds the decoder graph of exact prefix reuse
(decoder.onnx, `families.prefix_reuse`): the prompt before the document runs once per distinct prompt and query,
each document continues from its keys and values. With prefix reuse on, that one graph serves every row (the
weights are loaded once); off, model.onnx alone. The encoder marks where each pair splits (`prefix_length`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from rerankrt.errors import InputError
from rerankrt.families import prefix_reuse
from rerankrt.families.base import (
    MODEL_LIMITS,
    Batch,
    ExportHints,
    Features,
    PairEncoder,
    Truncation,
    load_fast_tokenizer,
    named,
    random_text,
    resolve_max_length,
    save_tokenizer,
)
from rerankrt.families.yes_no import (
    TEMPLATE_FILE,
    PromptTemplate,
    dropped_tokens,
    has_yes_no_tokens,
    load_folded,
    pad_token_id,
    template_source,
    yes_no_ids,
)

ARCHITECTURE = "Qwen3ForCausalLM"
NAME_PATTERN = r"qwen3-reranker"
DEFAULT_TEMPLATE = "qwen3_reranker.jinja"


class YesNoPairEncoder(PairEncoder):
    """Prompt per pair, tokenized as a whole; over-long prompts lose document tokens first, then query tokens."""

    padding_side = "left"  # as the model card; the graph pools the last real token either way
    prefix_reuse = True
    input_names = ("input_ids", "attention_mask")

    def __init__(self, tokenizer, template: PromptTemplate, max_length: int):
        self.tokenizer = tokenizer
        self.template = template
        self.max_length = max_length
        self.pad_values = {"input_ids": pad_token_id(tokenizer)}

    def encode(
        self,
        query: str,
        documents: Sequence[str],
        instruct: str | None = None,
        truncate: bool = True,
        truncation: Truncation = MODEL_LIMITS,
    ) -> list[Features]:
        rendered = [self.template.render(query, doc, instruct) for doc in documents]
        encoded = self.tokenizer(
            [text for text, _, _ in rendered], add_special_tokens=False, return_offsets_mapping=True
        )
        pairs = []
        for i, (_, query_spans, doc_spans) in enumerate(rendered):
            ids, offsets = encoded["input_ids"][i], encoded["offset_mapping"][i]
            if len(ids) > self.max_length or truncation != MODEL_LIMITS:
                spans = (query_spans, doc_spans)
                dropped = dropped_tokens(self, i, offsets, spans, 0, truncate, truncation)
                if dropped is None:
                    raise InputError(
                        "instruct", f"the prompt without query and document is over max_length {self.max_length}"
                    )
                ids = [token for t, token in enumerate(ids) if t not in dropped]
                offsets = [span for t, span in enumerate(offsets) if t not in dropped]
            ids = np.asarray(ids, dtype=np.int64)
            pair = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
            if self.prefix_reuse:
                prefix_reuse.mark_prefix(pair, offsets, doc_spans[0][0] if doc_spans else None)
            pairs.append(pair)
        return pairs

    def collate(self, pairs: Sequence[Features]) -> Batch:
        return prefix_reuse.collate_prefix_lengths(super().collate(pairs), pairs)

    def save(self, out_dir: Path) -> list[str]:
        (Path(out_dir) / TEMPLATE_FILE).write_text(self.template.source)
        return sorted([*save_tokenizer(self.tokenizer, out_dir), TEMPLATE_FILE])


class Qwen3YesNoFamily(prefix_reuse.PrefixReuseFamily):
    name = "qwen3-yes-no"
    default_max_length = 8192
    export_hints = ExportHints(int8_keep_float=(r"(^|/)score/",))  # the folded one-logit head: tiny, sets the scale
    whole_reference = "transformers Qwen3ForSequenceClassification (folded yes - no head), whole pairs, fp32, cpu"
    packed_batches = True  # padding-free batches and multi-item scoring on the torch backend (families.packed)

    @classmethod
    def recognise(cls, config: dict, model_dir: Path) -> str | None:
        if ARCHITECTURE not in (config.get("architectures") or []):
            return None
        name = named(model_dir, config, NAME_PATTERN)
        if name is None and not (Path(model_dir) / TEMPLATE_FILE).is_file():
            return None
        if not has_yes_no_tokens(model_dir):
            return None
        why = f"name {name!r}" if name else f"its {TEMPLATE_FILE}"
        return f"{ARCHITECTURE} with single-token 'yes'/'no', a Qwen3-Reranker by {why}"

    @classmethod
    def describe(cls) -> str:
        return f"{cls.name}: Qwen3-Reranker ({ARCHITECTURE} named Qwen3-Reranker, single tokens 'yes' and 'no')"

    def load_encoder(
        self, model_dir: Path, max_length: int | None = None, chat_template: Path | None = None
    ) -> YesNoPairEncoder:
        tokenizer = load_fast_tokenizer(model_dir)
        template = PromptTemplate(*template_source(model_dir, chat_template, DEFAULT_TEMPLATE))
        template.check("Query q", "Document d", ["Query q", "Document d"])
        return YesNoPairEncoder(tokenizer, template, resolve_max_length(model_dir, max_length, self.default_max_length))

    def label_tokens(self, encoder: PairEncoder) -> tuple[int, int]:
        """The graph's logit is logit(yes) - logit(no): the model card's softmax over these two tokens."""
        return yes_no_ids(encoder.tokenizer)

    def load_export_model(self, model_dir: Path, dtype: torch.dtype | None = None) -> torch.nn.Module:
        return load_folded(model_dir, dtype, yes_no_ids)  # W[yes] - W[no]

    def parity_samples(self, encoder: PairEncoder) -> list[tuple[str, list[str]]]:
        return parity_samples(encoder)


def parity_samples(encoder: PairEncoder, seed: int = 0) -> list[tuple[str, list[str]]]:
    """Queries with documents of mixed lengths (some truncated), one with a single document, one with documents
    that are prefixes of each other and an empty one: in batches of 8, rows of two queries share a batch."""
    rng = np.random.default_rng(seed)
    tokenizer = encoder.tokenizer
    longest = min(int(encoder.max_length * 1.25), 640)

    def text(lo: int, hi: int) -> str:
        return random_text(tokenizer, rng, int(rng.integers(lo, hi)))

    base = text(20, 40)
    samples = [(text(2, 25), [text(1, longest) for _ in range(6)]) for _ in range(3)]
    samples.insert(1, (text(2, 25), [text(1, 60)]))
    samples.append((text(2, 25), [base[: len(base) // 3], base, "", base[: len(base) // 2]]))
    return samples
