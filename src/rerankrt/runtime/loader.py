"""Load a model for serving: an artifact folder, or a plain model folder / Hub id (torch only).

The serving plan (`runtime.plan`) lists the candidates in order; each is tried, and each that cannot load is
logged with its reason before the next. Each is opened by its backend's row (`plan.BACKEND_TABLE`), and the encoder
marks prefixes exactly when the plan being tried reuses them (`ServingPlan.prefix_reuse`, the family's choice). A
named backend that cannot load anywhere is an error, never a silent switch to another backend. A plan that loads
then scores the artifact's golden set on this machine (`runtime.self_check`) before it takes traffic: under `auto`
one that misses is logged and the next is tried; a backend or precision asked for by name that misses is an error
at start (SelfCheckFailed), with the figures.
"""

from __future__ import annotations

import gc
import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rerankrt.artifact import GOLDEN_NAME, MANIFEST_NAME, PARITY_NAME, is_artifact, load_manifest, sha256_file
from rerankrt.errors import ArtifactError, BackendUnavailableError, UnsupportedModelError
from rerankrt.families import Family, PairEncoder, Recognition, detect_family, get_family
from rerankrt.model_source import resolve_model
from rerankrt.runtime.backend import Backend
from rerankrt.runtime.document_cache import DocumentCache
from rerankrt.runtime.machine import Machine
from rerankrt.runtime.plan import Request, ServingPlan, Skipped, backend_row, plan_serving, this_machine
from rerankrt.runtime.self_check import (
    GoldenSet,
    SelfCheck,
    SelfCheckFailed,
    export_tolerance,
    golden_batches,
    run_self_check,
)
from rerankrt.runtime.settings import RerankerSettings
from rerankrt.runtime.tuning import PlanTiming, TimingCache, TimingKey, Timings, measured_now, time_golden

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A model ready to score: the family's encoder, and the backend the plan chose."""

    family: Family
    encoder: PairEncoder
    backend: Backend
    plan: ServingPlan
    name: str
    recognition: Recognition | None = None  # why the family (plain model folders are detected at load)
    self_check: SelfCheck | None = None  # the plan's run of the golden set here (None: not checked, see below)
    self_check_skipped: str | None = None  # why there is no self-check (no golden set, --no-self-check, no artifact)
    timings: Timings | None = None  # the measurement `auto` chose the plan by (runtime.tuning), None: fixed order
    document_cache: DocumentCache | None = None  # documents' encodings across requests (families that declare them)


def load_model(settings: RerankerSettings, machine: Machine | None = None) -> LoadedModel:
    """The model `settings.model_path` names (artifact folder, model folder or Hub id), on the first plan that loads."""
    machine = machine or this_machine()
    folder = Path(settings.model_path)
    golden, skipped = None, "a plain model folder has no golden set"
    if is_artifact(folder):
        manifest = load_manifest(folder)
        try:
            family = get_family(manifest.family)
            family.configure(manifest.family_options, folder)
        except UnsupportedModelError as exc:
            raise ArtifactError(f"{folder / 'manifest.json'}: {exc}") from exc
        if settings.max_length is not None and settings.max_length > manifest.max_length:
            raise ArtifactError(
                f"max_length {settings.max_length} exceeds the {manifest.max_length} this artifact was exported for"
            )
        encoder = family.load_encoder(folder, settings.max_length or manifest.max_length, settings.chat_template)
        recognition = Recognition(family.name, manifest.family_reason or "recorded in the artifact")
        # a Hub id names the model; a local export is named by its folder, never the exporter's own path
        name = settings.served_model_name or (manifest.source.ref if manifest.source.revision else folder.name)
        plans = plan_serving(family, _request(settings, encoder), machine, manifest=manifest, folder=folder)
        golden, skipped = _golden_runs(settings, folder, manifest, family, machine)
    else:
        source = resolve_model(settings.model_path, settings.revision)
        family, recognition = detect_family(source.path)
        encoder = family.load_encoder(source.path, settings.max_length, settings.chat_template)
        # a Hub id names the model; a local folder by its last component, never the path on this machine
        name = settings.served_model_name or (source.ref if source.revision else source.path.name)
        plans = plan_serving(family, _request(settings, encoder), machine, model_ref=str(source.path))
    log.info("model %s: family %s (%s), max_length %d", name, family.name, recognition.reason, encoder.max_length)
    documents = _document_cache(settings, family, folder)
    explicit = settings.backend != "auto" or settings.precision is not None
    if golden is not None and settings.tune and not explicit:
        key = TimingKey.of(folder / MANIFEST_NAME, machine, settings.threads or machine.physical_cores)
        backend, plan, check, timings = open_fastest(
            plans, family, golden.check, golden.time, TimingCache(key), encoder, documents
        )
    else:
        checker = golden.check if golden is not None else None
        backend, plan, check = open_first(plans, family, settings.backend, checker, explicit, encoder, documents)
        timings = None
    return LoadedModel(
        family, encoder, backend, plan, name, recognition, check, None if check else skipped, timings, documents
    )


