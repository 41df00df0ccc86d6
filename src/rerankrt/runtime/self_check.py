"""The serving-time self-check: a plan scores the artifact's golden set on this machine before it takes traffic.

The export stores a golden set in the artifact (`golden.json`, hashed in the manifest): a few dozen generated pairs
of mixed lengths and their fp32 logits from the reference path (the family's parity reference). Runtimes pick
kernels by the CPU they run on (int8 with or without VNNI, bf16 native or emulated, dynamic activation quantization
or not), so an artifact gated on one machine may compute other numbers on another. Whenever a plan is opened, its
backend scores the golden set here and is judged by the export's own rule (`runtime.fidelity`): fp32 within the
export's logit tolerance, reduced precision by the fidelity thresholds. The loader refuses a plan that misses
(`auto` tries the next one; an explicitly requested plan is an error at start).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field, ValidationError, model_validator

from rerankrt.errors import ArtifactError, RerankrtError
from rerankrt.families import Batch, Features, PairEncoder
from rerankrt.precision import Precision
from rerankrt.runtime.fidelity import FIDELITY_THRESHOLDS, FP32_TOLERANCE, FidelityThresholds, agreement

GOLDEN_MAX_BYTES = 4 << 20  # a golden set is a few dozen short texts: anything larger is refused unread
GOLDEN_MAX_PAIRS = 256
GOLDEN_MAX_TEXT_CHARS = 20_000


class SelfCheckFailed(RerankrtError):
    """An explicitly requested plan computes other numbers on this machine than the export accepted."""


class GoldenGroup(BaseModel):
    query: str = Field(max_length=GOLDEN_MAX_TEXT_CHARS)
    documents: list[str] = Field(min_length=1)
    logits: list[float]  # fp32 logits of the reference path, one per document

    @model_validator(mode="after")
    def _one_logit_per_document(self):
        if len(self.logits) != len(self.documents):
            raise ValueError(f"{len(self.documents)} documents but {len(self.logits)} logits")
        if not all(np.isfinite(self.logits)):
            raise ValueError("a logit is not finite")
        if any(len(d) > GOLDEN_MAX_TEXT_CHARS for d in self.documents):
            raise ValueError(f"a document is over {GOLDEN_MAX_TEXT_CHARS} characters")
        return self


class GoldenSet(BaseModel):
    """Queries with the same number of documents each, and the reference's fp32 logits of every pair."""

    reference: str
    seed: int
    batch_size: int = Field(ge=1, le=GOLDEN_MAX_PAIRS)
    groups: list[GoldenGroup] = Field(min_length=1)

    @model_validator(mode="after")
    def _equal_groups(self):
        if len({len(g.documents) for g in self.groups}) != 1:
            raise ValueError("every query must have the same number of documents")
        if self.pairs > GOLDEN_MAX_PAIRS:
            raise ValueError(f"{self.pairs} pairs, over {GOLDEN_MAX_PAIRS}")
        return self

    @property
    def pairs(self) -> int:
        return sum(len(g.documents) for g in self.groups)

    @property
    def docs_per_query(self) -> int:
        return len(self.groups[0].documents)

    @property
    def logits(self) -> np.ndarray:
        return np.array([x for g in self.groups for x in g.logits], dtype=np.float64)

    @classmethod
    def read(cls, path: Path) -> GoldenSet:
        """The golden set in `path`; ArtifactError naming the file when it is not one."""
        if path.stat().st_size > GOLDEN_MAX_BYTES:
            raise ArtifactError(f"{path}: over {GOLDEN_MAX_BYTES >> 20} MB, not a golden set")
        try:
            return cls.model_validate_json(path.read_bytes())
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(p) for p in error["loc"])
            raise ArtifactError(f"{path}: not a valid golden set ({where}: {error['msg']})") from None


