"""mixedbread-ai/mxbai-rerank-base-v2 / -large-v2: a `Qwen2ForCausalLM` scored as logit("1") - logit("0").

The reference is the `mxbai-rerank` package (PyPI 0.1.6, `mxbai_rerank/mxbai_rerank_v2.py`, `MxbaiRerankV2`:
`prepare_inputs`, `forward`, `predict`, and `rank` in `base.py`). For its `max_length` M (8192 by default) and the
model's `max_position_embeddings` P it builds each pair from token ids, every piece tokenized on its own without
special tokens:

    fixed   = prefix + sep + task + suffix       (its "predefined" tokens; M is lowered to P - len(fixed) when over)
    query   = tokens("query: " + query)[: M * 3 // 4]     ("instruction: {instruction}\\nquery: {query}" with one)
    doc     = tokens("document: " + document)[: min(P - len(query) - len(fixed), M)]
    second  = sep + doc, cut from its end so that len(query + second) <= M     (`prepare_for_model`, only_second;
              the first cut of doc never binds: M <= P - len(fixed) leaves it at least M - len(query) tokens)
    ids     = prefix + query + second + sep + task + suffix

    prefix  = "<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n
               <|im_start|>user\\n",  sep = "\\n",  suffix = "<|im_end|>\\n<|im_start|>assistant\\n",
    task    = "You are a search relevance expert ... (0 for not relevant, 1 for relevant).\\nRelevance:"

(cuts on the tokenizer's truncation side, the right for the published tokenizers), pads on the left and takes the
last position's logits: the score is logit("1") - logit("0"), which `predict` and `rank` return as they are
(`predict(normalize=True)` would give sigmoid(score - estimated_max / 2), estimated_max 9 for base and 12 for large).

The pieces are tokenized apart, so the prompt is not a rendered string (Qwen's pre-tokenizer would join a query's
final "?" with the "\\n" after it, for one): the encoder builds it from token ids as mxbai does, and takes no chat
template. rerankrt's `max_length` is the longest sequence the encoder makes, M + len(fixed): the default is mxbai's
M = 8192 plus the fixed tokens (at most the model's positions); `--max-length N` means M = N - len(fixed).

The score is (W["1"] - W["0"]) · h_last, so the LM head is folded away (`yes_no.fold_head`): the Qwen2 body goes
into `Qwen2ForSequenceClassification` (one label, pooling the last non-padding token, the prompt's last under left
or right padding) whose score row is W["1"] - W["0"], computed in fp32. The graph never projects onto the vocabulary.

Prefix reuse (`families.prefix_reuse`): every pair of a request starts with the same prefix + query + sep, so it
runs once and each document continues from its keys and values, in the decoder graph (decoder.onnx) that then
serves every row; model.onnx stays for --no-prefix-reuse.
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

ARCHITECTURE = "Qwen2ForCausalLM"
NAME_PATTERN = r"mxbai-rerank-[a-z]+-v2(?!\d)"  # base, large (and any later size)
YES, NO = "1", "0"
SEP = "\n"
INSTRUCTION, QUERY, DOCUMENT = "instruction: ", "query: ", "document: "
PREFIX = (
    "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n"
)
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"
TASK = (
    "You are a search relevance expert who evaluates how well documents match search queries. For each "
    "query-document pair, carefully analyze the semantic relationship between them, then provide your binary "
    "relevance judgment (0 for not relevant, 1 for relevant).\nRelevance:"
)
MXBAI_MAX_LENGTH = 8192  # MxbaiRerankV2's default max_length
QUERY_SHARE = (3, 4)  # the query keeps at most max_length * 3 // 4 tokens
MIN_MXBAI_MAX_LENGTH = 8


def fixed_length(tokenizer) -> int:
    """Tokens of the fixed prompt (mxbai's "predefined" length): rerankrt's max_length is mxbai's plus these."""
    return sum(len(text_ids(tokenizer, text)) for text in (PREFIX, SEP, TASK, SUFFIX))


def answer_ids(tokenizer, origin: str = "the tokenizer") -> tuple[int, int]:
    """The ids of "1" and "0" (relevant, not relevant); an error when either is not a single token."""
    ids = single_token_id(tokenizer, YES), single_token_id(tokenizer, NO)
    if None in ids:
        raise UnsupportedModelError(f"{origin}: {YES!r} and {NO!r} are not single tokens")
    return ids


class MxbaiPairEncoder(PairEncoder):
    """mxbai-rerank's token-level prompt, cut exactly as `MxbaiRerankV2.prepare_inputs` cuts it (module docstring)."""

    input_names = ("input_ids", "attention_mask")
    padding_side = "left"  # as mxbai-rerank; the graph pools the last real token either way
    prefix_reuse = True

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer = tokenizer
        self.pad_values = {"input_ids": pad_token_id(tokenizer)}
        self.prefix, self.sep = text_ids(tokenizer, PREFIX), text_ids(tokenizer, SEP)
        self.tail = self.sep + text_ids(tokenizer, TASK) + text_ids(tokenizer, SUFFIX)
        fixed = len(self.prefix) + len(self.tail)
        self.mxbai_max_length = max_length - fixed
        if self.mxbai_max_length < MIN_MXBAI_MAX_LENGTH:
            raise UnsupportedModelError(
                f"max_length {max_length} leaves {self.mxbai_max_length} tokens for the query and document: the "
                f"fixed prompt takes {fixed} (mxbai-rerank's max_length is max_length - {fixed})"
            )
        self.max_length = max_length
        self.query_max_length = self.mxbai_max_length * QUERY_SHARE[0] // QUERY_SHARE[1]
        self.cut_left = tokenizer.truncation_side == "left"

    def encode(
        self,
        query: str,
        documents: Sequence[str],
        instruct: str | None = None,
        truncate: bool = True,
        truncation: Truncation = MODEL_LIMITS,
    ) -> list[Features]:
        if not documents:
            return []
        text = QUERY + query
        if instruct:  # mxbai-rerank: `if instruction`, so "" is no instruction
            text = INSTRUCTION + instruct + SEP + text
        query_ids = text_ids(self.tokenizer, text)
        if len(query_ids) > self.query_max_length:
            if not truncate:
                field = "query" if len(text_ids(self.tokenizer, QUERY + query)) > self.query_max_length else "instruct"
                raise InputError(
                    field,
                    f"the query is {len(query_ids)} tokens with its prefix and instruction, over the "
                    f"{self.query_max_length} this model takes (3/4 of mxbai-rerank's max_length "
                    f"{self.mxbai_max_length}); send truncate=true to cut it",
                )
            query_ids = cut_ids(query_ids, self.query_max_length, self.cut_left)
        first = self.prefix + query_ids
        encoded = self.tokenizer(
            [DOCUMENT + doc for doc in documents], add_special_tokens=False, return_offsets_mapping=True
        )
        pairs = []
        for i, doc_ids in enumerate(encoded["input_ids"]):
            doc_ids = list(doc_ids)
            if truncation != MODEL_LIMITS:
                doc_ids = self._limited(i, doc_ids, encoded["offset_mapping"][i], len(query_ids), truncate, truncation)
            if not truncate and len(query_ids) + len(self.sep) + len(doc_ids) > self.mxbai_max_length:
                raise self.too_long(i, len(first) + len(self.sep) + len(doc_ids) + len(self.tail))
            second = cut_ids(self.sep + doc_ids, self.mxbai_max_length - len(query_ids), self.cut_left)
            ids = np.asarray(first + second + self.tail, dtype=np.int64)
            pair = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
            if self.prefix_reuse:  # the same tokens for every document of the request (rows group by their ids)
                split = min(len(first) + len(self.sep), len(ids) - 1)
                pair[prefix_reuse.PREFIX_LENGTH] = np.asarray([split], dtype=np.int64)
            pairs.append(pair)
        return pairs

    def _limited(
        self, index: int, doc_ids: list[int], offsets, query_length: int, truncate: bool, truncation: Truncation
    ) -> list[int]:
        """The document's tokens (after its "document: " prefix) cut to the request's limits and to what mxbai's
        cut leaves, so that cut takes nothing more and the request's side is honoured."""
        document = sum(1 for _, end in offsets if end > len(DOCUMENT))
        prefix = len(doc_ids) - document
        others = len(self.prefix) + query_length + len(self.sep) + prefix + len(self.tail)
        limit = min(truncation.max_length or self.max_length, self.max_length)  # then mxbai's cut takes nothing
        start, stop = self.kept(index, document, others, truncate, replace(truncation, max_length=limit))
        return doc_ids[:prefix] + doc_ids[prefix + start : prefix + stop]

    def collate(self, pairs: Sequence[Features]) -> Batch:
        return prefix_reuse.collate_prefix_lengths(super().collate(pairs), pairs)

    def save(self, out_dir: Path) -> list[str]:
        return save_tokenizer(self.tokenizer, out_dir)


class MxbaiV2Family(prefix_reuse.PrefixReuseFamily):
    name = "mxbai-rerank-v2"
    default_max_length = MXBAI_MAX_LENGTH  # in mxbai's terms: the encoder adds the fixed prompt's tokens
    packed_batches = True  # padding-free batches and multi-item scoring on the torch backend (families.packed)
    export_hints = ExportHints(int8_keep_float=(r"(^|/)score/",))  # the folded one-logit head: tiny, sets the scale
    whole_reference = 'transformers Qwen2ForSequenceClassification (folded "1" - "0" head), whole pairs, fp32, cpu'

    @classmethod
    def recognise(cls, config: dict, model_dir: Path) -> str | None:
        if (name := named_with_answers(config, model_dir, ARCHITECTURE, NAME_PATTERN, answer_ids)) is None:
            return None
        return f"{ARCHITECTURE} with single-token {YES!r}/{NO!r}, an mxbai-rerank-v2 by name {name!r}"

    @classmethod
    def describe(cls) -> str:
        return f"{cls.name}: mixedbread-ai/mxbai-rerank-base-v2 and -large-v2 ({ARCHITECTURE} named mxbai-rerank-*v2)"

    def load_encoder(
        self, model_dir: Path, max_length: int | None = None, chat_template: Path | None = None
    ) -> MxbaiPairEncoder:
        if chat_template is not None:
            raise UnsupportedModelError(f"{self.name}: the prompt is fixed and token-level; it takes no chat template")
        tokenizer = load_fast_tokenizer(model_dir)
        answer_ids(tokenizer, str(model_dir))
        default = self.default_max_length + fixed_length(tokenizer)  # capped by the positions, as mxbai caps it
        return MxbaiPairEncoder(tokenizer, resolve_max_length(model_dir, max_length, default))

    def label_tokens(self, encoder: PairEncoder) -> tuple[int, int]:
        """The graph's logit is logit("1") - logit("0"): a softmax over these two tokens is its sigmoid."""
        return answer_ids(encoder.tokenizer)

    def load_export_model(self, model_dir: Path, dtype: torch.dtype | None = None) -> torch.nn.Module:
        return load_folded(model_dir, dtype, answer_ids)  # W["1"] - W["0"]