def _document_cache(settings: RerankerSettings, family: Family, folder: Path) -> DocumentCache | None:
    """The model's document cache: for families that declare document encodings, with a budget; keyed by the
    artifact (its manifest's hash, or a plain folder's path) and, per plan opened, the plan."""
    if not family.document_encodings or settings.document_cache_bytes == 0:
        return None
    artifact = sha256_file(folder / MANIFEST_NAME) if is_artifact(folder) else str(folder.resolve())
    return DocumentCache(settings.document_cache_bytes, artifact)


Checker = Callable[[Backend, ServingPlan], SelfCheck]
Timer = Callable[[Backend, ServingPlan], float]


def open_first(
    plans: list[ServingPlan | Skipped],
    family: Family,
    choice: str = "auto",
    check: Checker | None = None,
    explicit: bool = False,
    encoder: PairEncoder | None = None,
    documents: DocumentCache | None = None,
) -> tuple[Backend, ServingPlan, SelfCheck | None]:
    """The backend of the first plan that loads and passes `check` here; every one that does not is logged with its
    reason. A plan asked for by name (`explicit`) that misses the check is a SelfCheckFailed. `encoder` marks
    prefixes as each plan tried runs them; `documents` is scoped to each plan tried."""
    reasons = []
    for plan in plans:
        opened = _open_checked(plan, family, choice, check, explicit, encoder, documents)
        if not isinstance(opened, str):
            log.info("backend selected: %s", plan.describe())
            if opened[1] is not None:
                log.info("self-check: %s", opened[1].summary())
            return opened[0], plan, opened[1]
        log.info("backend %s (%s) not used: %s", plan.backend, plan.device, opened)
        reasons.append(f"{plan.backend} ({plan.device}): {opened}")
    raise BackendUnavailableError(f"no backend can run this model ({'; '.join(reasons)})")


def open_fastest(
    plans: list[ServingPlan | Skipped],
    family: Family,
    check: Checker,
    timer: Timer,
    cache: TimingCache,
    encoder: PairEncoder | None = None,
    documents: DocumentCache | None = None,
) -> tuple[Backend, ServingPlan, SelfCheck, Timings | None]:
    """`auto` by measurement (`runtime.tuning`): the fastest plan of the first device that has one passing the
    self-check. Without timings recorded for this key, every candidate of that device is opened, checked, timed
    (`timer`) and closed, one at a time (one model in memory at once), and the result recorded; then the plans that
    passed are opened fastest first, as recorded ones are at a later start (a recorded plan that no longer loads or
    passes gives way to the next)."""
    candidates = [plan for plan in plans if isinstance(plan, ServingPlan)]
    for plan in plans:
        if isinstance(plan, Skipped):
            log.info("backend %s (%s) not used: %s", plan.backend, plan.device, plan.reason)
    by_name = {plan.describe(): plan for plan in candidates}
    timings = cache.read()
    if timings is not None and timings.chosen in by_name:
        log.info("plan timings of this machine (%s, measured %s): %s", cache.path, timings.measured_at,
                 timings.summary())  # fmt: skip
        order = [by_name[timings.chosen], *(plan for plan in candidates if plan.describe() != timings.chosen)]
    else:
        timings = _time_plans(candidates, family, check, timer, documents)
        cache.write(timings)
        log.info("backend selected by measurement: %s", timings.summary())
        timed = sorted((t for t in timings.plans if t.seconds is not None), key=lambda t: t.seconds)
        order = [by_name[t.plan] for t in timed]
    backend, plan, result = open_first(order, family, "auto", check, False, encoder, documents)
    return backend, plan, result, timings if plan.describe() == timings.chosen else None


