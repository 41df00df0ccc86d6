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

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rerankrt.artifact import GOLDEN_NAME, PARITY_NAME, is_artifact, load_manifest
from rerankrt.errors import ArtifactError, BackendUnavailableError, UnsupportedModelError
from rerankrt.families import Family, PairEncoder, Recognition, detect_family, get_family
from rerankrt.model_source import resolve_model
from rerankrt.runtime.backend import Backend
from rerankrt.runtime.machine import Machine
from rerankrt.runtime.plan import Request, ServingPlan, Skipped, backend_row, plan_serving, this_machine
from rerankrt.runtime.self_check import GoldenSet, SelfCheck, SelfCheckFailed, export_tolerance, run_self_check
from rerankrt.runtime.settings import RerankerSettings

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


def load_model(settings: RerankerSettings, machine: Machine | None = None) -> LoadedModel:
    """The model `settings.model_path` names (artifact folder, model folder or Hub id), on the first plan that loads."""
    machine = machine or this_machine()
    folder = Path(settings.model_path)
    checker, skipped = None, "a plain model folder has no golden set"
    if is_artifact(folder):
        manifest = load_manifest(folder)
        try:
            family = get_family(manifest.family)
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
        checker, skipped = _self_checker(settings, folder, manifest, family, machine)
    else:
        source = resolve_model(settings.model_path, settings.revision)
        family, recognition = detect_family(source.path)
        encoder = family.load_encoder(source.path, settings.max_length, settings.chat_template)
        # a Hub id names the model; a local folder by its last component, never the path on this machine
        name = settings.served_model_name or (source.ref if source.revision else source.path.name)
        plans = plan_serving(family, _request(settings, encoder), machine, model_ref=str(source.path))
    log.info("model %s: family %s (%s), max_length %d", name, family.name, recognition.reason, encoder.max_length)
    explicit = settings.backend != "auto" or settings.precision is not None
    backend, plan, check = open_first(plans, family, settings.backend, checker, explicit, encoder)
    return LoadedModel(family, encoder, backend, plan, name, recognition, check, None if check else skipped)


Checker = Callable[[Backend, ServingPlan], SelfCheck]


def open_first(
    plans: list[ServingPlan | Skipped],
    family: Family,
    choice: str = "auto",
    check: Checker | None = None,
    explicit: bool = False,
    encoder: PairEncoder | None = None,
) -> tuple[Backend, ServingPlan, SelfCheck | None]:
    """The backend of the first plan that loads and passes `check` here; every one that does not is logged with its
    reason. A plan asked for by name (`explicit`) that misses the check is a SelfCheckFailed. `encoder` marks
    prefixes as each plan tried runs them."""
    reasons = []
    for plan in plans:
        if isinstance(plan, Skipped):
            reason = plan.reason
        else:
            try:
                backend = open_backend(plan, family)
            except BackendUnavailableError as exc:
                reason = str(exc)
            except Exception as exc:  # auto: any load failure means log it and try the next one
                if choice != "auto":
                    raise
                reason = f"{type(exc).__name__}: {exc}"
            else:
                if encoder is not None:
                    encoder.use_prefix_reuse(plan.prefix_reuse)
                result = check(backend, plan) if check is not None else None
                if result is None or result.passed:
                    log.info("backend selected: %s", plan.describe())
                    if result is not None:
                        log.info("self-check: %s", result.summary())
                    return backend, plan, result
                if explicit:
                    raise SelfCheckFailed(
                        f"self-check: {result.summary()}; this plan is not served here (serve another --backend or "
                        "--precision, or re-export on this kind of CPU)"
                    )
                log.warning("self-check: %s; trying the next plan", result.summary())
                reason = "missed the self-check on this machine"
        log.info("backend %s (%s) not used: %s", plan.backend, plan.device, reason)
        reasons.append(f"{plan.backend} ({plan.device}): {reason}")
    raise BackendUnavailableError(f"no backend can run this model ({'; '.join(reasons)})")


def _self_checker(settings: RerankerSettings, folder: Path, manifest, family: Family, machine: Machine):
    """(the check each opened plan must pass, None) or (None, why there is none). The golden set is encoded as the
    export encoded it (the artifact's max_length and template), whatever --max-length or --chat-template serve."""
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
    encoder = family.load_encoder(folder, manifest.max_length)

    def check(backend: Backend, plan: ServingPlan) -> SelfCheck:
        encoder.use_prefix_reuse(plan.prefix_reuse)
        return run_self_check(
            backend.run, encoder, golden, plan.precision, plan.describe(), machine.describe_cpu(), tolerance
        )

    return check, None


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
    )
