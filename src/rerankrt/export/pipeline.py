"""`rerankrt export`: model -> ONNX -> parity check -> artifact folder, with progress output.

The folder is assembled next to its destination and moved into place only
when every step has passed, so a failed export never leaves a half-written
artifact (nor destroys the previous one).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from rerankrt.artifact import (
    FIDELITY_NAME,
    FORMAT_VERSION,
    GOLDEN_NAME,
    PARITY_NAME,
    Manifest,
    SourceModel,
    hash_files,
    source_files,
    write_manifest,
)
from rerankrt.errors import ExportError
from rerankrt.export.onnx_graph import export_graph
from rerankrt.export.parity import FP32_TOLERANCE, check_parity, golden_set, remembered
from rerankrt.export.variants import (
    build_prefix_reuse_variant,
    build_variant,
    fp32_reference,
    prefix_reuse_source,
    variant_source,
)
from rerankrt.families import detect_family
from rerankrt.families.base import SCORER, variant_role
from rerankrt.model_source import resolve_model
from rerankrt.precision import INT8_SEARCH_BUDGET_S, Precision, int8_search_budget
from rerankrt.runtime.onnxruntime_backend import OnnxRuntimeBackend

log = logging.getLogger(__name__)

VERSIONED_PACKAGES = ("torch", "transformers", "tokenizers", "optimum", "optimum-onnx", "onnx", "onnxruntime")


class Steps:
    """Numbered progress lines with timings: `[2/5] exporting ... done (12.3 s)`."""

    def __init__(self, total: int):
        self.total, self.done = total, 0

    @contextmanager
    def __call__(self, title: str):
        self.done += 1
        log.info("[%d/%d] %s ...", self.done, self.total, title)
        started = time.perf_counter()
        yield
        log.info("[%d/%d] %s done (%.1f s)", self.done, self.total, title, time.perf_counter() - started)


def export_model(
    model: str,
    out: Path,
    *,
    max_length: int | None = None,
    opset: int | None = None,
    revision: str | None = None,
    family: str | None = None,
    chat_template: Path | None = None,
    family_options: dict[str, str] | None = None,
    force: bool = False,
    tolerance: float = FP32_TOLERANCE,
    precision: Precision | str = Precision.FP32,
    accept_fidelity_loss: bool = False,
    int8_method: str | None = None,
    int8_search_budget_s: float = INT8_SEARCH_BUDGET_S,
) -> Manifest:
    """Export `model` (Hub id or folder) to the artifact folder `out`; return its manifest.

    `precision` other than fp32 adds that variant (checked for fidelity) and makes it the one served;
    `family_options` are the family's export options (`Family.options`), recorded resolved in the manifest.
    `int8_search_budget_s`: the int8 search's time budget (export/int8_search.py).
    """
    try:
        int8_search_budget_s = int8_search_budget(int8_search_budget_s)
    except ValueError as exc:
        raise ExportError(str(exc)) from None
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise ExportError(f"{out} already exists and is not empty; pass --force to replace it")
    try:
        precision = Precision(precision)
    except ValueError:
        raise ExportError(f"precision {precision!r}: choose one of {', '.join(p.value for p in Precision)}") from None

    log.info("resolving %s ...", model)
    source = resolve_model(model, revision)
    config = source.config()
    chosen, recognition = detect_family(source.path, family)
    options = chosen.configure(family_options or {}, source.path)  # before anything is loaded
    if problem := chosen.precision_problem(precision):
        raise ExportError(f"precision {precision}: {problem}")
    encoder = chosen.load_encoder(source.path, max_length, chat_template)
    log.info("family %s (%s), max_length %d, options %s", chosen.name, recognition.reason, encoder.max_length,
             options or "none")  # fmt: skip
    step = Steps(4 + (precision != Precision.FP32))

    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        shutil.copy2(source.path / "config.json", staging / "config.json")  # serving pipelines may read it
        with step("loading the model and exporting its ONNX graphs"):
            torch_model = chosen.load_export_model(source.path)
            graphs = {}
            for spec in chosen.graphs(torch_model, encoder):
                graphs[spec.role] = export_graph(spec, staging, opset)
                g = graphs[spec.role]
                log.info("graph %s (%s): inputs %s -> outputs %s, opset %d", spec.role, g.files[0], g.inputs,
                         g.outputs, g.opset)  # fmt: skip

        with step("verifying the ONNX graphs, run as the runtime runs them, against the reference"):
            check = chosen.parity_check(torch_model, source.path, encoder)
            report = _verify_graphs(chosen, staging, graphs, check, encoder, tolerance)
            golden = golden_set(encoder, check)  # what every plan must reproduce where it serves
        (staging / PARITY_NAME).write_text(_json(report.to_dict()))
        (staging / GOLDEN_NAME).write_text(golden.model_dump_json(indent=1) + "\n")
        log.info(
            "max |Δlogit| %.3g (tolerance %.0e) over %d pairs, lengths %d-%d, top-1 agreement %.2f",
            report.max_abs_diff,
            tolerance,
            report.pairs,
            report.seq_len_min,
            report.seq_len_max,
            report.top1_agreement,
        )
        if not report.passed:
            raise ExportError(
                f"parity check failed: max |Δlogit| {report.max_abs_diff:.3g} > {tolerance:.0e} "
                f"between the ONNX graph and {report.reference}"
            )

        variant_files = []
        if precision != Precision.FP32:
            with step(f"building the {precision} variant and checking its fidelity"):
                role, fp32_role = variant_source(chosen, list(graphs))
                reference_run = fp32_reference(chosen, torch_model)  # one fp32 pass per batch for every gate
                variant, fidelity = build_variant(
                    precision,
                    chosen,
                    chosen.export_hints.fusion_type(config),
                    torch_model,
                    encoder,
                    staging,
                    graphs[fp32_role],
                    accept_fidelity_loss,
                    int8_method=int8_method,
                    int8_search_budget_s=int8_search_budget_s,
                    golden=golden,
                    role=role,
                    reference_run=reference_run,
                )
                if variant is not None:
                    graphs[variant_role(fp32_role, precision)] = variant
                report = fidelity.to_dict()
                if reuse := prefix_reuse_source(chosen, list(graphs)):  # the decoder graph in the same precision
                    role, fp32_role = reuse
                    variant, report["prefix_reuse"] = build_prefix_reuse_variant(
                        precision, fidelity.method, chosen, torch_model, encoder, staging, graphs[fp32_role], golden,
                        accept_fidelity_loss=accept_fidelity_loss, role=role, int8_search_budget_s=int8_search_budget_s,
                        reference_run=reference_run,
                    )  # fmt: skip
                    if variant is not None:
                        graphs[variant_role(fp32_role, precision)] = variant
                (staging / FIDELITY_NAME).write_text(_json(report))
                variant_files.append(FIDELITY_NAME)
        del torch_model

        with step("writing tokenizer files"):
            encoder_files = encoder.save(staging)

        with step("writing manifest"):
            manifest = Manifest(
                format_version=FORMAT_VERSION,
                family=chosen.name,
                family_reason=recognition.reason,
                family_options=options,
                source=SourceModel(
                    ref=model,
                    revision=source.revision,
                    path=str(source.path),
                    architecture=", ".join(config.get("architectures") or []),
                    files=hash_files(source.path, source_files(source.path)),  # what the torch backend reads
                ),
                max_length=encoder.max_length,
                precision=precision,
                opset=graphs.get(SCORER, next(iter(graphs.values()))).opset,  # the scorer's, or the one graph's
                graphs={
                    role: {"file": g.files[0], "inputs": g.inputs, "outputs": g.outputs} for role, g in graphs.items()
                },
                encoder_files=encoder_files,
                versions=_versions(),
                files=hash_files(
                    staging,
                    [
                        *(f for g in graphs.values() for f in g.files),
                        *encoder_files,
                        "config.json",
                        PARITY_NAME,
                        GOLDEN_NAME,
                        *variant_files,
                    ],
                ),
                created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            )
            write_manifest(staging, manifest)
        _move_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    size_mb = sum(p.stat().st_size for p in out.iterdir()) / 1e6
    log.info("artifact written to %s (%.1f MB); serve it with: rerankrt serve --model-path %s", out, size_mb, out)
    return manifest


def _verify_graphs(family, staging: Path, graphs: dict, check, encoder, tolerance: float):
    """The parity report of every set of fp32 graphs a serving may load (the family's choice with prefix reuse off,
    and on where that differs), each run through ONNX Runtime as served: the worst one, naming every set checked."""
    files = {role: g.files[0] for role, g in graphs.items()}
    check = replace(check, reference=remembered(check.reference))  # every set is checked on the same batches
    choices = []
    for reuse in (False, True):
        choice = family.serving_graphs(list(files), Precision.FP32, reuse)
        if isinstance(choice, str):
            raise ExportError(f"the {family.name} family cannot serve its own graphs: {choice}")
        if choice not in choices:
            choices.append(choice)
    reports = []
    for choice in choices:
        served = {role: files[source] for role, source in choice.graphs.items()}
        backend = OnnxRuntimeBackend(family, staging, served)
        name = f"onnxruntime {backend.provider} ({', '.join(served.values())})"
        reports.append(check_parity(encoder, check, backend.run, name, tolerance))
        del backend
    worst = max(reports, key=lambda r: r.max_abs_diff)
    return replace(worst, passed=all(r.passed for r in reports), candidate="; ".join(r.candidate for r in reports))


def _move_into_place(staging: Path, out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)


def _versions() -> dict[str, str]:
    from rerankrt import __version__

    versions = {"rerankrt": __version__, "python": sys.version.split()[0]}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return versions


def _json(data: dict) -> str:
    return json.dumps(data, indent=2) + "\n"