def _time_plans(
    candidates: list[ServingPlan], family: Family, check: Checker, timer: Timer, documents: DocumentCache | None
) -> Timings:
    """Every candidate of the first device (cuda first, as the fixed order) that has one passing the self-check,
    opened, checked and timed, then closed; a BackendUnavailableError naming each when none passes."""
    timings: list[PlanTiming] = []
    for device in dict.fromkeys(plan.device for plan in candidates):
        for plan in (p for p in candidates if p.device == device):
            opened = _open_checked(plan, family, "auto", check, False, None, documents)
            if isinstance(opened, str):
                log.info("backend %s (%s) not used: %s", plan.backend, plan.device, opened)
                timings.append(PlanTiming(plan.describe(), None, opened))
                continue
            seconds = timer(opened[0], plan)
            golden = opened[1].pairs, opened[1].tokens  # what was timed, for the record
            released = weakref.ref(opened[0])
            del opened  # its model leaves memory before the next one loads (a full collection only if it is held)
            if released() is not None:
                gc.collect()
            log.info("timed %s: %.3f s for the golden set", plan.describe(), seconds)
            timings.append(PlanTiming(plan.describe(), seconds, "slower"))
        timed = [t for t in timings if t.seconds is not None]
        if timed:
            fastest = min(timed, key=lambda t: t.seconds)
            fastest.outcome = "served"
            return Timings(fastest.plan, measured_now(), *golden, timings)
    reasons = "; ".join(f"{t.plan}: {t.outcome}" for t in timings) or "no candidate plan"
    raise BackendUnavailableError(f"no backend can run this model ({reasons})")


def _open_checked(
    plan: ServingPlan | Skipped,
    family: Family,
    choice: str,
    check: Checker | None,
    explicit: bool,
    encoder: PairEncoder | None,
    documents: DocumentCache | None = None,
) -> tuple[Backend, SelfCheck | None] | str:
    """The plan's backend and its self-check, or why it is not used (a SelfCheckFailed when `explicit`)."""
    if isinstance(plan, Skipped):
        return plan.reason
    if documents is not None:
        family.use_document_cache(documents.scope(plan.describe()))
    try:
        backend = open_backend(plan, family)
    except BackendUnavailableError as exc:
        return str(exc)
    except Exception as exc:  # auto: any load failure means log it and try the next one
        if choice != "auto":
            raise
        return f"{type(exc).__name__}: {exc}"
    if encoder is not None:
        encoder.use_prefix_reuse(plan.prefix_reuse)
    result = check(backend, plan) if check is not None else None
    if result is None or result.passed:
        return backend, result
    if explicit:
        raise SelfCheckFailed(
            f"self-check: {result.summary()}; this plan is not served here (serve another --backend or "
            "--precision, or re-export on this kind of CPU)"
        )
    log.warning("self-check: %s; trying the next plan", result.summary())
    return "missed the self-check on this machine"


@dataclass
class GoldenRuns:
    """The artifact's golden set, encoded as the export encoded it (the artifact's max_length and template, whatever
    --max-length or --chat-template serve), to check a plan (`check`) and to time it (`time`)."""

    encoder: PairEncoder
    golden: GoldenSet
    tolerance: float
    machine: Machine

    def check(self, backend: Backend, plan: ServingPlan) -> SelfCheck:
        self.encoder.use_prefix_reuse(plan.prefix_reuse)
        return run_self_check(backend.run, self.encoder, self.golden, plan.precision, plan.describe(),
                              self.machine.describe_cpu(), self.tolerance)  # fmt: skip

    def time(self, backend: Backend, plan: ServingPlan) -> float:
        self.encoder.use_prefix_reuse(plan.prefix_reuse)
        return time_golden(backend.run, golden_batches(self.encoder, self.golden)[1])


def _golden_runs(settings: RerankerSettings, folder: Path, manifest, family: Family, machine: Machine):
    """(the golden set to check each opened plan with, None) or (None, why there is none)."""
    if not settings.self_check:
        log.warning(
            "self-check off (--no-self-check): the plan is served without proof that this machine computes what "
            "the export accepted (other CPU kinds may pick other kernels and give other numbers)"
        )
        return None, "turned off (--no-self-check)"
    if GOLDEN_NAME not in manifest.files:
        log.warning(
            "%s has no golden set (exported before the self-check existed): served without proof that this machine "
            "computes what the export accepted; re-export it to have one", folder,
        )  # fmt: skip
        return None, "the artifact has no golden set (re-export it)"
    golden = GoldenSet.read(folder / GOLDEN_NAME)
    tolerance = export_tolerance(folder, PARITY_NAME)
    return GoldenRuns(family.load_encoder(folder, manifest.max_length), golden, tolerance, machine), None


def open_backend(plan: ServingPlan, family: Family) -> Backend:
    """The backend `plan` names, loaded as it says (by its row in the backend table)."""
    return backend_row(plan.backend).open(plan, family)


def _request(settings: RerankerSettings, encoder: PairEncoder) -> Request:
    return Request(
        backend=settings.backend,
        precision=settings.precision,
        max_length=encoder.max_length,
        threads=settings.threads,
        tensorrt_ep=settings.onnxruntime_tensorrt_ep,
        prefix_reuse=settings.prefix_reuse,
        packed=settings.packed_batches,
        cuda_graphs=settings.cuda_graphs,
        max_batch_tokens=settings.max_batch_tokens,
    )
