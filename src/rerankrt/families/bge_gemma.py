"""BAAI/bge-reranker-v2-gemma: a `GemmaForCausalLM` scored as the logit of `Yes` at the prompt's last token.

FlagEmbedding's `FlagLLMReranker` (FlagEmbedding/inference/reranker/decoder_only/base.py, `compute_score`) is
the reference. For FlagEmbedding's `max_length` M (512 by default) it builds each pair from token ids:

    query   = tokens("A: " + query)[: M * 3 // 4]       (tokenized without special tokens)
    passage = tokens("B: " + passage)[: M]
    first   = [bos] + query                               (bos only when it exists and differs from pad)
    second  = tokens("\\n") + passage, cut from its end so that len(first + second) <= M + len(sep) + len(prompt)
    ids     = first + second + tokens("\\n") + tokens(PROMPT)

pads the batch on the tokenizer's padding side (Gemma's: left), runs the causal LM and takes
`logits[last real token, id("Yes")]`; `normalize=True` would apply a sigmoid (rerankrt's score does).

(The model card's own snippet, `get_inputs` in research/llm_reranker/README.md, differs: it cuts
`first + second` to max_length itself, before appending, and defaults to 1024. FlagEmbedding's library, which
the card's "Using FlagEmbedding" section calls, is what this family reproduces.)

rerankrt's `max_length` is the longest sequence the encoder makes (engines and chunking size by it), so for this
family it is M + 2 * (len(sep) + len(prompt)): the prompt is appended after a cut that already left room for it.
The default is FlagEmbedding's M = 512 plus that overhead; `--max-length N` means M = N - 2 * overhead.

The score is h_last · W[Yes], so the LM head is folded away (`fold_head`): the Gemma body goes into
`GemmaForSequenceClassification` (one label, pooling the last non-padding token, which is the prompt's last
token under left or right padding) whose score row is W[Yes]. The graph never computes the vocabulary-wide
projection. Gemma uses rotary positions only, so left padding (which shifts every position of a row by the
same amount) does not change the scores.

The prompt is fixed (the model was fine-tuned with it), so a request's `instruct` is refused rather than
silently ignored.

Prefix reuse (`families.prefix_reuse`, as for Qwen3-Reranker): every pair of a request starts with the same
`first + sep` ([bos] "A: {query}" "\n"), so it runs once per request and each passage continues from its keys and
values, in the decoder graph (decoder.onnx) that then serves every row; model.onnx stays for --no-prefix-reuse.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from rerankrt.errors import InputError, UnsupportedModelError
from rerankrt.families import prefix_reuse
from rerankrt.families.base import (
    MODEL_LIMITS,
    Batch,
    ExportHints,
    Features,
    PairEncoder,
    Truncation,
    load_fast_tokenizer,
    resolve_max_length,
    save_tokenizer,
)
from rerankrt.families.yes_no import (
    cut_ids,
    load_folded,
    named_with_answers,
    pad_token_id,
    single_token_id,
    text_ids,
)

ARCHITECTURE = "GemmaForCausalLM"
NAME_PATTERN = r"bge-reranker-v2-gemma"
YES = "Yes"
QUERY_PREFIX, PASSAGE_PREFIX = "A: ", "B: "
SEP = "\n"
PROMPT = (
    "Given a query A and a passage B, determine whether the passage contains an answer to the query by "
    "providing a prediction of either 'Yes' or 'No'."
)
FLAG_MAX_LENGTH = 512  # FlagLLMReranker's default max_length
QUERY_SHARE = (3, 4)  # FlagLLMReranker's default query_max_length: max_length * 3 // 4
MIN_FLAG_MAX_LENGTH = 8


def yes_token_id(tokenizer, origin: str = "the tokenizer") -> int:
    token = single_token_id(tokenizer, YES)
    if token is None:
        raise UnsupportedModelError(f"{origin}: {YES!r} is not a single token")
    return token


def prompt_overhead(tokenizer) -> int:
    """Tokens a pair may hold past FlagEmbedding's max_length: the separator and prompt, counted twice."""
    return 2 * (
        len(tokenizer(SEP, add_special_tokens=False)["input_ids"])
        + len(tokenizer(PROMPT, add_special_tokens=False)["input_ids"])
    )


