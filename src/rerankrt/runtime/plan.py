"""The serving plan: which backend runs which graph, engine or weights, on which device, in which precision.

`plan_serving` turns (the artifact's manifest or a plain model folder, what the user asked for, this machine)
into candidate plans in the order `--backend auto` tries them; each candidate that cannot run here is a
`Skipped` with its reason. Backends receive a plan and nothing else, so one function decides what serves.
Nothing here loads a model or imports a backend library: planning is testable on any machine.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from rerankrt.artifact import Engine, Manifest
from rerankrt.engines import select_engine
from rerankrt.errors import ArtifactError, BackendUnavailableError
from rerankrt.families import Family
from rerankrt.families.base import SCORER
from rerankrt.precision import ENGINE_PRECISIONS, Precision
from rerankrt.runtime.machine import Machine

BACKENDS = ("tensorrt", "onnxruntime", "openvino", "torch")
BACKEND_CHOICES = ("auto", *BACKENDS)
# `auto`: every GPU path first, then the CPU ones (OpenVINO runs the same fp32 graph faster than ONNX Runtime)
AUTO_ORDER = (
    ("tensorrt", "cuda"),
    ("onnxruntime", "cuda"),
    ("torch", "cuda"),
    ("openvino", "cpu"),
    ("onnxruntime", "cpu"),
    ("torch", "cpu"),
)
# the graph variant ONNX Runtime runs per device, when the artifact was exported for it
ONNXRUNTIME_VARIANT = {"cpu": Precision.INT8, "cuda": Precision.FP16}


@dataclass(frozen=True)
class ServingPlan:
    """Everything a backend needs to know to load."""

    backend: str  # tensorrt | onnxruntime | openvino | torch
    device: str  # cpu | cuda
    precision: Precision  # what computes
    folder: Path | None = None  # the artifact folder (None for a plain model)
    graphs: Mapping[str, str] = field(default_factory=dict)  # onnxruntime, openvino: role -> file
    engine: Engine | None = None  # tensorrt
    weights: str | None = None  # torch: a folder or Hub id holding the original weights
    revision: str | None = None  # torch: the Hub revision of `weights`
    weight_files: Mapping[str, str] | None = None  # torch from an artifact: the files `weights` must hold, hashed
    threads: int = 1  # intra-op threads on CPU
    tensorrt_ep: bool = False  # onnxruntime on CUDA behind ONNX Runtime's TensorRT provider

    def describe(self) -> str:
        what = self.engine.file if self.engine else ", ".join(self.graphs.values()) or self.weights
        return f"{self.backend} on {self.device}, {self.precision.value}, {what}"


@dataclass(frozen=True)
class Skipped:
    backend: str
    device: str
    reason: str


@dataclass(frozen=True)
class Request:
    """What the user asked for (serve flags / EngineSettings)."""

    backend: str = "auto"
    precision: Precision | None = None  # None: the artifact's own
    max_length: int = 512  # what the encoder makes: engines must take it
    threads: int | None = None
    tensorrt_ep: bool = False
    prefix_reuse: bool = True  # load the family's prefix-reuse graphs (fp32 only)


def auto_order(precision: Precision) -> tuple[tuple[str, str], ...]:
    """AUTO_ORDER, with torch ahead of ONNX Runtime on CPU for bf16 (ONNX Runtime has no bf16 CPU kernels: it would
    serve the fp32 graph); OpenVINO stays first (bf16 through its precision hint, where the CPU computes bf16)."""
    if precision != Precision.BF16:
        return AUTO_ORDER
    cpu = [("openvino", "cpu"), ("torch", "cpu"), ("onnxruntime", "cpu")]
    return tuple(c for c in AUTO_ORDER if c not in cpu) + tuple(cpu)


def serving_precision(manifest: Manifest, requested: Precision | None) -> Precision:
    """fp32 or the artifact's checked variant; anything else is refused with the export command to run."""
    if requested in (None, manifest.precision):
        return manifest.precision
    if requested != Precision.FP32:
        raise ArtifactError(
            f"precision {requested}: this artifact was exported for {manifest.precision} (and fp32); "
            f"export it with --precision {requested} to check and serve that variant"
        )
    return requested


