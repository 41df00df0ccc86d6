"""FlagEmbedding's scoring of bge-reranker-v2-gemma, rewritten for tests from its code (not imported).

Source: FlagOpen/FlagEmbedding, FlagEmbedding/inference/reranker/decoder_only/base.py (`BaseLLMReranker`,
alias `FlagLLMReranker`, `compute_score_single_gpu`) and FlagEmbedding/abc/inference/AbsReranker.py
(`get_detailed_inputs`: the "A: " / "B: " prefixes). It uses the same Hugging Face calls FlagEmbedding makes
(tokenizer truncation, `prepare_for_model` with `only_second`, `tokenizer.pad` to a multiple of 8 on the
tokenizer's padding side), sorts pairs by length and scores them in padded batches with the full causal LM,
taking the `Yes` logit at the last real token (`last_logit_pool`). Nothing here is shared with
`rerankrt.families.bge_gemma`, so agreement between the two is evidence.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

DEFAULT_PROMPT = (
    "Given a query A and a passage B, determine whether the passage contains an answer to the query by "
    "providing a prediction of either 'Yes' or 'No'."
)


def flag_inputs(
    tokenizer,
    pairs: Sequence[tuple[str, str]],
    max_length: int = 512,
    query_max_length: int | None = None,
    always_bos: bool = False,
) -> list[list[int]]:
    """Each (query, passage) as FlagLLMReranker's unpadded input_ids (`always_bos`: LayerWiseLLMReranker's, which
    puts bos first even where it is the pad token)."""
    if query_max_length is None:
        query_max_length = max_length * 3 // 4
    queries = ["A: " + q for q, _ in pairs]  # query_instruction_for_rerank "A: ", format "{}{}"
    passages = ["B: " + p for _, p in pairs]
    q_inputs = tokenizer(queries, add_special_tokens=False, max_length=query_max_length, truncation=True)
    p_inputs = tokenizer(passages, add_special_tokens=False, max_length=max_length, truncation=True)
    prompt_ids = tokenizer(DEFAULT_PROMPT, add_special_tokens=False)["input_ids"]
    sep_ids = tokenizer("\n", add_special_tokens=False)["input_ids"]
    encode_max_length = max_length + len(sep_ids) + len(prompt_ids)
    use_bos = always_bos or (tokenizer.bos_token_id is not None and tokenizer.bos_token_id != tokenizer.pad_token_id)
    out = []
    for q_ids, p_ids in zip(q_inputs["input_ids"], p_inputs["input_ids"], strict=True):
        item = tokenizer.prepare_for_model(
            ([tokenizer.bos_token_id] if use_bos else []) + q_ids,
            sep_ids + p_ids,
            truncation="only_second",
            max_length=encode_max_length,
            padding=False,
            return_attention_mask=False,
            return_token_type_ids=False,
            add_special_tokens=False,
        )
        out.append(list(item["input_ids"]) + sep_ids + prompt_ids)
    return out


def last_logit_pool(logits: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """FlagEmbedding's pooling: the last position when every row ends with a real token, else each row's last."""
    if int(attention_mask[:, -1].sum()) == attention_mask.shape[0]:
        return logits[:, -1, :]
    last = attention_mask.sum(dim=1) - 1
    return torch.stack([logits[i, last[i], :] for i in range(logits.shape[0])])


class FlagGemmaReference:
    """The model card's model (`AutoModelForCausalLM`, fp32) scored as FlagLLMReranker scores it."""

    def __init__(self, model_dir: Path):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.yes_loc = self.tokenizer("Yes", add_special_tokens=False)["input_ids"][0]

    def inputs(self, query: str, passages: Sequence[str], max_length: int = 512) -> list[list[int]]:
        return flag_inputs(self.tokenizer, [(query, p) for p in passages], max_length)

    def logits(
        self, pairs: Sequence[tuple[str, str]], max_length: int = 512, batch_size: int = 4, normalize: bool = False
    ) -> np.ndarray:
        """`compute_score(pairs, max_length=, batch_size=)`: longest pairs first, padded batches, original order."""
        ids = flag_inputs(self.tokenizer, pairs, max_length)
        order = np.argsort([-len(row) for row in ids], kind="stable")
        scores = np.zeros(len(ids), dtype=np.float64)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            features = [{"input_ids": ids[r], "attention_mask": [1] * len(ids[r])} for r in rows]
            batch = self.tokenizer.pad(features, padding=True, pad_to_multiple_of=8, return_tensors="pt")
            with torch.no_grad():
                logits = self.model(**batch).logits
            pooled = last_logit_pool(logits, batch["attention_mask"])[:, self.yes_loc]
            scores[rows] = pooled.float().numpy()
        if normalize:
            scores = 1 / (1 + np.exp(-scores))
        return scores

    def score(self, query: str, passages: Sequence[str], max_length: int = 512, batch_size: int = 4) -> np.ndarray:
        return self.logits([(query, p) for p in passages], max_length, batch_size)
