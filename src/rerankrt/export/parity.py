"""Export-time proof that a compiled graph computes what the torch scorer computes.

Pairs are generated from the tokenizer's own vocabulary with mixed lengths
(some past `max_length`, so truncation is exercised), encoded by the family's
encoder, and scored in padded batches in arrival order (lots of padding) by
both the torch scorer and the backend under test.

An fp32 graph must match within FP32_TOLERANCE in logits (`check_parity`). A
reduced-precision variant cannot, so `check_fidelity` judges it by what users
see: scores and the order of documents per query, against FIDELITY_THRESHOLDS.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial

import numpy as np
import torch

from rerankrt.families import Batch, PairEncoder
from rerankrt.families.base import ParityCheck, random_text, run_torch
from rerankrt.runtime.fidelity import (
    FIDELITY_THRESHOLDS,
    FP32_TOLERANCE,
    FidelityThresholds,
    agreement,
    rank_agreement,
    spearman,
)
from rerankrt.runtime.self_check import GoldenSet

MAX_GENERATED_TOKENS = 640  # documents run up to 1.25x max_length, but no longer: the check runs on CPU
# the golden set the artifact carries for the serving-time self-check: 24 pairs, documents of 1-128 tokens, so
# that it costs seconds at start on a 2-core CPU for a base-size model
GOLDEN_SEED, GOLDEN_QUERIES, GOLDEN_DOCUMENTS, GOLDEN_MAX_TOKENS, GOLDEN_BATCH = 2, 4, 6, 128, 8


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


def generate_queries(
    encoder: PairEncoder, seed: int, queries: int, docs_per_query: int, most_tokens: int = MAX_GENERATED_TOKENS
) -> list[tuple[str, list[str]]]:
    """Queries of 2-24 tokens with documents from 1 token to 1.25x max_length (at most `most_tokens`)."""
    rng = np.random.default_rng(seed)
    tokenizer = encoder.tokenizer
    longest = min(int(encoder.max_length * 1.25), most_tokens)
    out = []
    for _ in range(queries):
        query = random_text(tokenizer, rng, int(rng.integers(2, 25)))
        lengths = rng.integers(1, longest, size=docs_per_query)
        out.append((query, [random_text(tokenizer, rng, int(n)) for n in lengths]))
    return out


def check_parity(
    encoder: PairEncoder,
    check: ParityCheck,
    candidate: Callable[[Batch], np.ndarray],
    candidate_name: str,
    tolerance: float = FP32_TOLERANCE,
    seed: int = 0,
    queries: int = 4,
    docs_per_query: int = 6,
) -> ParityReport:
    """Score the check's samples (or generated queries) with its reference and the candidate; passed when every
    |Δlogit| <= tolerance."""
    samples = check.samples or generate_queries(encoder, seed, queries, docs_per_query)
    ref, cand, lengths = _score_both(encoder, samples, check.reference, candidate, check.batch_size)
    return parity_report(
        ref, cand, [len(docs) for _, docs in samples], lengths, check.reference_name, candidate_name, tolerance,
        seed, check.batch_size,
    )  # fmt: skip


def remembered(reference: Callable[[Batch], np.ndarray]) -> Callable[[Batch], np.ndarray]:
    """`reference` computing each distinct batch once: the export checks every set of graphs a serving may load
    against the same reference batches (a decoder's whole-prompt and prefix-reuse graphs), and on a 0.6B model on
    2 cores one reference pass over the check's pairs takes minutes."""
    seen: dict[bytes, np.ndarray] = {}

    def run(batch: Batch) -> np.ndarray:
        if not all(isinstance(value, np.ndarray) for value in batch.values()):
            return reference(batch)  # a batch carrying other objects (media) is computed each time
        digest = hashlib.sha256()
        for name in sorted(batch):
            value = np.ascontiguousarray(batch[name])
            digest.update(f"{name}:{value.dtype}:{value.shape}".encode())
            digest.update(value.tobytes())
        key = digest.digest()
        if key not in seen:
            seen[key] = np.asarray(reference(batch))
        return seen[key]

    return run


def golden_set(encoder: PairEncoder, check: ParityCheck) -> GoldenSet:
    """Generated queries with documents of mixed lengths and the check's reference logits for them: what a plan must
    reproduce on the machine that serves it (`runtime.self_check`)."""
    samples = generate_queries(encoder, GOLDEN_SEED, GOLDEN_QUERIES, GOLDEN_DOCUMENTS, GOLDEN_MAX_TOKENS)
    pairs = [pair for query, docs in samples for pair in encoder.encode(query, docs)]
    logits = np.concatenate(
        [np.asarray(check.reference(encoder.collate(pairs[i : i + GOLDEN_BATCH])), dtype=np.float32).reshape(-1)
         for i in range(0, len(pairs), GOLDEN_BATCH)]
    )  # fmt: skip
    groups = np.split(logits, len(samples))
    return GoldenSet(
        reference=check.reference_name,
        seed=GOLDEN_SEED,
        batch_size=GOLDEN_BATCH,
        groups=[
            {"query": query, "documents": docs, "logits": [float(x) for x in group]}
            for (query, docs), group in zip(samples, groups, strict=True)
        ],
    )


def parity_report(
    ref: np.ndarray,
    cand: np.ndarray,
    groups: list[int],
    lengths: list[int],
    reference: str,
    candidate: str,
    tolerance: float,
    seed: int,
    batch_size: int,
) -> ParityReport:
    """The report for reference and candidate logits of consecutive queries with `groups[i]` documents each."""
    diff = np.abs(ref - cand)
    spearmans, top1 = [], []
    for r, c in zip(np.split(ref, np.cumsum(groups)[:-1]), np.split(cand, np.cumsum(groups)[:-1]), strict=True):
        spearmans.append(spearman(r, c))
        top1.append(float(np.argmax(r) == np.argmax(c)))
    return ParityReport(
        passed=bool(diff.max() <= tolerance),
        reference=reference,
        candidate=candidate,
        tolerance=tolerance,
        max_abs_diff=float(diff.max()),
        mean_abs_diff=float(diff.mean()),
        min_spearman=float(min(spearmans)),
        top1_agreement=float(np.mean(top1)),
        pairs=len(ref),
        queries=len(groups),
        batch_size=batch_size,
        seq_len_min=min(lengths),
        seq_len_max=max(lengths),
        seed=seed,
    )


@dataclass
class FidelityReport:
    passed: bool
    accepted: bool  # exported although it failed (--accept-fidelity-loss)
    precision: str
    reference: str
    candidate: str
    max_score_diff: float
    mean_score_diff: float
    max_logit_diff: float
    top1_agreement: float
    top3_agreement: float
    swap_rate: float
    mean_spearman: float  # reported, not gated: ties make it noisy
    min_spearman: float
    pairs: int
    queries: int
    docs_per_query: int
    seed: int
    thresholds: dict = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    method: str = ""  # how the variant was made (int8: a recipe, or "search: ..."; bf16: the CPU paths checked)
    paths_checked: list[dict] = field(default_factory=list)  # bf16: each CPU path that may serve it, its outcome
    not_checked: str = ""  # what the gate left to the serving-time self-check on this machine, and why
    search: dict = field(default_factory=dict)  # int8 search: the recipe, what was kept fp32 and why (int8_search)

    def to_dict(self) -> dict:
        return asdict(self)


def check_fidelity(
    encoder: PairEncoder,
    reference: torch.nn.Module | Callable[[Batch], np.ndarray],
    candidate: Callable[[Batch], np.ndarray],
    candidate_name: str,
    precision: str,
    thresholds: FidelityThresholds = FIDELITY_THRESHOLDS,
    seed: int = 1,
    queries: int = 8,
    docs_per_query: int = 8,
    batch_size: int = 8,
    samples: list[tuple[str, list[str]]] | None = None,
) -> FidelityReport:
    """Score generated queries (or `samples`: (query, documents) with `docs_per_query` documents each) with the fp32
    torch scorer (a module, or a runner of it such as `remembered`'s) and the variant; passed when every threshold
    holds."""
    if samples is None:
        samples = generate_queries(encoder, seed, queries, docs_per_query)
    queries = len(samples)
    if isinstance(reference, torch.nn.Module):
        reference = partial(run_torch, reference)
    ref, cand, _ = _score_both(encoder, samples, reference, candidate, batch_size)
    agreed = agreement(ref, cand, docs_per_query, thresholds.tie)
    spearmans, _, _ = rank_agreement(ref, cand, docs_per_query)
    report = FidelityReport(
        passed=False,
        accepted=False,
        precision=precision,
        reference="torch scorer, fp32, cpu",
        candidate=candidate_name,
        max_score_diff=agreed.max_score_diff,
        mean_score_diff=agreed.mean_score_diff,
        max_logit_diff=agreed.max_logit_diff,
        top1_agreement=agreed.top1_agreement,
        top3_agreement=agreed.top3_agreement,
        swap_rate=agreed.swap_rate,
        mean_spearman=float(np.mean(spearmans)),
        min_spearman=float(min(spearmans)),
        pairs=len(ref),
        queries=queries,
        docs_per_query=docs_per_query,
        seed=seed,
        thresholds=asdict(thresholds),
    )
    report.failures = thresholds.failures(report)
    report.passed = not report.failures
    return report


def _score_both(encoder, samples, reference, candidate, batch_size):
    """Logits of the reference and the candidate for the samples' pairs (batches in arrival order), and lengths."""
    pairs = [pair for query, docs in samples for pair in encoder.encode(query, docs)]
    ref_logits, cand_logits = [], []
    for start in range(0, len(pairs), batch_size):
        batch = encoder.collate(pairs[start : start + batch_size])
        ref_logits.append(np.asarray(reference(batch), dtype=np.float32))
        cand_logits.append(np.asarray(candidate(batch), dtype=np.float32))
    return np.concatenate(ref_logits), np.concatenate(cand_logits), [len(p["input_ids"]) for p in pairs]
