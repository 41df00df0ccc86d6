"""The rule a graph's logits are judged by against fp32 reference logits: the export's gate and the serving-time
self-check (`runtime.self_check`) apply the same code, so a plan is served only where it passes what the export
passed.

- fp32: every |Δlogit| within a tolerance (FP32_TOLERANCE unless the export was given another).
- reduced precision (int8, bf16, fp16): judged by what users see, scores and the order of documents per query,
  against `FidelityThresholds`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FP32_TOLERANCE = 1e-4  # max |Δlogit| allowed between an fp32 graph and the torch scorer


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """The score a client sees: sigmoid(logit), float64, stable for any logit."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(logits, dtype=np.float64)))


@dataclass(frozen=True)
class Agreement:
    """How a candidate's logits agree with the reference's, over consecutive queries of `group` documents."""

    max_logit_diff: float
    mean_logit_diff: float
    max_score_diff: float
    mean_score_diff: float
    top1_agreement: float  # share of queries whose best document is the reference's best (or tied with it)
    top3_agreement: float  # share of queries whose three best are the reference's three best (or tied with them)
    swap_rate: float  # share of non-tied document pairs ordered the other way


@dataclass(frozen=True)
class FidelityThresholds:
    """What a reduced-precision variant must keep, against the fp32 reference (docs/precision.md).

    Scores are sigmoid(logit) in [0, 1]. Two documents whose fp32 scores are within `tie` of each other are a tie:
    ordering them either way is not a disagreement (random-weight models score everything alike).
    """

    tie: float = 0.01
    max_score_diff: float = 0.1  # |score(variant) - score(fp32)|, every pair
    min_top1_agreement: float = 0.9
    min_top3_agreement: float = 0.9
    max_swap_rate: float = 0.05

    def failures(self, result) -> list[str]:
        """What `result` (an `Agreement` or a report with its fields) misses; empty when it passes."""
        checks = [
            (result.max_score_diff <= self.max_score_diff, f"max |Δscore| {result.max_score_diff:.3g} > "
             f"{self.max_score_diff}"),
            (result.top1_agreement >= self.min_top1_agreement, f"top-1 agreement {result.top1_agreement:.2f} < "
             f"{self.min_top1_agreement}"),
            (result.top3_agreement >= self.min_top3_agreement, f"top-3 agreement {result.top3_agreement:.2f} < "
             f"{self.min_top3_agreement}"),
            (result.swap_rate <= self.max_swap_rate, f"swapped pairs {result.swap_rate:.3f} > {self.max_swap_rate}"),
        ]  # fmt: skip
        return [message for ok, message in checks if not ok]


FIDELITY_THRESHOLDS = FidelityThresholds()


def agreement(reference: np.ndarray, candidate: np.ndarray, group: int, tie: float = FIDELITY_THRESHOLDS.tie):
    """The `Agreement` of candidate with reference logits, queries being consecutive groups of `group`."""
    reference, candidate = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    ref_scores, cand_scores = sigmoid(reference), sigmoid(candidate)
    logit_diff, score_diff = np.abs(reference - candidate), np.abs(ref_scores - cand_scores)
    top1, top3, swaps = tie_aware_agreement(ref_scores, cand_scores, group, tie)
    return Agreement(
        max_logit_diff=float(logit_diff.max()),
        mean_logit_diff=float(logit_diff.mean()),
        max_score_diff=float(score_diff.max()),
        mean_score_diff=float(score_diff.mean()),
        top1_agreement=top1,
        top3_agreement=top3,
        swap_rate=swaps,
    )


def tie_aware_agreement(ref: np.ndarray, cand: np.ndarray, group: int, tie: float) -> tuple[float, float, float]:
    """Top-1 and top-3 agreement and the swapped-pair rate of scores, where reference scores within `tie` count as
    equal."""
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


def rank_agreement(ref: np.ndarray, cand: np.ndarray, group: int) -> tuple[list[float], list[float], list[float]]:
    """Per query (consecutive groups of documents), ties not considered: Spearman, same best document, same three
    best documents (reported beside the gate's tie-aware figures, not gated)."""
    out: tuple[list[float], list[float], list[float]] = ([], [], [])
    for start in range(0, len(ref), group):
        r, c = ref[start : start + group], cand[start : start + group]
        out[0].append(spearman(r, c))
        out[1].append(float(np.argmax(r) == np.argmax(c)))
        out[2].append(float(set(np.argsort(-r)[:3]) == set(np.argsort(-c)[:3])))
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (1.0 when either side is constant)."""
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    if ra.std() == 0 or rb.std() == 0:
        return 1.0
    return float(np.corrcoef(ra, rb)[0, 1])
