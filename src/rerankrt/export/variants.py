"""Reduced-precision variants of an exported scorer, each proven by a fidelity report before it ships.

- int8: the fp32 graph quantized by onnxruntime for CPUs: dynamically (fastest)
  or, when that misses the fidelity thresholds, blockwise (closer to fp32), then
  blockwise with the family's sensitive products in fp32 (mixed), then the search
  for the model's own products to keep fp32 (`int8_search`).
- fp16: the fp32 graph cast to fp16 with norms and softmax in fp32 (GPUs).
- bf16: no graph of its own. onnxruntime has no bf16 CPU kernels, so on CPU the
  torch backend (weights in bf16, AVX512-BF16/AMX through oneDNN) and, on a CPU
  with BF16 instructions, OpenVINO (the fp32 graph under its bf16 precision hint)
  carry it: every such path on the exporting machine must pass the gate.
  GPU engines are cast from the fp32 graph by `rerankrt build-engine`.
"""

from __future__ import annotations

import copy
import logging
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from contextlib import closing
from functools import partial
from pathlib import Path

import numpy as np
import torch

from rerankrt.errors import ExportError
from rerankrt.export.onnx_graph import ExportedGraph, describe_graph
from rerankrt.export.parity import (
    FIDELITY_THRESHOLDS,
    FidelityReport,
    FidelityThresholds,
    check_fidelity,
    generate_queries,
    remembered,
)
from rerankrt.export.precision import cast_graph, external_data_files, quantize_int8
from rerankrt.families import Batch, Family, PairEncoder
from rerankrt.families.base import run_torch
from rerankrt.precision import INT8_METHODS, INT8_SEARCH_BUDGET_S, Precision, int8_search_budget
from rerankrt.runtime.self_check import GoldenSet, run_self_check

log = logging.getLogger(__name__)


def variant_source(family: Family, roles: Sequence[str]) -> tuple[str, str]:
    """(the role the family's pipeline runs it as, its fp32 role) of the one graph that reduced-precision variants
    and TensorRT engines are made from: the family's choice of fp32 graphs without prefix reuse."""
    choice = family.serving_graphs(list(roles), Precision.FP32, prefix_reuse=False)
    if isinstance(choice, str):
        raise ExportError(f"no graph to make a variant or engine of: {choice}")
    if len(choice.graphs) != 1:
        served = ", ".join(choice.graphs)
        raise ExportError(f"variants and engines are made of one graph; the {family.name} family serves {served}")
    return next(iter(choice.graphs.items()))


def prefix_reuse_source(family: Family, roles: Sequence[str]) -> tuple[str, str] | None:
    """(role, fp32 role) of the one graph the family serves with prefix reuse (the decoder graph of the prompt-based
    decoders), when that is another graph than `variant_source`'s; else None. Its variants let a reduced-precision
    serving reuse prefixes too."""
    choice = family.serving_graphs(list(roles), Precision.FP32, prefix_reuse=True)
    if isinstance(choice, str) or not choice.prefix_reuse or len(choice.graphs) != 1:
        return None
    source = next(iter(choice.graphs.items()))
    return None if source == variant_source(family, roles) else source


def fp32_reference(family: Family, torch_model: torch.nn.Module) -> Callable[[Batch], np.ndarray]:
    """The fp32 torch scorer as a runner that computes each batch once: every gate of an export (each candidate,
    each CPU path, the decoder graph's) is judged on the same generated batches."""
    return remembered(partial(run_torch, family.wrap_scorer(torch_model).eval()))


