"""Export-time proof that a compiled graph computes what the torch scorer computes.

Pairs are generated from the tokenizer's own vocabulary with mixed lengths
(some past `max_length`, so truncation is exercised), encoded by the family's
encoder, and scored in padded batches in arrival order (lots of padding) by
both the torch scorer and the backend under test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from rerankrt.families import Batch, PairEncoder

FP32_TOLERANCE = 1e-4  # max |Δlogit| allowed between an fp32 graph and the torch scorer
MAX_GENERATED_TOKENS = 640  # documents run up to 1.25x max_length, but no longer: the check runs on CPU


@dataclass
class ParityReport:
    passed: bool
    reference: str
    candidate: str
    tolerance: float
    max_abs_diff: float
    mean_abs_diff: float
    min_spearman: float
    top1_agreement: float
    pairs: int
    queries: int
    batch_size: int
    seq_len_min: int
    seq_len_max: int
    seed: int

    def to_dict(self) -> dict:
        return asdict(self)


def random_text(tokenizer, rng: np.random.Generator, n_tokens: int) -> str:
    special = set(tokenizer.all_special_ids)
    ids = [int(i) for i in rng.integers(0, len(tokenizer), size=n_tokens * 2) if int(i) not in special][:n_tokens]
    return tokenizer.decode(ids, skip_special_tokens=True)


def generate_queries(encoder: PairEncoder, seed: int, queries: int, docs_per_query: int) -> list[tuple[str, list[str]]]:
    """Queries of 2-24 tokens with documents from 1 token to 1.25x max_length (at most MAX_GENERATED_TOKENS)."""
    rng = np.random.default_rng(seed)
    tokenizer = encoder.tokenizer
    longest = min(int(encoder.max_length * 1.25), MAX_GENERATED_TOKENS)
    out = []
    for _ in range(queries):
        query = random_text(tokenizer, rng, int(rng.integers(2, 25)))
        lengths = rng.integers(1, longest, size=docs_per_query)
        out.append((query, [random_text(tokenizer, rng, int(n)) for n in lengths]))
    return out


def check_parity(
    encoder: PairEncoder,
    reference: torch.nn.Module,
    candidate: Callable[[Batch], np.ndarray],
    candidate_name: str,
    tolerance: float = FP32_TOLERANCE,
    seed: int = 0,
    queries: int = 4,
    docs_per_query: int = 6,
    batch_size: int = 8,
) -> ParityReport:
    """Score generated pairs with both; passed when every |Δlogit| <= tolerance."""
    samples = generate_queries(encoder, seed, queries, docs_per_query)
    pairs = [pair for query, docs in samples for pair in encoder.encode(query, docs)]
    ref_logits, cand_logits = [], []
    for start in range(0, len(pairs), batch_size):
        batch = encoder.collate(pairs[start : start + batch_size])
        with torch.inference_mode():
            ref_logits.append(reference(**{k: torch.from_numpy(v) for k, v in batch.items()}).float().numpy())
        cand_logits.append(np.asarray(candidate(batch), dtype=np.float32))
    ref = np.concatenate(ref_logits)
    cand = np.concatenate(cand_logits)
    diff = np.abs(ref - cand)
    spearman, top1 = [], []
    for q in range(queries):
        r, c = ref[q * docs_per_query : (q + 1) * docs_per_query], cand[q * docs_per_query : (q + 1) * docs_per_query]
        spearman.append(_spearman(r, c))
        top1.append(float(np.argmax(r) == np.argmax(c)))
    lengths = [len(p["input_ids"]) for p in pairs]
    return ParityReport(
        passed=bool(diff.max() <= tolerance),
        reference="torch scorer, fp32, cpu",
        candidate=candidate_name,
        tolerance=tolerance,
        max_abs_diff=float(diff.max()),
        mean_abs_diff=float(diff.mean()),
        min_spearman=float(min(spearman)),
        top1_agreement=float(np.mean(top1)),
        pairs=len(pairs),
        queries=queries,
        batch_size=batch_size,
        seq_len_min=min(lengths),
        seq_len_max=max(lengths),
        seed=seed,
    )


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    if ra.std() == 0 or rb.std() == 0:
        return 1.0
    return float(np.corrcoef(ra, rb)[0, 1])
