"""Reference scoring straight from the model card (transformers, no rerankrt code), and random inputs."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from rerankrt.testing.tiny_models import CORPUS

WORDS = sorted({w for line in CORPUS for w in line.split()})


def random_text(rng: np.random.Generator, min_words: int, max_words: int) -> str:
    return " ".join(rng.choice(WORDS, size=int(rng.integers(min_words, max_words + 1))))


def random_documents(rng: np.random.Generator, n: int, max_words: int = 60) -> list[str]:
    """Documents of very different lengths, so batches carry real padding."""
    return [random_text(rng, 1, max_words) for _ in range(n)]


def cross_encoder_logits(model_dir: Path, query: str, documents: list[str], max_length: int = 512) -> np.ndarray:
    """The bge-reranker model card's code: tokenizer pairs, padding, one forward, logits.view(-1)."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    pairs = [[query, doc] for doc in documents]
    with torch.no_grad():
        inputs = tokenizer(pairs, padding=True, truncation="only_second", return_tensors="pt", max_length=max_length)
        return model(**inputs, return_dict=True).logits.view(-1).float().numpy()


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x.astype(np.float64)))


# --- Qwen3-Reranker, as its model card scores (full LM logits, log_softmax over [no, yes]) ---

QWEN3_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
QWEN3_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
QWEN3_DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"


def qwen3_card_inputs(model_dir: Path, query: str, documents: list[str], instruction=None, max_length: int = 8192):
    """The card's `process_inputs`: prefix + body (truncated longest_first) + suffix, left padding."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    prefix_tokens = tokenizer.encode(QWEN3_PREFIX, add_special_tokens=False)
    suffix_tokens = tokenizer.encode(QWEN3_SUFFIX, add_special_tokens=False)
    instruction = QWEN3_DEFAULT_INSTRUCTION if instruction is None else instruction
    bodies = [f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}" for doc in documents]
    inputs = tokenizer(
        bodies,
        padding=False,
        truncation="longest_first",
        return_attention_mask=False,
        max_length=max_length - len(prefix_tokens) - len(suffix_tokens),
    )
    for i, ids in enumerate(inputs["input_ids"]):
        inputs["input_ids"][i] = prefix_tokens + ids + suffix_tokens
    with warnings.catch_warnings():  # the card passes max_length to pad(), which only warns about it
        warnings.simplefilter("ignore", UserWarning)
        return tokenizer.pad(inputs, padding=True, return_tensors="pt", max_length=max_length)


def qwen3_card_scores(model_dir: Path, query: str, documents: list[str], instruction=None, max_length: int = 8192):
    """(P(yes) as the card computes it, logit(yes) - logit(no)) at the last position."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    yes, no = tokenizer.convert_tokens_to_ids("yes"), tokenizer.convert_tokens_to_ids("no")
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    inputs = qwen3_card_inputs(model_dir, query, documents, instruction, max_length)
    with torch.no_grad():
        last = model(**inputs).logits[:, -1, :]
        pair = torch.stack([last[:, no], last[:, yes]], dim=1)
        prob_yes = torch.nn.functional.log_softmax(pair, dim=1)[:, 1].exp()
    return prob_yes.numpy(), (last[:, yes] - last[:, no]).numpy()


# SGLang's documented Qwen3-Reranker request (its Chinese example)
QWEN3_CHINESE_EXAMPLE = {
    "model": "Qwen3-Reranker-0.6B",
    "query": "法国首都是哪里？",
    "documents": ["法国的首都是巴黎。", "德国的首都是柏林。", "香蕉是黄色的水果。"],
    "instruct": "Given a web search query, retrieve relevant passages that answer the query.",
    "top_n": 2,
    "return_documents": True,
}


def unpadded_float64_logits(model_dir: Path, input_ids, attention_mask, pair_logit) -> np.ndarray:
    """float64 logits of each row's unpadded tokens (the mask's ones), `pair_logit(ids, weights, config)` run on the
    folder's model.safetensors cast to float64 (the plain-torch references of the ported families)."""
    from safetensors.torch import load_file

    config = json.loads((Path(model_dir) / "config.json").read_text())
    weights = {k: v.double() for k, v in load_file(str(Path(model_dir) / "model.safetensors")).items()}
    with torch.no_grad():
        rows = [
            pair_logit(torch.from_numpy(np.asarray(ids)[np.asarray(mask).astype(bool)]), weights, config)
            for ids, mask in zip(input_ids, attention_mask, strict=True)
        ]
    return np.asarray(rows, dtype=np.float64)