def build_prefix_reuse_variant(
    precision: Precision,
    method: str,
    family: Family,
    torch_model: torch.nn.Module,
    encoder: PairEncoder,
    folder: Path,
    fp32_graph: ExportedGraph,
    golden: GoldenSet | None,
    thresholds: FidelityThresholds = FIDELITY_THRESHOLDS,
    accept_fidelity_loss: bool = False,
    *,
    role: str,
    int8_search_budget_s: float = INT8_SEARCH_BUDGET_S,
    reference_run: Callable[[Batch], np.ndarray] | None = None,
) -> tuple[ExportedGraph | None, dict]:
    """The `precision` variant of the prefix-reuse graph (`prefix_reuse_source`), made the way the scorer's passed
    (`method`, an int8 recipe) and gated like it, run with prefix reuse as served; and its report. One that misses
    is not shipped (reduced-precision servings then run whole prompts): the report says why.

    bf16 has no graph: OpenVINO's bf16 plans run the fp32 prefix-reuse graph under the bf16 hint, so where this CPU
    computes bf16 that run is gated (the torch path was, with the scorer's) and a miss fails the export like the
    scorer's, unless `accept_fidelity_loss`."""
    if precision == Precision.BF16:
        if problem := bf16_hint_problem():
            return None, {"role": role, "passed": None, "not_checked": f"OpenVINO computes it in fp32 here: {problem}"}
        reference_run = reference_run or fp32_reference(family, torch_model)
        paths = _openvino_bf16_hint(family, folder, fp32_graph, role)
        report = _check_every_path(encoder, reference_run, paths, "openvino bf16 hint", precision, thresholds, golden)
        if not report.passed and not accept_fidelity_loss:
            raise ExportError(
                f"OpenVINO's bf16 hint on {fp32_graph.files[0]} (prefix reuse, as bf16 plans serve it) ranks too "
                f"differently from fp32 ({'; '.join(report.failures)}); export fp32, or pass --accept-fidelity-loss"
            )
        report.accepted = not report.passed
        return None, {"role": role, **report.to_dict()}
    # the recipe the scorer's variant passed with ("search: blockwise, 2 of 36 products kept fp32" -> a search of
    # the decoder graph's own products)
    int8_method = method.split(":", 1)[0] if precision == Precision.INT8 else None
    try:
        graph, report = build_variant(
            precision, family, None, torch_model, encoder, folder, fp32_graph, thresholds=thresholds,
            int8_method=int8_method, golden=golden, role=role, int8_search_budget_s=int8_search_budget_s,
            reference_run=reference_run,
        )  # fmt: skip
    except ExportError as exc:
        for file in folder.glob(f"{_variant_stem(fp32_graph, precision)}*"):
            file.unlink()
        log.warning("the %s %s graph is not shipped (%s servings run whole prompts): %s", precision, role,
                    precision, exc)  # fmt: skip
        return None, {"role": role, "passed": False, "dropped": str(exc)}
    return graph, {"role": role, **report.to_dict()}


def build_variant(
    precision: str,
    family: Family,
    fusion: str | None,
    torch_model: torch.nn.Module,
    encoder: PairEncoder,
    folder: Path,
    fp32_graph: ExportedGraph,
    accept_fidelity_loss: bool = False,
    thresholds: FidelityThresholds = FIDELITY_THRESHOLDS,
    int8_method: str | None = None,
    golden: GoldenSet | None = None,
    *,
    role: str,
    int8_search_budget_s: float = INT8_SEARCH_BUDGET_S,
    reference_run: Callable[[Batch], np.ndarray] | None = None,
) -> tuple[ExportedGraph | None, FidelityReport]:
    """Build the `precision` variant of `fp32_graph` in `folder` and check it, run by the family's pipeline as
    `role` (`variant_source`), against the fp32 torch scorer (and on the artifact's `golden` set, as the
    serving-time self-check will judge it: a variant that passes the gate passes it here).

    Raises ExportError when it misses a threshold, unless `accept_fidelity_loss` (then the report says so).
    `int8_method`: that int8 recipe only (default: each of INT8_METHODS until one passes); `int8_search_budget_s`:
    the int8 search's time budget (seconds); `reference_run`: the fp32 scorer's runner to judge against (default
    `fp32_reference`; the export passes one for all its gates).
    """
    if int8_method is not None and int8_method not in INT8_METHODS:
        raise ExportError(f"int8 method {int8_method!r}: choose one of {', '.join(INT8_METHODS)}")
    try:
        int8_search_budget_s = int8_search_budget(int8_search_budget_s)
    except ValueError as exc:
        raise ExportError(str(exc)) from None
    if precision not in (p.value for p in Precision) or precision == Precision.FP32:
        raise ExportError(f"precision {precision!r}: choose one of int8, bf16, fp16")
    precision = Precision(precision)
    reference = family.wrap_scorer(torch_model).eval()
    # bf16 emulated here (no bf16 instructions): the golden set's pairs only, the rest left to the self-check
    golden_only = golden is not None and precision == Precision.BF16 and not cpu_computes_bf16()
    if golden_only:
        log.warning("bf16: %s", EMULATED_BF16)
    graph, report = None, None
    search = {"encoder": encoder, "thresholds": thresholds, "budget_s": int8_search_budget_s}
    candidates = _candidates(
        precision, family, reference, fusion, folder, fp32_graph, role, int8_method, golden_only, search
    )
    reference_run = reference_run or fp32_reference(family, torch_model)
    with closing(candidates):  # the search's work folder goes when the loop ends
        for method, candidate in candidates:
            for file in graph.files if graph is not None else []:  # the previous candidate missed: make room
                (folder / file).unlink()
            graph, paths, record = candidate()  # every CPU path that may serve it: all must pass
            report = _check_every_path(
                encoder, reference_run, paths, method, precision, thresholds, golden, golden_only
            )
            report.search = record.to_dict() if record is not None else {}
            if report.passed:
                return graph, report
    if report is None:
        raise ExportError(f"no {precision} variant to check: the int8 search found no weight products to quantize")
    # none passed: the last candidate is the closest to fp32
    problems = "; ".join(report.failures)
    if report.search.get("stopped"):
        problems = f"{problems}; the int8 search stopped: {report.search['stopped']}"
    if not accept_fidelity_loss:
        raise ExportError(
            f"the {precision} variant ranks too differently from fp32 ({problems}); export fp32, or pass "
            "--accept-fidelity-loss to ship it anyway (README: Precision)"
        )
    log.warning("the %s variant misses the fidelity thresholds (%s); exported as asked", precision, problems)
    report.accepted = True
    return graph, report


