"""Load a model for serving: an artifact folder, or a plain model folder / Hub id (torch only).

Backend selection `auto` tries TensorRT, ONNX Runtime on CUDA, torch on CUDA, then
ONNX Runtime and torch on CPU (torch first for bf16 artifacts: ONNX Runtime has no
bf16 CPU kernels); each that cannot load is logged with its reason before the
next is tried. Each backend runs the artifact's precision where it has it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping
from pathlib import Path

from rerankrt.artifact import Manifest, is_artifact, load_manifest
from rerankrt.errors import ArtifactError, BackendUnavailableError, UnsupportedModelError
from rerankrt.families import Family, detect_family, get_family
from rerankrt.model_source import resolve_model
from rerankrt.runtime.backend import Backend
from rerankrt.runtime.reranker import Reranker

log = logging.getLogger(__name__)

BACKEND_ORDER = ("tensorrt", "onnxruntime", "torch")
BACKEND_CHOICES = ("auto", *BACKEND_ORDER)
# `auto`: every GPU path first, then the CPU ones
AUTO_ORDER = (
    ("tensorrt", "cuda"),
    ("onnxruntime", "cuda"),
    ("torch", "cuda"),
    ("onnxruntime", "cpu"),
    ("torch", "cpu"),
)

BackendLoader = Callable[[str], Backend]  # device ("cuda" | "cpu") -> backend


def auto_order(precision: str = "fp32") -> tuple[tuple[str, str], ...]:
    """AUTO_ORDER, with torch ahead of ONNX Runtime on CPU for bf16 (the torch backend carries bf16 there)."""
    if precision != "bf16":
        return AUTO_ORDER
    cpu = [("torch", "cpu"), ("onnxruntime", "cpu")]
    return tuple(c for c in AUTO_ORDER if c not in cpu) + tuple(cpu)


def onnxruntime_graph_role(graphs: Collection[str], precision: str, device: str) -> str:
    """The graph ONNX Runtime runs: the int8 variant on CPU, the fp16 one on CUDA, else the fp32 scorer."""
    wanted = {"cpu": "int8", "cuda": "fp16"}[device]
    role = f"scorer.{wanted}"
    return role if precision == wanted and role in graphs else "scorer"


def select_backend(choice: str, loaders: Mapping[str, BackendLoader], order=AUTO_ORDER) -> Backend:
    """For `auto`, the first of AUTO_ORDER that loads; for a named backend, it on a GPU if it can, else on CPU.

    Every candidate that does not load is logged with its reason. A named backend that cannot
    load anywhere is an error, never a silent switch to another backend.
    """
    if choice != "auto" and choice not in loaders:
        raise BackendUnavailableError(f"unknown backend {choice!r}; choose one of {', '.join(BACKEND_CHOICES)}")
    candidates = [(name, device) for name, device in order if choice in ("auto", name)]
    reasons = []
    for name, device in candidates:
        try:
            backend = loaders[name](device)
        except BackendUnavailableError as exc:
            reason = str(exc)
        except Exception as exc:  # auto: any load failure means log it and try the next one
            if choice != "auto":
                raise
            reason = f"{type(exc).__name__}: {exc}"
        else:
            log.info("backend %s selected (device %s)", backend.name, backend.device)
            return backend
        log.info("backend %s (%s) not used: %s", name, device, reason)
        reasons.append(f"{name} ({device}): {reason}")
    raise BackendUnavailableError(f"no backend can run this model ({'; '.join(reasons)})")


def load_reranker(
    model_path: str,
    backend: str = "auto",
    max_length: int | None = None,
    served_model_name: str | None = None,
    revision: str | None = None,
    chat_template: Path | None = None,
    onnxruntime_tensorrt_ep: bool = False,
    threads: int | None = None,
    max_batch_size: int = 32,
    max_batch_tokens: int = 16384,
    precision: str | None = None,
) -> Reranker:
    """A ready Reranker for `model_path` (artifact folder, model folder or Hub id).

    `precision`: fp32, or the artifact's checked variant (the default); plain model folders run fp32.
    """
    if is_artifact(Path(model_path)):
        folder = Path(model_path)
        manifest = load_manifest(folder)
        if precision not in (None, "fp32", manifest.precision):
            raise ArtifactError(
                f"precision {precision}: {folder} was exported for {manifest.precision} (and fp32); "
                f"export it with --precision {precision} to check and serve that variant"
            )
        manifest = manifest.model_copy(update={"precision": precision or manifest.precision})  # what serves
        try:
            family = get_family(manifest.family)
        except UnsupportedModelError as exc:
            raise ArtifactError(f"{folder / 'manifest.json'}: {exc}") from exc
        if max_length is not None and max_length > manifest.max_length:
            raise ArtifactError(
                f"max_length {max_length} exceeds the {manifest.max_length} this artifact was exported for"
            )
        encoder = family.load_encoder(folder, max_length or manifest.max_length, chat_template)
        loaders = _artifact_loaders(folder, manifest, family, encoder.max_length, onnxruntime_tensorrt_ep, threads)
        name = served_model_name or manifest.source.ref
        order = auto_order(manifest.precision)
    else:
        source = resolve_model(model_path, revision)
        family = detect_family(source.path)
        encoder = family.load_encoder(source.path, max_length, chat_template)
        if precision not in (None, "fp32"):
            raise ArtifactError(f"precision {precision} needs an artifact: rerankrt export --precision {precision}")
        loaders = _plain_model_loaders(source.path, family, threads)
        name = served_model_name or source.ref
        order = AUTO_ORDER
    log.info("model %s: family %s, max_length %d", name, family.name, encoder.max_length)
    return Reranker(
        family=family,
        encoder=encoder,
        backend=select_backend(backend, loaders, order),
        model_name=name,
        max_batch_size=max_batch_size,
        max_batch_tokens=max_batch_tokens,
    )


def _artifact_loaders(
    folder: Path, manifest: Manifest, family: Family, max_length: int, tensorrt_ep: bool, threads: int | None
) -> dict[str, BackendLoader]:
    def tensorrt(device: str) -> Backend:
        from rerankrt.runtime.tensorrt_backend import TensorRTBackend

        return TensorRTBackend(folder, manifest, max_length)

    def onnxruntime(device: str) -> Backend:
        from rerankrt.runtime.onnxruntime_backend import OnnxRuntimeBackend

        if "vision" in manifest.graphs:  # vision-language artifact: vision graph, then scorer graph
            from rerankrt.runtime.vision_language_backend import load_vision_language_backend

            return load_vision_language_backend(
                folder, manifest, device, cpu_threads(threads), tensorrt_ep and device == "cuda"
            )
        role = onnxruntime_graph_role(manifest.graphs, manifest.precision, device)
        log.info("onnxruntime (%s) runs graph %s (artifact precision %s)", device, role, manifest.precision)
        graph = folder / manifest.graphs[role].file
        return OnnxRuntimeBackend(
            graph, device=device, intra_op_threads=cpu_threads(threads), tensorrt_ep=tensorrt_ep and device == "cuda"
        )

    def torch(device: str) -> Backend:
        from rerankrt.runtime.torch_backend import TorchBackend

        dtype = torch_dtype(manifest.precision)
        return TorchBackend(family, _source_weights(manifest), device, dtype, threads=cpu_threads(threads))

    return {"tensorrt": tensorrt, "onnxruntime": onnxruntime, "torch": torch}


def _plain_model_loaders(model_dir: Path, family: Family, threads: int | None) -> dict[str, BackendLoader]:
    def needs_artifact(device: str) -> Backend:
        raise BackendUnavailableError(
            f"{model_dir} is a plain model folder; run `rerankrt export` first "
            "to serve it with ONNX Runtime or TensorRT"
        )

    def torch(device: str) -> Backend:
        from rerankrt.runtime.torch_backend import TorchBackend

        return TorchBackend(family, model_dir, device=device, threads=cpu_threads(threads))

    return {"tensorrt": needs_artifact, "onnxruntime": needs_artifact, "torch": torch}


def torch_dtype(precision: str):
    """bf16 artifacts run torch with bf16 weights; others use the backend's default (fp32 CPU, bf16 CUDA)."""
    import torch

    return torch.bfloat16 if precision == "bf16" else None


def cpu_threads(requested: int | None) -> int:
    """Intra-op threads: as asked, else one per physical core (hyper-threads slow matrix kernels down)."""
    from rerankrt.info import physical_cores

    return requested or physical_cores()


def _source_weights(manifest: Manifest) -> Path:
    """The torch backend needs the original weights: the export's local folder, or the Hub revision."""
    if manifest.source.path and Path(manifest.source.path).is_dir():
        return Path(manifest.source.path)
    if manifest.source.revision:
        try:
            return resolve_model(manifest.source.ref, manifest.source.revision).path
        except UnsupportedModelError as exc:
            raise BackendUnavailableError(f"torch backend needs the source weights: {exc}") from exc
    raise BackendUnavailableError(
        f"torch backend needs the source weights, but {manifest.source.path or manifest.source.ref} is not there"
    )