class BgeGemmaPairEncoder(PairEncoder):
    """FlagEmbedding's token-level prompt, cut exactly as FlagLLMReranker cuts it (see the module docstring)."""

    input_names = ("input_ids", "attention_mask")
    prefix_reuse = True
    model_name = "bge-reranker-v2-gemma"  # for the errors

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer = tokenizer
        self.padding_side = "left" if tokenizer.padding_side == "left" else "right"  # as tokenizer.pad does
        self.pad_values = {"input_ids": pad_token_id(tokenizer)}
        self.sep = text_ids(self.tokenizer, SEP)
        self.prompt = text_ids(self.tokenizer, PROMPT)
        overhead = prompt_overhead(tokenizer)
        self.flag_max_length = max_length - overhead
        if self.flag_max_length < MIN_FLAG_MAX_LENGTH:
            raise UnsupportedModelError(
                f"max_length {max_length} leaves {self.flag_max_length} tokens for the query and passage: the fixed "
                f"prompt takes {overhead} (FlagEmbedding's max_length is max_length - {overhead})"
            )
        self.max_length = max_length
        self.query_max_length = self.flag_max_length * QUERY_SHARE[0] // QUERY_SHARE[1]
        self.pair_limit = self.flag_max_length + len(self.sep) + len(self.prompt)
        self.head = self.first_tokens(tokenizer)
        self.cut_left = tokenizer.truncation_side == "left"

    def first_tokens(self, tokenizer) -> list[int]:
        """What precedes "A: {query}": bos when it exists and differs from pad (FlagLLMReranker)."""
        bos, pad = tokenizer.bos_token_id, tokenizer.pad_token_id
        return [bos] if bos is not None and bos != pad else []

    def encode(
        self,
        query: str,
        documents: Sequence[str],
        instruct: str | None = None,
        truncate: bool = True,
        truncation: Truncation = MODEL_LIMITS,
    ) -> list[Features]:
        if instruct is not None and instruct.strip():  # "" is no instruction, as for the other families
            raise InputError(
                "instruct",
                f"{self.model_name} scores with the fixed prompt it was fine-tuned with and takes no instruction",
            )
        if not documents:
            return []
        query_ids = text_ids(self.tokenizer, QUERY_PREFIX + query)
        if len(query_ids) > self.query_max_length:
            if not truncate:
                raise InputError(
                    "query",
                    f"the query is {len(query_ids)} tokens with its {QUERY_PREFIX!r} prefix, over the "
                    f"{self.query_max_length} this model takes (3/4 of FlagEmbedding's max_length "
                    f"{self.flag_max_length}); send truncate=true to cut it",
                )
            query_ids = cut_ids(query_ids, self.query_max_length, self.cut_left)
        first = self.head + query_ids
        passages = [PASSAGE_PREFIX + doc for doc in documents]
        encoded = self.tokenizer(passages, add_special_tokens=False, return_offsets_mapping=True)
        pairs = []
        for i, passage_ids in enumerate(encoded["input_ids"]):
            passage_ids = list(passage_ids)
            if truncation != MODEL_LIMITS:
                offsets = encoded["offset_mapping"][i]
                passage_ids = self._limited(i, passage_ids, offsets, len(first), truncate, truncation)
            if not truncate:
                whole = len(first) + 2 * len(self.sep) + len(passage_ids) + len(self.prompt)
                if whole > self.max_length:
                    raise self.too_long(i, whole)
                if len(passage_ids) > self.flag_max_length:
                    raise InputError(
                        f"documents[{i}]",
                        f"the document is {len(passage_ids)} tokens with its {PASSAGE_PREFIX!r} prefix, over the "
                        f"{self.flag_max_length} this model takes (FlagEmbedding's max_length); "
                        "send truncate=true to cut it",
                    )
            second = self.sep + cut_ids(passage_ids, self.flag_max_length, self.cut_left)
            second = cut_ids(second, max(0, self.pair_limit - len(first)), self.cut_left)
            ids = np.asarray(first + second + self.sep + self.prompt, dtype=np.int64)
            pair = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
            if self.prefix_reuse:  # the query part: the same tokens for every passage (rows group by their ids)
                split = min(len(first) + len(self.sep), len(ids) - 1)
                pair[prefix_reuse.PREFIX_LENGTH] = np.asarray([split], dtype=np.int64)
            pairs.append(pair)
        return pairs

    def _limited(
        self, index: int, passage_ids: list[int], offsets, first_length: int, truncate: bool, truncation: Truncation
    ) -> list[int]:
        """The passage with its document's tokens (after the "B: " prefix) cut to the request's limits and to what
        FlagEmbedding's cut leaves it, so that cut takes nothing more and the request's side is honoured."""
        document = sum(1 for _, end in offsets if end > len(PASSAGE_PREFIX))
        prefix = len(passage_ids) - document
        others = first_length + 2 * len(self.sep) + len(self.prompt) + prefix
        limit = truncation.max_length or self.max_length
        if truncate:  # the longest passage FlagEmbedding's cut leaves beside this query
            passage = min(self.flag_max_length, self.pair_limit - first_length - len(self.sep))
            limit = min(limit, others - prefix + passage)
        start, stop = self.kept(index, document, others, truncate, replace(truncation, max_length=limit))
        return passage_ids[:prefix] + passage_ids[prefix + start : prefix + stop]

    def collate(self, pairs: Sequence[Features]) -> Batch:
        return prefix_reuse.collate_prefix_lengths(super().collate(pairs), pairs)

    def save(self, out_dir: Path) -> list[str]:
        return save_tokenizer(self.tokenizer, out_dir)