def _candidates(
    precision, family, reference, fusion, folder, fp32_graph, role, int8_method: str | None = None,
    golden_only: bool = False, search: Mapping | None = None,
):  # fmt: skip
    """(method, build -> (graph or None, {name: runner}, int8 search record or None)) for each way to make
    `precision`, fastest first (int8: only `int8_method` when given); the runners are every CPU path that may serve
    it here. `golden_only`: bf16 is checked on the golden set alone (the method says so). `search`: the int8
    search's encoder, thresholds and budget_s."""
    if precision == Precision.BF16:
        problem = bf16_hint_problem()
        method = "torch" if problem else "torch, openvino bf16 hint"
        if golden_only:
            method = f"{method}, golden set only (bf16 emulated on this CPU)"
        yield method, lambda: (None, _bf16_paths(family, reference, folder, fp32_graph, role, problem), None)
        return
    methods = (int8_method or INT8_METHODS) if precision == Precision.INT8 else ("cast",)
    methods = (methods,) if isinstance(methods, str) else methods
    for method in methods:
        if method == "search":
            yield from _search_candidates(family, fusion, folder, fp32_graph, role, **search)
            continue

        def build(method=method):
            graph = _build_graph(precision, method, folder, fp32_graph, fusion, family)
            return graph, _cpu_paths(precision, family, folder, graph, role, method), None

        yield method, build


def _cpu_paths(precision, family, folder: Path, graph: ExportedGraph, role: str, method: str) -> dict:
    """{name: runner} of every CPU path that may serve the variant `graph`."""
    from rerankrt.runtime.onnxruntime_backend import OnnxRuntimeBackend

    paths = {
        f"onnxruntime {precision} graph ({method}), cpu": OnnxRuntimeBackend(family, folder, {role: graph.files[0]}).run
    }
    if precision == Precision.INT8:  # OpenVINO serves the int8 graphs it can read: check its run too
        paths.update(_openvino_int8_path(family, folder, graph, role, method))
    return paths