@dataclass
class SelfCheck:
    """One plan's run of the golden set on this machine, judged by the export's rule for its precision."""

    passed: bool
    plan: str
    precision: str
    rule: str
    machine: str
    pairs: int
    tokens: int
    seconds: float
    max_logit_diff: float
    max_score_diff: float
    top1_agreement: float
    top3_agreement: float
    swap_rate: float
    failures: list[str] = field(default_factory=list)

    def summary(self) -> str:
        verdict = "passes" if self.passed else f"misses ({'; '.join(self.failures)})"
        return (
            f"{self.plan} {verdict} on this machine ({self.machine}): max |Δlogit| {self.max_logit_diff:.3g}, "
            f"max |Δscore| {self.max_score_diff:.3g}, top-1 {self.top1_agreement:.2f}, rule: {self.rule}; "
            f"{self.pairs} pairs, {self.tokens} tokens in {self.seconds:.2f} s"
        )

    def to_dict(self) -> dict:
        return asdict(self)


def judge_rule(precision: Precision, tolerance: float, thresholds: FidelityThresholds) -> str:
    if precision == Precision.FP32:
        return f"fp32: max |Δlogit| <= {tolerance:g}"
    return (
        f"{precision}: max |Δscore| <= {thresholds.max_score_diff}, top-1 and top-3 agreement >= "
        f"{thresholds.min_top1_agreement}, swapped pairs <= {thresholds.max_swap_rate} (ties within {thresholds.tie})"
    )


def golden_batches(encoder: PairEncoder, golden: GoldenSet) -> tuple[list[Features], list[Batch]]:
    """The golden set's pairs as `encoder` makes them, and their padded batches in arrival order (as the export
    checks them): what the self-check scores and the measured choice times (`runtime.tuning`)."""
    pairs = [pair for group in golden.groups for pair in encoder.encode(group.query, group.documents)]
    step = golden.batch_size
    return pairs, [encoder.collate(pairs[i : i + step]) for i in range(0, len(pairs), step)]


def run_self_check(
    run: Callable[[Batch], np.ndarray],
    encoder: PairEncoder,
    golden: GoldenSet,
    precision: Precision,
    plan: str,
    machine: str,
    tolerance: float = FP32_TOLERANCE,
    thresholds: FidelityThresholds = FIDELITY_THRESHOLDS,
) -> SelfCheck:
    """The golden set through `run` (`golden_batches`), judged by the export's rule for `precision`: fp32 within
    `tolerance` in logits, anything else by `thresholds`."""
    pairs, batches = golden_batches(encoder, golden)
    started = time.perf_counter()
    logits = np.concatenate([np.asarray(run(batch), dtype=np.float64).reshape(-1) for batch in batches])
    seconds = time.perf_counter() - started
    precision = Precision(precision)
    agreed = agreement(golden.logits, logits, golden.docs_per_query, thresholds.tie)
    if precision == Precision.FP32:
        finite = bool(np.isfinite(logits).all())
        ok = finite and agreed.max_logit_diff <= tolerance
        failures = [] if ok else [f"max |Δlogit| {agreed.max_logit_diff:.3g} > {tolerance:g}"]
    else:
        failures = thresholds.failures(agreed) if np.isfinite(logits).all() else ["a logit is not finite"]
    return SelfCheck(
        passed=not failures,
        plan=plan,
        precision=precision.value,
        rule=judge_rule(precision, tolerance, thresholds),
        machine=machine,
        pairs=len(pairs),
        tokens=sum(len(p["input_ids"]) for p in pairs),
        seconds=round(seconds, 3),
        max_logit_diff=agreed.max_logit_diff,
        max_score_diff=agreed.max_score_diff,
        top1_agreement=agreed.top1_agreement,
        top3_agreement=agreed.top3_agreement,
        swap_rate=agreed.swap_rate,
        failures=failures,
    )


def export_tolerance(folder: Path, parity_name: str) -> float:
    """The fp32 logit tolerance the export's parity check accepted (parity.json), FP32_TOLERANCE if unreadable."""
    try:
        tolerance = json.loads((folder / parity_name).read_text()).get("tolerance")
    except (OSError, ValueError):
        return FP32_TOLERANCE
    return float(tolerance) if isinstance(tolerance, (int, float)) and 0 < tolerance < 1 else FP32_TOLERANCE