def plan_serving(
    family: Family, request: Request, machine: Machine, manifest: Manifest | None = None, folder: Path | None = None,
    model_ref: str | None = None,
) -> list[ServingPlan | Skipped]:  # fmt: skip
    """Candidate plans for an artifact (`manifest` + `folder`) or a plain model (`model_ref`), in trying order: for an
    artifact with a reduced-precision variant and neither backend nor precision asked for, the variant's plans, then the
    fp32 ones."""
    if request.backend not in BACKEND_CHOICES:
        raise BackendUnavailableError(
            f"unknown backend {request.backend!r}; choose one of {', '.join(BACKEND_CHOICES)}"
        )
    threads = request.threads or machine.physical_cores
    if manifest is None:
        if request.precision not in (None, Precision.FP32):
            raise ArtifactError(
                f"precision {request.precision} needs an artifact: rerankrt export --precision {request.precision}"
            )
        precision, order = Precision.FP32, AUTO_ORDER
    else:
        precision = serving_precision(manifest, request.precision)
        order = auto_order(precision)
    explicit = request.precision is not None
    out = _candidates(family, request, machine, manifest, folder, model_ref, threads, precision, order, explicit)
    if manifest is not None and precision != Precision.FP32 and not explicit and request.backend == "auto":
        # where the variant's plans fail to load or miss the self-check here, the fp32 graphs still serve
        fp32 = _candidates(family, request, machine, manifest, folder, model_ref, threads, Precision.FP32, AUTO_ORDER,
                           False)  # fmt: skip
        out += [plan for plan in fp32 if isinstance(plan, ServingPlan) and plan not in out]
    return out


def _candidates(family, request, machine, manifest, folder, model_ref, threads, precision, order, explicit):
    out: list[ServingPlan | Skipped] = []
    for backend, device in order:
        if request.backend not in ("auto", backend):
            continue
        common = {"backend": backend, "device": device, "threads": threads, "folder": folder}
        if backend == "tensorrt" and family.tensorrt_problem:
            out.append(Skipped(backend, device, family.tensorrt_problem))
        elif device == "cuda" and not machine.cuda:
            out.append(Skipped(backend, device, "no CUDA device"))
        elif backend == "torch":
            out.append(_torch_plan(common, precision, explicit, manifest, model_ref))
        elif manifest is None:
            out.append(Skipped(backend, device, f"{model_ref} is a plain model folder; run `rerankrt export` first"))
        elif backend == "onnxruntime":
            plan = _onnxruntime_plan(common, precision, manifest, machine, request.tensorrt_ep)
            # the family's prefix-reuse graphs are fp32: beside the fp32 scorer only
            fp32 = isinstance(plan, ServingPlan) and plan.precision == Precision.FP32
            out.append(_prefix_reuse_graphs(plan, family, request.prefix_reuse and fp32))
        elif backend == "openvino":
            plan = _openvino_plan(common, precision, manifest, machine)  # fp32 graphs (bf16 is a compile hint)
            fp32 = isinstance(plan, ServingPlan) and plan.precision != Precision.INT8
            out.append(_prefix_reuse_graphs(plan, family, request.prefix_reuse and fp32))
        else:
            out.append(_tensorrt_plan(common, precision, explicit, family, manifest, machine, request.max_length))
    return out


def _torch_plan(common: dict, precision: Precision, explicit: bool, manifest: Manifest | None, model_ref):
    """bf16 weights for a bf16 artifact, and on a GPU unless fp32 was asked for; fp32 otherwise."""
    cuda_default = common["device"] == "cuda" and not explicit
    dtype = Precision.BF16 if precision == Precision.BF16 or cuda_default else Precision.FP32
    if manifest is None:
        return ServingPlan(**common, precision=dtype, weights=model_ref)
    source = manifest.source  # the original weights: the export's local folder, else the Hub revision
    if not source.files:
        return Skipped(
            "torch", common["device"], "the artifact does not hash its source model's files, which the torch backend "
            "would read; re-export it with this rerankrt (or serve the model folder itself)",
        )  # fmt: skip
    weights = source.path if source.path and Path(source.path).is_dir() else source.ref
    revision = None if weights == source.path else source.revision
    return ServingPlan(**common, precision=dtype, weights=weights, revision=revision, weight_files=dict(source.files))


