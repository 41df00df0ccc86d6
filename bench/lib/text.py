"""Queries and documents of given lengths, from the tiny test corpus's words (random weights make the words'
meaning irrelevant; their token counts are what the benchmarks control), and request bodies made of them."""

from __future__ import annotations

import numpy as np

from rerankrt.testing.reference import WORDS
from rerankrt.testing.tiny_models import build_xlmr_tokenizer


def text_of_tokens(tokenizer, rng: np.random.Generator, tokens: int) -> str:
    """Random words cut to exactly `tokens` tokens of `tokenizer` (without special tokens)."""
    text = ""
    while len(tokenizer.encode(text, add_special_tokens=False)) < tokens:
        text += " " + " ".join(rng.choice(WORDS, size=4))
    ids = tokenizer.encode(text, add_special_tokens=False)[:tokens]
    return tokenizer.decode(ids).strip()


def documents_of_about(tokenizer, count: int, tokens: int, seed: int = 0) -> list[str]:
    """`count` documents of about `tokens` tokens each (0.8-1.2x, uniformly; whole words)."""
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(count):
        doc = ""
        target = int(tokens * rng.uniform(0.8, 1.2))
        while len(tokenizer.encode(doc)) < target:
            doc += " " + " ".join(rng.choice(WORDS, size=8))
        docs.append(doc.strip())
    return docs


def requests_of_words(count: int, docs: int, seed: int) -> list[dict]:
    """/v1/rerank bodies: a query of 3-11 words and `docs` documents of 5-299 words each (mixed lengths, as real
    retrieval results are)."""
    rng = np.random.default_rng(seed)
    return [
        {
            "query": " ".join(rng.choice(WORDS, size=int(rng.integers(3, 12)))),
            "documents": [" ".join(rng.choice(WORDS, size=int(rng.integers(5, 300)))) for _ in range(docs)],
            "return_documents": False,
        }
        for _ in range(count)
    ]


def requests_of_tokens(count: int, docs: int, tokens: tuple[int, int], seed: int) -> list[dict]:
    """/v1/rerank bodies: a query of 3-11 words and `docs` documents of `tokens` (low, high) XLM-R tokens each,
    uniformly."""
    tokenizer = build_xlmr_tokenizer()
    rng = np.random.default_rng(seed)
    return [
        {
            "query": " ".join(rng.choice(WORDS, size=int(rng.integers(3, 12)))),
            "documents": [
                text_of_tokens(tokenizer, rng, int(rng.integers(tokens[0], tokens[1] + 1))) for _ in range(docs)
            ],
            "return_documents": False,
        }
        for _ in range(count)
    ]
