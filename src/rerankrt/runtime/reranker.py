"""A loaded model ready to score: family encoder + backend."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rerankrt.families import Family, Features, PairEncoder
from rerankrt.runtime.backend import Backend
from rerankrt.runtime.batching import default_padding_ratio, plan_batches


@dataclass
class Reranker:
    family: Family
    encoder: PairEncoder
    backend: Backend
    model_name: str
    max_batch_size: int = 32
    max_batch_tokens: int = 16384
    max_padding_ratio: float | None = None  # None: the device's default, as the server's scheduler uses

    def score(self, query: str, documents: Sequence[str], instruct: str | None = None) -> np.ndarray:
        """Relevance logits, one per document, in the documents' order."""
        return self.score_encoded(self.encoder.encode(query, documents, instruct))

    def score_encoded(self, pairs: Sequence[Features]) -> np.ndarray:
        logits = np.empty(len(pairs), dtype=np.float32)
        lengths = [len(pair["input_ids"]) for pair in pairs]
        padding = self.max_padding_ratio
        padding = default_padding_ratio(self.backend.device) if padding is None else padding
        for indices in plan_batches(lengths, self.max_batch_size, self.max_batch_tokens, padding):
            logits[indices] = self.backend.run(self.encoder.collate([pairs[i] for i in indices]))
        return logits

    def describe(self) -> dict:
        return {
            "family": self.family.name,
            "backend": self.backend.name,
            "device": self.backend.device,
            "max_length": self.encoder.max_length,
        }
