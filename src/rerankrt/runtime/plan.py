"""The serving plan: which backend runs which graph, engine or weights, on which device, in which precision.

`plan_serving` turns (the artifact's manifest or a plain model folder, what the user asked for, this machine)
into candidate plans in the order `--backend auto` tries them; each candidate that cannot run here is a
`Skipped` with its reason. Backends receive a plan and nothing else, so one function decides what serves; which
of the artifact's graphs a plan runs (and whether rows reuse their prefixes) is the family's choice
(`Family.serving_graphs`), never decided here.
Nothing here loads a model or imports a backend library: planning is testable on any machine.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from rerankrt.artifact import Engine, Manifest
from rerankrt.engines import select_engine
from rerankrt.errors import ArtifactError, BackendUnavailableError
from rerankrt.families import Family
from rerankrt.families.base import base_role, variant_role
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
    graphs: Mapping[str, str] = field(default_factory=dict)  # role the family's pipeline runs -> file (engine file)
    engine: Engine | None = None  # tensorrt
    weights: str | None = None  # torch: a folder or Hub id holding the original weights
    revision: str | None = None  # torch: the Hub revision of `weights`
    weight_files: Mapping[str, str] | None = None  # torch from an artifact: the files `weights` must hold, hashed
    threads: int = 1  # intra-op threads on CPU
    tensorrt_ep: bool = False  # onnxruntime on CUDA behind ONNX Runtime's TensorRT provider
    prefix_reuse: bool = False  # rows carry their prefix (the encoder marks it) and the family's pipeline reuses it

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
    prefix_reuse: bool = True  # the family's prefix reuse, where its choice of graphs has it


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
            out.append(_torch_plan(common, precision, explicit, manifest, model_ref, request.prefix_reuse))
        elif manifest is None:
            out.append(Skipped(backend, device, f"{model_ref} is a plain model folder; run `rerankrt export` first"))
        elif backend == "onnxruntime":
            out.append(_onnxruntime_plan(common, precision, family, manifest, machine, request))
        elif backend == "openvino":
            out.append(_openvino_plan(common, precision, family, manifest, machine, request.prefix_reuse))
        else:
            out.append(_tensorrt_plan(common, precision, explicit, family, manifest, machine, request))
    return out


def _graph_plan(common: dict, family: Family, manifest: Manifest, graphs: Precision, reuse: bool,
                computes: Precision | None = None, **fields) -> ServingPlan | Skipped:  # fmt: skip
    """A plan running the artifact's graphs of precision `graphs` that the family chooses (computing in `computes`,
    default `graphs`), or Skipped with the family's reason."""
    choice = family.serving_graphs(list(manifest.graphs), graphs, reuse)
    if isinstance(choice, str):
        return Skipped(common["backend"], common["device"], choice)
    files = {role: manifest.graphs[source].file for role, source in choice.graphs.items()}
    return ServingPlan(**common, precision=computes or graphs, graphs=files, prefix_reuse=choice.prefix_reuse, **fields)


def _torch_plan(common: dict, precision: Precision, explicit: bool, manifest: Manifest | None, model_ref, reuse: bool):
    """bf16 weights for a bf16 artifact, and on a GPU unless fp32 was asked for; fp32 otherwise. The family's torch
    scorer reuses prefixes itself whenever the encoder marks them."""
    cuda_default = common["device"] == "cuda" and not explicit
    dtype = Precision.BF16 if precision == Precision.BF16 or cuda_default else Precision.FP32
    common = {**common, "prefix_reuse": reuse}
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


def _onnxruntime_plan(common: dict, precision: Precision, family: Family, manifest: Manifest, machine: Machine,
                      request: Request):  # fmt: skip
    """The artifact's variant for this device (int8 on CPU, fp16 on CUDA) when it was exported with it, else its
    fp32 graphs."""
    device = common["device"]
    if device == "cuda" and "CUDAExecutionProvider" not in machine.onnxruntime_providers:
        return Skipped("onnxruntime", device, "onnxruntime has no CUDA execution provider (install onnxruntime-gpu)")
    tensorrt_ep = request.tensorrt_ep and device == "cuda"
    if tensorrt_ep and "TensorrtExecutionProvider" not in machine.onnxruntime_providers:
        return Skipped("onnxruntime", device, "onnxruntime has no TensorRT execution provider in this build")
    variant = ONNXRUNTIME_VARIANT[device]
    if precision == variant:
        plan = _graph_plan(common, family, manifest, variant, request.prefix_reuse, tensorrt_ep=tensorrt_ep)
        if isinstance(plan, ServingPlan):
            return plan
    return _graph_plan(common, family, manifest, Precision.FP32, request.prefix_reuse, tensorrt_ep=tensorrt_ep)


def _openvino_plan(common: dict, precision: Precision, family: Family, manifest: Manifest, machine: Machine,
                   reuse: bool):  # fmt: skip
    """The fp32 graphs, computed in bf16 (OpenVINO's precision hint) for a bf16 artifact on a CPU with BF16, in fp32
    otherwise: without BF16 instructions bf16 is emulated, slower than fp32 (OPENVINO_BF16 in docs/precision.md).
    An int8 artifact: its int8 graphs, which OpenVINO reads when their recipe uses standard operators (blockwise,
    mixed; the export gate then checked OpenVINO's run too); the dynamic recipe's fused ONNX Runtime operators fail
    to load, and ONNX Runtime serves it."""
    if machine.openvino is None:
        return Skipped("openvino", "cpu", "openvino is not installed: pip install openvino")
    if precision == Precision.INT8:
        plan = _graph_plan(common, family, manifest, Precision.INT8, reuse)
        if isinstance(plan, ServingPlan):
            return plan
    runs = Precision.BF16 if precision == Precision.BF16 and machine.cpu_bf16 else Precision.FP32
    return _graph_plan(common, family, manifest, Precision.FP32, reuse, computes=runs)


def _tensorrt_plan(common, precision, explicit, family, manifest: Manifest, machine: Machine, request: Request):
    """The engine for this GPU and TensorRT version (of the precision asked for, else the fastest), running the one
    graph the family chooses among those its engines were built from."""
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
    if engine.profile.max[1] < request.max_length:
        return Skipped(
            "tensorrt", "cuda", f"{engine.file} takes sequences up to {engine.profile.max[1]} tokens, the encoder "
            f"makes {request.max_length}",
        )  # fmt: skip
    built_from = [variant_role(base_role(role), engine.precision) for role, graph in manifest.graphs.items()
                  if graph.file == engine.graph]  # fmt: skip
    choice = family.serving_graphs(built_from, engine.precision, request.prefix_reuse)
    if isinstance(choice, str):
        return Skipped("tensorrt", "cuda", f"{engine.file} (built from {engine.graph}): {choice}")
    if len(choice.graphs) != 1:
        return Skipped("tensorrt", "cuda", f"an engine runs one graph; this serving runs {', '.join(choice.graphs)}")
    graphs = {role: engine.file for role in choice.graphs}  # the engine stands for the graph of that role
    return ServingPlan(**common, precision=engine.precision, engine=engine, graphs=graphs,
                       prefix_reuse=choice.prefix_reuse)  # fmt: skip