class BgeGemmaFamily(prefix_reuse.PrefixReuseFamily):
    name = "bge-gemma-yes"
    default_max_length = FLAG_MAX_LENGTH  # in FlagEmbedding's terms: the encoder adds twice the prompt's tokens
    export_hints = ExportHints(int8_keep_float=(r"(^|/)score/",))  # the folded one-logit head: tiny, sets the scale
    whole_reference = "transformers GemmaForSequenceClassification (folded Yes head), whole pairs, fp32, cpu"
    packed_batches = True  # padding-free batches and multi-item scoring on the torch backend (families.packed)

    @classmethod
    def recognise(cls, config: dict, model_dir: Path) -> str | None:
        if (name := named_with_answers(config, model_dir, ARCHITECTURE, NAME_PATTERN, yes_token_id)) is None:
            return None
        return f"{ARCHITECTURE} with a single-token {YES!r}, a bge-reranker-v2-gemma by name {name!r}"

    @classmethod
    def describe(cls) -> str:
        return (
            f"{cls.name}: BAAI/bge-reranker-v2-gemma ({ARCHITECTURE} named bge-reranker-v2-gemma, single token 'Yes')"
        )

    def load_encoder(
        self, model_dir: Path, max_length: int | None = None, chat_template: Path | None = None
    ) -> BgeGemmaPairEncoder:
        if chat_template is not None:
            raise UnsupportedModelError(f"{self.name}: the prompt is fixed and token-level; it takes no chat template")
        tokenizer = load_fast_tokenizer(model_dir)
        yes_token_id(tokenizer, str(model_dir))
        default = self.default_max_length + prompt_overhead(tokenizer)
        return BgeGemmaPairEncoder(tokenizer, resolve_max_length(model_dir, max_length, default))

    def load_export_model(self, model_dir: Path, dtype: torch.dtype | None = None) -> torch.nn.Module:
        return load_folded(model_dir, dtype, yes_token_id)  # W[Yes]
