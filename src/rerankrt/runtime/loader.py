"""Load a model for serving: an artifact folder, or a plain model folder / Hub id (torch only).

The serving plan (`runtime.plan`) lists the candidates in order; each is tried, and each that cannot load is
logged with its reason before the next. A named backend that cannot load anywhere is an error, never a silent
switch to another backend.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from rerankrt.artifact import is_artifact, load_manifest
from rerankrt.errors import ArtifactError, BackendUnavailableError, UnsupportedModelError
from rerankrt.families import Family, PairEncoder, Recognition, detect_family, get_family
from rerankrt.model_source import resolve_model
from rerankrt.runtime.backend import Backend
from rerankrt.runtime.machine import Machine
from rerankrt.runtime.plan import Request, ServingPlan, Skipped, plan_serving
from rerankrt.runtime.settings import EngineSettings

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


def load_model(settings: EngineSettings, machine: Machine | None = None) -> LoadedModel:
    """The model `settings.model_path` names (artifact folder, model folder or Hub id), on the first plan that loads."""
    machine = machine or Machine.detect()
    folder = Path(settings.model_path)
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
    else:
        source = resolve_model(settings.model_path, settings.revision)
        family, recognition = detect_family(source.path)
        encoder = family.load_encoder(source.path, settings.max_length, settings.chat_template)
        # a Hub id names the model; a local folder by its last component, never the path on this machine
        name = settings.served_model_name or (source.ref if source.revision else source.path.name)
        plans = plan_serving(family, _request(settings, encoder), machine, model_ref=str(source.path))
    encoder.prefix_reuse = encoder.prefix_reuse and settings.prefix_reuse
    log.info("model %s: family %s (%s), max_length %d", name, family.name, recognition.reason, encoder.max_length)
    backend, plan = open_first(plans, family, settings.backend)
    return LoadedModel(family, encoder, backend, plan, name, recognition)


def open_first(plans: list[ServingPlan | Skipped], family: Family, choice: str = "auto") -> tuple[Backend, ServingPlan]:
    """The backend of the first plan that loads; every one that does not is logged with its reason."""
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
                log.info("backend selected: %s", plan.describe())
                return backend, plan
        log.info("backend %s (%s) not used: %s", plan.backend, plan.device, reason)
        reasons.append(f"{plan.backend} ({plan.device}): {reason}")
    raise BackendUnavailableError(f"no backend can run this model ({'; '.join(reasons)})")


def open_backend(plan: ServingPlan, family: Family) -> Backend:
    """The backend `plan` names, loaded as it says."""
    if plan.backend == "tensorrt":
        from rerankrt.runtime.tensorrt_backend import TensorRTBackend

        return TensorRTBackend(plan)
    if plan.backend == "onnxruntime":
        from rerankrt.runtime.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend.from_plan(plan, family)
    if plan.backend == "openvino":
        from rerankrt.runtime.openvino_backend import OpenVinoBackend

        return OpenVinoBackend.from_plan(plan, family)
    from rerankrt.runtime.torch_backend import TorchBackend

    return TorchBackend.from_plan(plan, family)


def _request(settings: EngineSettings, encoder: PairEncoder) -> Request:
    return Request(
        backend=settings.backend,
        precision=settings.precision,
        max_length=encoder.max_length,
        threads=settings.threads,
        tensorrt_ep=settings.onnxruntime_tensorrt_ep,
        prefix_reuse=settings.prefix_reuse,
    )
