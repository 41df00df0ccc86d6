"""The int8 search: each model's own products kept fp32, found by measuring them (`--int8-method search`).

For each activation-quantized recipe, fastest first (SEARCH_RECIPES: dynamic, per tensor at run time; static,
per tensor calibrated; blockwise, per block of 32 at run time), as accuracy-aware quantization does:

1. quantize every weight product and score the export's calibration text (generated queries, their own seed);
2. when the gate's thresholds miss there, rank the products by their effect on the gate's metrics: each one
   quantized alone (the rest fp32), by how near it brings the calibration text to a threshold (`strain`: the
   largest of max |Δscore|, top-1/top-3 disagreement and swapped pairs, each over what the gate allows), mean
   |Δscore| breaking ties;
3. put back in fp32 every product that misses the calibration text's thresholds even quantized alone (it must
   stay fp32), then the worst of the others one at a time until the calibration text passes, then hand the graph
   to the unchanged gate (`variants.build_variant`); when the gate misses, put back the next one and try again.

A recipe is given up when it would keep more than MAX_KEPT_SHARE of its products fp32 (it would no longer be the
int8 graph it claims to be; the ranking stops as soon as more products than that miss alone), and the whole
search when its time budget is spent (checked before each quantization, after the first): then the closest graph
measured is handed to the gate with the reason, and the export refuses it (or ships it under
--accept-fidelity-loss).
What was kept fp32, and why, is recorded in the variant's fidelity.json (`search`).
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from rerankrt.export.precision import fuse_for_int8, int8_products
from rerankrt.precision import INT8_SEARCH_BUDGET_S, int8_search_budget
from rerankrt.runtime.fidelity import FidelityThresholds, agreement

SEARCH_RECIPES: tuple[str, ...] = ("dynamic", "static", "blockwise")
MAX_KEPT_SHARE = 0.5  # a recipe needing more of its products fp32 is given up
CALIBRATION_SEED, CALIBRATION_QUERIES, CALIBRATION_DOCUMENTS = 3, 8, 8  # the gate's seed is 1, the golden set's 2

log = logging.getLogger(__name__)

Quantize = Callable[[Path, Path, Sequence[str], str, Sequence[Mapping[str, np.ndarray]]], Path]
"""(source, target, keep_float regexes, method, calibration feeds) -> target: `precision.quantize_int8`."""
Score = Callable[[Path], np.ndarray]
"""graph file -> its logits for the calibration batches (run as the family's pipeline runs it)."""


@dataclass
class Kept:
    node: str
    why: str


@dataclass
class SearchRecord:
    """What the search did: fidelity.json's `search`."""

    recipe: str = ""
    products: int = 0
    kept_fp32: list[Kept] = field(default_factory=list)
    calibration: dict = field(default_factory=dict)  # the kept graph's figures on the calibration text
    tried: list[dict] = field(default_factory=list)  # each recipe: its outcome
    seconds: float = 0.0
    budget_s: float = INT8_SEARCH_BUDGET_S
    stopped: str = ""  # why the search ended without a graph that passed its calibration text, if it did

    def to_dict(self) -> dict:
        return asdict(self)

    def method(self) -> str:
        kept = f"{len(self.kept_fp32)} of {self.products} products kept fp32"
        return f"search: {self.recipe}, {kept}" + (f" ({self.stopped})" if self.stopped else "")


class BudgetSpent(Exception):
    pass


@dataclass
class Trial:
    recipe: str
    kept: list[str]
    products: int
    folder: Path
    figures: dict
    passed: bool
    yielded: bool = False


class Int8Search:
    """One search over a graph; `candidates()` yields the graphs for the gate (`variants.build_variant`)."""

    def __init__(
        self,
        fp32_graph: Path,
        work: Path,
        quantize: Quantize,
        score: Score,
        calibration: Sequence[Mapping[str, np.ndarray]],
        thresholds: FidelityThresholds,
        group: int,
        fusion: str | None = None,
        keep_float: Sequence[str] = (),
        budget_s: float = INT8_SEARCH_BUDGET_S,
        recipes: Sequence[str] | None = None,
    ):
        self.fp32_graph, self.work, self.quantize, self.score = fp32_graph, work, quantize, score
        self.calibration, self.thresholds, self.group = calibration, thresholds, group
        self.fusion, self.keep_float = fusion, tuple(keep_float)
        self.target_name = f"{fp32_graph.stem}.int8.onnx"  # model.int8.onnx, decoder.int8.onnx
        self.recipes = tuple(recipes or SEARCH_RECIPES)
        self.budget_s = int8_search_budget(budget_s)
        self.reference = score(fp32_graph)
        self.record = SearchRecord(budget_s=self.budget_s)
        self.started = time.perf_counter()
        self.trials = 0
        self.closest: Trial | None = None
        self.effects: dict[str, dict[str, float]] = {}  # recipe -> product -> its effect quantized alone, worst first

    def candidates(self) -> Iterator[tuple[Trial, SearchRecord]]:
        """Each graph that passes the calibration text, in its folder; resumed only when the gate missed it. Last,
        when nothing passed, the closest graph measured, with `record.stopped` saying why."""
        try:
            for recipe in self.recipes:
                yield from self._recipe(recipe)
        except BudgetSpent:
            self.record.stopped = f"the search's budget of {self.budget_s:.0f} s is spent"
            log.warning("int8 search: %s; the closest graph measured goes to the gate", self.record.stopped)
        else:
            self.record.stopped = "no recipe passed within its share of products kept fp32"
        if self.closest is not None and not self.closest.yielded:  # (one the gate missed already is not retried)
            self._describe(self.closest)
            yield self.closest, self.record

    def _recipe(self, recipe: str) -> Iterator[tuple[Trial, SearchRecord]]:
        source = self.fp32_graph
        if recipe == "dynamic" and self.fusion:
            source = fuse_for_int8(self.fp32_graph, self.work / "fused.onnx", self.fusion)
        products = int8_products(source, recipe, self.keep_float)
        if not products:
            self.record.tried.append({"recipe": recipe, "outcome": "no weight products to quantize"})
            return
        cap = int(MAX_KEPT_SHARE * len(products))
        kept: list[str] = []
        ranking: list[tuple[str, float]] | None = None
        while True:
            trial = self._trial(source, recipe, products, kept)
            if trial.passed:
                self._describe(trial)
                trial.yielded = True
                yield trial, self.record  # resumed: the gate missed it
                log.info("int8 search (%s): the gate missed with %d kept fp32; putting back the next", recipe,
                         len(kept))  # fmt: skip
            if ranking is None:
                ranking = self._rank(source, recipe, products, cap)
                must = [name for name, effect in ranking if effect >= 1]  # each misses even quantized alone
                if len(must) > cap:
                    outcome = (f"{len(must)} of {len(products)} products miss the calibration text even quantized "
                               f"alone (at most {cap} may stay fp32)")  # fmt: skip
                    self._give_up(recipe, outcome)
                    return
                if len(must) > 1:  # all of them at once, then one at a time
                    kept.extend(must[:-1])
            remaining = [name for name, _ in ranking if name not in kept]
            if not remaining or len(kept) >= cap:
                self._give_up(recipe, f"missed with {len(kept)} of {len(products)} products fp32 (at most {cap})")
                return
            kept.append(remaining[0])

    def _give_up(self, recipe: str, outcome: str) -> None:
        self.record.tried.append({"recipe": recipe, "outcome": outcome})
        log.info("int8 search (%s): %s; next recipe", recipe, outcome)

    def _rank(self, source: Path, recipe: str, products: list[str], cap: int) -> list[tuple[str, float]]:
        """(product, its `strain` on the calibration text when it alone is quantized), worst first; cut short once
        more than `cap` products miss alone (the recipe cannot pass then)."""
        effects = []
        for i, name in enumerate(products):
            if sum(effect >= 1 for _, effect, _ in effects) > cap:
                break
            others = [other for other in products if other != name]
            figures = self._trial(source, recipe, products, others, ranking=True).figures
            effects.append((name, strain(figures, self.thresholds), figures["mean_score_diff"]))
            log.info("int8 search (%s): ranked %d/%d, %s alone: strain %.3g, mean |Δscore| %.3g", recipe, i + 1,
                     len(products), name, effects[-1][1], effects[-1][2])  # fmt: skip
        ranked = [(name, effect) for name, effect, _ in sorted(effects, key=lambda item: (-item[1], -item[2]))]
        self.effects[recipe] = dict(ranked)
        return ranked

    def _trial(self, source: Path, recipe: str, products: list[str], kept: list[str], ranking: bool = False) -> Trial:
        """`source` quantized by `recipe` with `kept` fp32, scored on the calibration text."""
        elapsed = time.perf_counter() - self.started
        if elapsed > self.budget_s and self.trials:
            raise BudgetSpent
        self.trials += 1
        folder = Path(tempfile.mkdtemp(dir=self.work, prefix=f"{recipe}-"))
        keep = (*self.keep_float, *(f"^{re.escape(name)}$" for name in kept))
        with _quiet():  # onnxruntime's quantizers log every node at INFO
            target = self.quantize(source, folder / self.target_name, keep, recipe, self.calibration)
        found = agreement(self.reference, self.score(target), self.group, self.thresholds.tie)
        figures = {key: round(float(getattr(found, key)), 6) for key in (
            "max_score_diff", "mean_score_diff", "top1_agreement", "top3_agreement", "swap_rate")}  # fmt: skip
        trial = Trial(recipe, list(kept), len(products), folder, figures, not self.thresholds.failures(found))
        if not ranking:
            log.info("int8 search (%s): %d of %d products fp32: max |Δscore| %.3g, top-1 %.2f, top-3 %.2f, swaps "
                     "%.3f on the calibration text (%s); %.0f of %.0f s", recipe, len(kept), len(products),
                     found.max_score_diff, found.top1_agreement, found.top3_agreement, found.swap_rate,
                     "passes" if trial.passed else "misses", elapsed, self.budget_s)  # fmt: skip
            self._keep_closest(trial)
        else:
            shutil.rmtree(folder)
        return trial

    def _keep_closest(self, trial: Trial) -> None:
        score = (trial.figures["max_score_diff"], trial.figures["mean_score_diff"])
        best = self.closest
        if best is None or score < (best.figures["max_score_diff"], best.figures["mean_score_diff"]):
            if best is not None:
                shutil.rmtree(best.folder, ignore_errors=True)
            self.closest = trial

    def _describe(self, trial: Trial) -> None:
        record = self.record
        record.recipe, record.products, record.calibration = trial.recipe, trial.products, trial.figures
        effects = self.effects.get(trial.recipe, {})
        order = {name: i + 1 for i, name in enumerate(effects)}
        record.kept_fp32 = [
            Kept(name, f"rank {order[name]} of {len(effects)} by its strain on the gate quantized alone: "
                 f"{effects[name]:.3g} of a threshold on the calibration text")
            for name in trial.kept
        ]  # fmt: skip
        record.seconds = round(time.perf_counter() - self.started, 1)


def strain(figures: Mapping[str, float], thresholds: FidelityThresholds) -> float:
    """How near `figures` come to the gate's thresholds: the largest share of an allowance used (1: at a threshold)."""
    return max(
        figures["max_score_diff"] / thresholds.max_score_diff,
        (1 - figures["top1_agreement"]) / max(1 - thresholds.min_top1_agreement, 1e-9),
        (1 - figures["top3_agreement"]) / max(1 - thresholds.min_top3_agreement, 1e-9),
        figures["swap_rate"] / max(thresholds.max_swap_rate, 1e-9),
    )


@contextmanager
def _quiet():
    previous = logging.root.manager.disable
    logging.disable(max(previous, logging.INFO))
    try:
        yield
    finally:
        logging.disable(previous)