def _search_candidates(family, fusion, folder: Path, fp32_graph: ExportedGraph, role: str, encoder, thresholds,
                       budget_s: float):  # fmt: skip
    """The int8 search's candidates (`_candidates`), each copied into `folder` as the graph's int8 file when built
    (model.int8.onnx, decoder.int8.onnx)."""
    from rerankrt.export import int8_search
    from rerankrt.runtime.onnxruntime_backend import GraphSession, OnnxRuntimeBackend

    samples = generate_queries(
        encoder, int8_search.CALIBRATION_SEED, int8_search.CALIBRATION_QUERIES, int8_search.CALIBRATION_DOCUMENTS
    )
    pairs = [pair for query, docs in samples for pair in encoder.encode(query, docs)]
    batches = [encoder.collate(pairs[i : i + 8]) for i in range(0, len(pairs), 8)]
    source = folder / fp32_graph.files[0]
    recorder = _RecordingGraph(GraphSession(source))  # the graph feeds the static recipe calibrates on
    run = family.serving_pipeline(folder, {role: recorder})
    for batch in batches:
        run(batch)

    def score(graph: Path) -> np.ndarray:
        backend = OnnxRuntimeBackend(family, folder, {role: str(graph.relative_to(folder))})
        return np.concatenate([backend.run(batch) for batch in batches])

    def quantize(source, target, keep_float, method, calibration):
        return quantize_int8(source, target, None, keep_float, method, calibration=calibration)

    work = Path(tempfile.mkdtemp(dir=folder, prefix=".int8-search-"))
    try:
        search = int8_search.Int8Search(
            source, work, quantize, score, recorder.feeds, thresholds, int8_search.CALIBRATION_DOCUMENTS, fusion,
            family.export_hints.int8_keep_float, budget_s,
        )  # fmt: skip
        for trial, record in search.candidates():

            def build(trial=trial, record=record):
                files = sorted(p.name for p in trial.folder.iterdir())
                for name in files:
                    shutil.copy2(trial.folder / name, folder / name)
                name = f"{_variant_stem(fp32_graph, Precision.INT8)}.onnx"
                graph = describe_graph(folder, [name, *(f for f in files if f != name)])
                return graph, _cpu_paths(Precision.INT8, family, folder, graph, role, trial.recipe), record

            yield record.method(), build
    finally:
        shutil.rmtree(work, ignore_errors=True)


class _RecordingGraph:
    """A graph runner that keeps every feed it is given (a `GraphRunner`)."""

    def __init__(self, session):
        self.session, self.input_names, self.feeds = session, session.input_names, []

    def run(self, feeds, outputs=None):
        self.feeds.append({name: np.array(value) for name, value in feeds.items()})
        return self.session.run(feeds, outputs)


def _openvino_int8_path(family, folder: Path, graph: ExportedGraph, role: str, method: str) -> dict:
    """{name: runner} of OpenVINO's run of the int8 graph, or {} where OpenVINO is missing or cannot read it (the
    dynamic recipe's fused ONNX Runtime operators: then ONNX Runtime alone serves it, as the plan falls back)."""
    from rerankrt.errors import BackendUnavailableError
    from rerankrt.runtime.machine import openvino_version, physical_cores

    if openvino_version() is None:
        return {}
    from rerankrt.runtime.openvino_backend import OpenVinoBackend

    try:
        backend = OpenVinoBackend(family, folder, {role: graph.files[0]}, physical_cores(), Precision.INT8)
    except BackendUnavailableError as exc:
        log.info("int8 (%s): not checked on OpenVINO, which will not serve it: %s", method, exc)
        return {}
    return {f"openvino int8 graph ({method}), cpu": backend.run}


EMULATED_BF16 = (
    "this CPU has no bf16 instructions, so torch's bf16 was checked on the golden set only (the full gate's generated "
    "pairs would take minutes of emulated bf16, and auto serves this artifact in fp32 here); the serving-time "
    "self-check judges each bf16 plan on the machine that serves it"
)


def cpu_computes_bf16() -> bool:
    """Whether this CPU has bf16 instructions (else torch emulates bf16 and OpenVINO computes fp32)."""
    from rerankrt.runtime.machine import BF16_FLAGS, cpu_flags

    return bool(BF16_FLAGS & cpu_flags())


def bf16_hint_problem() -> str | None:
    """Why OpenVINO's bf16 hint cannot serve bf16 on this machine, or None when it can (then the gate checks it)."""
    from rerankrt.runtime.machine import BF16_FLAGS, openvino_version

    if openvino_version() is None:
        return "openvino is not installed"
    if not cpu_computes_bf16():
        return f"the CPU has none of {', '.join(sorted(BF16_FLAGS))} (OpenVINO would compute fp32)"
    return None