def _onnxruntime_plan(common: dict, precision: Precision, manifest: Manifest, machine: Machine, tensorrt_ep: bool):
    device = common["device"]
    if device == "cuda" and "CUDAExecutionProvider" not in machine.onnxruntime_providers:
        return Skipped("onnxruntime", device, "onnxruntime has no CUDA execution provider (install onnxruntime-gpu)")
    if tensorrt_ep and device == "cuda" and "TensorrtExecutionProvider" not in machine.onnxruntime_providers:
        return Skipped("onnxruntime", device, "onnxruntime has no TensorRT execution provider in this build")
    graphs = fp32_graphs(manifest)
    variant = ONNXRUNTIME_VARIANT[device]
    runs = Precision.FP32
    if precision == variant and f"{SCORER}.{variant}" in manifest.graphs:
        graphs[SCORER], runs = manifest.graphs[f"{SCORER}.{variant}"].file, variant
    return ServingPlan(**common, precision=runs, graphs=graphs, tensorrt_ep=tensorrt_ep and device == "cuda")


def _prefix_reuse_graphs(plan: ServingPlan | Skipped, family: Family, reuse: bool) -> ServingPlan | Skipped:
    """`plan` with the graphs `Family.serving_roles` picks: the prefix-reuse graphs instead of the scorer when
    `reuse` (and the artifact has them), else without them."""
    if isinstance(plan, Skipped):
        return plan
    return replace(plan, graphs={role: plan.graphs[role] for role in family.serving_roles(list(plan.graphs), reuse)})


def fp32_graphs(manifest: Manifest) -> dict[str, str]:
    """role -> file of every fp32 graph (variants are named `role.<precision>`)."""
    return {role: graph.file for role, graph in manifest.graphs.items() if "." not in role}


def _openvino_plan(common: dict, precision: Precision, manifest: Manifest, machine: Machine):
    """The fp32 graphs, computed in bf16 (OpenVINO's precision hint) for a bf16 artifact on a CPU with BF16, in fp32
    otherwise: without BF16 instructions bf16 is emulated, slower than fp32 (OPENVINO_BF16 in docs/precision.md).
    An int8 artifact: its int8 graph, which OpenVINO reads when its recipe uses standard operators (blockwise,
    mixed; the export gate then checked OpenVINO's run too); the dynamic recipe's fused ONNX Runtime operators fail
    to load, and ONNX Runtime serves it."""
    if machine.openvino is None:
        return Skipped("openvino", "cpu", "openvino is not installed: pip install openvino")
    graphs = fp32_graphs(manifest)
    if precision == Precision.INT8 and f"{SCORER}.int8" in manifest.graphs:
        return ServingPlan(
            **common, precision=Precision.INT8, graphs={**graphs, SCORER: manifest.graphs[f"{SCORER}.int8"].file}
        )
    runs = Precision.BF16 if precision == Precision.BF16 and machine.cpu_bf16 else Precision.FP32
    return ServingPlan(**common, precision=runs, graphs=graphs)


def _tensorrt_plan(common, precision, explicit, family, manifest: Manifest, machine: Machine, max_length: int):
    if machine.tensorrt is None:
        return Skipped("tensorrt", "cuda", "TensorRT is not installed: pip install 'rerankrt[gpu]'")
    wanted = precision if explicit else None  # asked for: that engine; else the fastest there is
    if wanted is not None and wanted not in ENGINE_PRECISIONS:
        return Skipped("tensorrt", "cuda", f"TensorRT engines are fp16, bf16 or fp32, not {wanted}")
    engine = select_engine(manifest.engines, machine.compute_capability, machine.tensorrt, wanted)
    if engine is None:
        what = f"{wanted} " if wanted else ""
        flag = f" --precision {wanted}" if wanted else ""
        return Skipped(
            "tensorrt", "cuda",
            f"no {what}TensorRT engine for compute capability {machine.compute_capability} and TensorRT "
            f"{machine.tensorrt} in {common['folder']}; build one with: rerankrt build-engine {common['folder']}{flag}",
        )  # fmt: skip
    if engine.profile.max[1] < max_length:
        return Skipped(
            "tensorrt", "cuda", f"{engine.file} takes sequences up to {engine.profile.max[1]} tokens, the encoder "
            f"makes {max_length}",
        )  # fmt: skip
    return ServingPlan(**common, precision=engine.precision, engine=engine)
