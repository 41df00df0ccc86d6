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

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from rerankrt.families import Batch, PairEncoder
from rerankrt.families.base import ParityCheck, random_text, run_torch
from rerankrt.runtime.engine import sigmoid

FP32_TOLERANCE = 1e-4  # max |Δlogit| allowed between an fp32 graph and the torch scorer
MAX_GENERATED_TOKENS = 640  # documents run up to 1.25x max_length, but no longer: the check runs on CPU


@dataclass(frozen=True)
class FidelityThresholds:
    """What a reduced-precision variant must keep, against the fp32 torch scorer (README: "Precision").

    Scores are sigmoid(logit) in [0, 1]. Two documents whose fp32 scores are within `tie` of each other are a tie:
    ordering them either way is not a disagreement (random-weight models score everything alike).
    """

    tie: float = 0.01
    max_score_diff: float = 0.1  # |score(variant) - score(fp32)|, every pair
    min_top1_agreement: float = 0.9  # share of queries whose best document is fp32's best (or tied with it)
    min_top3_agreement: float = 0.9  # share of queries whose three best are fp32's three best (or tied with them)
    max_swap_rate: float = 0.05  # share of non-tied document pairs the variant orders the other way

    def failures(self, report: FidelityReport) -> list[str]:
        checks = [
            (report.max_score_diff <= self.max_score_diff, f"max |Δscore| {report.max_score_diff:.3g} > "
             f"{self.max_score_diff}"),
            (report.top1_agreement >= self.min_top1_agreement, f"top-1 agreement {report.top1_agreement:.2f} < "
             f"{self.min_top1_agreement}"),
            (report.top3_agreement >= self.min_top3_agreement, f"top-3 agreement {report.top3_agreement:.2f} < "
             f"{self.min_top3_agreement}"),
            (report.swap_rate <= self.max_swap_rate, f"swapped pairs {report.swap_rate:.3f} > {self.max_swap_rate}"),
        ]  # fmt: skip
        return [message for ok, message in checks if not ok]


FIDELITY_THRESHOLDS = FidelityThresholds()


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
    spearman, top1 = [], []
    for r, c in zip(np.split(ref, np.cumsum(groups)[:-1]), np.split(cand, np.cumsum(groups)[:-1]), strict=True):
        spearman.append(_spearman(r, c))
        top1.append(float(np.argmax(r) == np.argmax(c)))
    return ParityReport(
        passed=bool(diff.max() <= tolerance),
        reference=reference,
        candidate=candidate,
        tolerance=tolerance,
        max_abs_diff=float(diff.max()),
        mean_abs_diff=float(diff.mean()),
        min_spearman=float(min(spearman)),
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
    method: str = ""  # how the variant was made (int8: dynamic | blockwise | mixed; bf16: the CPU paths checked)
    paths_checked: list[dict] = field(default_factory=list)  # bf16: each CPU path that may serve it, its outcome

    def to_dict(self) -> dict:
        return asdict(self)


def check_fidelity(
    encoder: PairEncoder,
    reference: torch.nn.Module,
    candidate: Callable[[Batch], np.ndarray],
    candidate_name: str,
    precision: str,
    thresholds: FidelityThresholds = FIDELITY_THRESHOLDS,
    seed: int = 1,
    queries: int = 8,
    docs_per_query: int = 8,
    batch_size: int = 8,
) -> FidelityReport:
    """Score generated queries with the fp32 torch scorer and the variant; passed when every threshold holds."""
    samples = generate_queries(encoder, seed, queries, docs_per_query)
    ref, cand, _ = _score_both(encoder, samples, lambda batch: run_torch(reference, batch), candidate, batch_size)
    ref_scores, cand_scores = sigmoid(ref), sigmoid(cand)
    score_diff = np.abs(ref_scores - cand_scores)
    spearman, _, _ = _rank_agreement(ref, cand, docs_per_query)
    top1, top3, swaps = _tie_aware_agreement(ref_scores, cand_scores, docs_per_query, thresholds.tie)
    report = FidelityReport(
        passed=False,
        accepted=False,
        precision=precision,
        reference="torch scorer, fp32, cpu",
        candidate=candidate_name,
        max_score_diff=float(score_diff.max()),
        mean_score_diff=float(score_diff.mean()),
        max_logit_diff=float(np.abs(ref - cand).max()),
        top1_agreement=top1,
        top3_agreement=top3,
        swap_rate=swaps,
        mean_spearman=float(np.mean(spearman)),
        min_spearman=float(min(spearman)),
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


def _rank_agreement(ref: np.ndarray, cand: np.ndarray, group: int) -> tuple[list[float], list[float], list[float]]:
    """Per query (consecutive groups of documents): Spearman, same best document, same three best documents."""
    spearman, top1, top3 = [], [], []
    for start in range(0, len(ref), group):
        r, c = ref[start : start + group], cand[start : start + group]
        spearman.append(_spearman(r, c))
        top1.append(float(np.argmax(r) == np.argmax(c)))
        top3.append(float(set(np.argsort(-r)[:3]) == set(np.argsort(-c)[:3])))
    return spearman, top1, top3


def _tie_aware_agreement(ref: np.ndarray, cand: np.ndarray, group: int, tie: float) -> tuple[float, float, float]:
    """Top-1 and top-3 agreement and the swapped-pair rate, where fp32 scores within `tie` count as equal."""
    top1, top3, swapped, ordered = [], [], 0, 0
    for start in range(0, len(ref), group):
        r, c = ref[start : start + group], cand[start : start + group]
        ranked = np.sort(r)[::-1]
        top1.append(float(r[np.argmax(c)] >= ranked[0] - tie))
        k = min(3, len(r))
        top3.append(float(np.all(r[np.argsort(-c)[:k]] >= ranked[k - 1] - tie)))
        i, j = np.triu_indices(len(r), 1)
        distinct = np.abs(r[i] - r[j]) > tie
        ordered += int(distinct.sum())
        swapped += int((np.sign(r[i] - r[j]) != np.sign(c[i] - c[j]))[distinct].sum())
    return float(np.mean(top1)), float(np.mean(top3)), swapped / ordered if ordered else 0.0


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    if ra.std() == 0 or rb.std() == 0:
        return 1.0
    return float(np.corrcoef(ra, rb)[0, 1])