def _bf16_paths(family, reference, folder: Path, fp32_graph: ExportedGraph, role: str, problem: str | None) -> dict:
    """name -> runner of every CPU path that serves a bf16 artifact here: torch bf16 weights, and OpenVINO's bf16
    hint on the fp32 graph unless `problem` says why it cannot serve here."""
    bf16 = copy.deepcopy(reference).to(torch.bfloat16)
    paths = {"torch, bf16, cpu": lambda batch: run_torch(bf16, batch)}
    if problem is None:
        paths.update(_openvino_bf16_hint(family, folder, fp32_graph, role))
    else:
        log.info("bf16: OpenVINO's bf16 hint is not checked: %s", problem)
    return paths


def _openvino_bf16_hint(family, folder: Path, fp32_graph: ExportedGraph, role: str) -> dict:
    """{name: runner} of OpenVINO's run of the fp32 graph under its bf16 hint, as the family's pipeline runs it."""
    from rerankrt.runtime.machine import physical_cores
    from rerankrt.runtime.openvino_backend import OpenVinoBackend

    hint = OpenVinoBackend(family, folder, {role: fp32_graph.files[0]}, physical_cores(), Precision.BF16)
    return {f"openvino bf16 hint on {fp32_graph.files[0]}, cpu": hint.run}


def _check_every_path(
    encoder, reference_run, paths: Mapping, method, precision, thresholds, golden, golden_only: bool = False
) -> FidelityReport:
    """Each path's fidelity report against `reference_run`, the fp32 torch scorer's runner (its failures include the
    golden set's, judged as the self-check will; with `golden_only`, on the golden set's pairs alone); the one kept
    is the first that misses (else the last), with every path's outcome in `paths_checked`."""
    reports = []
    for name, run in paths.items():
        if golden_only:  # bf16 emulated here: the golden set's pairs only, judged by the gate's rule
            samples = [(group.query, group.documents) for group in golden.groups]
            report = check_fidelity(encoder, reference_run, run, name, precision, thresholds,
                                    docs_per_query=golden.docs_per_query, samples=samples)  # fmt: skip
            report.not_checked = EMULATED_BF16
        else:
            report = check_fidelity(encoder, reference_run, run, name, precision, thresholds)
        report.method = method
        if golden is not None and not golden_only:
            check = run_self_check(run, encoder, golden, precision, name, "exporting machine", thresholds=thresholds)
            report.failures += [f"golden set: {failure}" for failure in check.failures]
            report.passed = not report.failures
        _log(report)
        reports.append(report)
    kept = next((r for r in reports if not r.passed), reports[-1])
    if len(reports) > 1:
        kept.paths_checked = [
            {key: getattr(r, key) for key in ("candidate", "passed", "max_score_diff", "top1_agreement", "swap_rate")}
            for r in reports
        ]
    return kept


def _build_graph(precision, method, folder: Path, fp32_graph: ExportedGraph, fusion, family) -> ExportedGraph:
    source, target = folder / fp32_graph.files[0], folder / f"{_variant_stem(fp32_graph, precision)}.onnx"
    if precision == Precision.INT8:
        hints = family.export_hints
        quantize_int8(source, target, fusion, hints.int8_keep_float, method, hints.int8_sensitive)
    else:
        cast_graph(source, target, precision)
    return describe_graph(folder, [target.name, *(p.name for p in external_data_files(target))])


def _variant_stem(fp32_graph: ExportedGraph, precision: Precision) -> str:
    """model.onnx -> model.int8, decoder.onnx -> decoder.int8 (the variant's file name, before .onnx)."""
    return f"{Path(fp32_graph.files[0]).stem}.{precision}"


def _log(report: FidelityReport) -> None:
    log.info(
        "%s (%s) vs fp32 over %d queries: max |Δscore| %.3g, top-1 %.2f, top-3 %.2f, swapped pairs %.3f "
        "(Spearman %.3f)%s",
        report.precision,
        report.method,
        report.queries,
        report.max_score_diff,
        report.top1_agreement,
        report.top3_agreement,
        report.swap_rate,
        report.mean_spearman,
        "" if report.passed else f": misses {'; '.join(report.failures)}",
    )
