"""Reference scoring straight from the model card (transformers, no rerankrt code), and random inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from tests.tiny_models import CORPUS

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
