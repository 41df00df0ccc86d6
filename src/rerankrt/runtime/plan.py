"""The serving plan: which backend runs which graph, engine or weights, on which device, in which precision.

`plan_serving` turns (the artifact's manifest or a plain model folder, what the user asked for, this machine)
into candidate plans in the order `--backend auto` tries them; each candidate that cannot run here is a
`Skipped` with its reason. Backends receive a plan and nothing else, so one function decides what serves; which
of the artifact's graphs a plan runs (and whether rows reuse their prefixes) is the family's choice
(`Family.serving_graphs`), never decided here.

`BACKEND_TABLE` holds one row per backend: its devices, why a `Machine` cannot run it, how it plans, where `auto`
tries it, and the class that opens it (imported only then). `--backend`'s choices, `auto`'s order and `rerankrt
info`'s list of backends are derived from it: a backend is its module and its row.
Nothing here loads a model or imports a backend library: planning is testable on any machine.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from rerankrt.artifact import Engine, Manifest
from rerankrt.errors import ArtifactError, BackendUnavailableError
from rerankrt.families import Family
from rerankrt.families.base import base_role, variant_role
from rerankrt.precision import ENGINE_PRECISIONS, Precision
from rerankrt.runtime.machine import Machine
from rerankrt.tensorrt_engines import select_engine

DEVICES = ("cuda", "cpu")  # `auto` tries every GPU path first, then the CPU ones
# the graph variant ONNX Runtime runs per device, when the artifact was exported for it
ONNXRUNTIME_VARIANT = {"cpu": Precision.INT8, "cuda": Precision.FP16}


@dataclass(frozen=True)
class ServingPlan:
    """Everything a backend needs to know to load."""

    backend: str  # a BACKEND_TABLE row's name
    device: str  # cpu | cuda
    precision: Precision  # what computes
    folder: Path | None = None  # the artifact folder (None for a plain model)
    graphs: Mapping[str, str] = field(default_factory=dict)  # role the family's pipeline runs -> file (engine file)
    engine: Engine | None = None  # the TensorRT engine (backend tensorrt)
    weights: str | None = None  # torch: a folder or Hub id holding the original weights
    revision: str | None = None  # torch: the Hub revision of `weights`
    weight_files: Mapping[str, str] | None = None  # torch from an artifact: the files `weights` must hold, hashed
    threads: int = 1  # intra-op threads on CPU
    tensorrt_ep: bool = False  # onnxruntime on CUDA behind ONNX Runtime's TensorRT provider
    prefix_reuse: bool = False  # rows carry their prefix (the encoder marks it) and the family's pipeline reuses it
    packed_tokens: int | None = None  # torch: padding-free packed streams of at most this many tokens (None: padded)
    cuda_graphs: bool = False  # torch on CUDA, packed: CUDA graphs for bucketed token counts

    def describe(self) -> str:
        what = self.engine.file if self.engine else ", ".join(self.graphs.values()) or self.weights
        packed = f", packed streams <= {self.packed_tokens} tokens" if self.packed_tokens else ""
        graphs = ", CUDA graphs" if self.cuda_graphs else ""
        return f"{self.backend} on {self.device}, {self.precision.value}, {what}{packed}{graphs}"


@dataclass(frozen=True)
class Skipped:
    backend: str
    device: str
    reason: str


@dataclass(frozen=True)
class Request:
    """What the user asked for (serve flags / RerankerSettings)."""

    backend: str = "auto"
    precision: Precision | None = None  # None: the artifact's own
    max_length: int = 512  # what the encoder makes: engines must take it
    threads: int | None = None
    tensorrt_ep: bool = False
    prefix_reuse: bool = True  # the family's prefix reuse, where its choice of graphs has it
    packed: bool | None = None  # torch: padding-free packed batches (None: on for CUDA, off on CPU)
    cuda_graphs: bool = True  # torch on CUDA with packed batches: CUDA graphs for bucketed token counts
    max_batch_tokens: int = 16384  # a packed stream's token budget


@dataclass(frozen=True)
class PlanInputs:
    """What a backend's planner is given: the family, the request, this machine, the artifact (`manifest` and
    `folder`; None for a plain model, `model_ref`), the precision it serves in and whether that was asked for."""

    family: Family
    request: Request
    machine: Machine
    precision: Precision
    explicit: bool
    threads: int
    manifest: Manifest | None = None
    folder: Path | None = None
    model_ref: str | None = None

    def common(self, backend: str, device: str) -> dict:
        return {"backend": backend, "device": device, "threads": self.threads, "folder": self.folder}

    def graph_plan(
        self, backend: str, device: str, graphs: Precision, computes: Precision | None = None, **fields
    ) -> ServingPlan | Skipped:
        """A plan running the artifact's graphs of precision `graphs` that the family chooses (computing in
        `computes`, default `graphs`), or Skipped with the family's reason."""
        choice = self.family.serving_graphs(list(self.manifest.graphs), graphs, self.request.prefix_reuse)
        if isinstance(choice, str):
            return Skipped(backend, device, choice)
        files = {role: self.manifest.graphs[source].file for role, source in choice.graphs.items()}
        return ServingPlan(**self.common(backend, device), precision=computes or graphs, graphs=files,
                           prefix_reuse=choice.prefix_reuse, **fields)  # fmt: skip


def _available(machine: Machine, device: str) -> str | None:
    return None


def _serves_every_family(family: Family) -> str | None:
    return None


@dataclass(frozen=True)
class BackendRow:
    """One backend: all that planning, `auto`, the CLI and `rerankrt info` know of it."""

    name: str
    devices: tuple[str, ...]
    opens: str  # "module:Class": `Class.from_plan(plan, family)` loads it; the module is imported only then
    plan: Callable[[PlanInputs, str], ServingPlan | Skipped]  # (inputs, device) -> the candidate
    unavailable: Callable[[Machine, str], str | None] = _available  # why this machine cannot run it on a device
    package: str | None = None  # a distribution it needs: Machine.detect finds its version, else it is unavailable
    refuses: Callable[[Family], str | None] = _serves_every_family  # why it cannot serve a family at all
    plain_models: bool = False  # serves a model folder or Hub id as it is (else: `rerankrt export` first)
    auto_rank: int = 0  # where `auto` tries it among one device's backends, lowest first (ties: table order)
    auto_rank_for: Mapping[tuple[str, Precision], int] = field(default_factory=dict)  # (device, precision) -> rank

    def machine_problem(self, machine: Machine, device: str) -> str | None:
        """Why this machine cannot run it on `device` (its package missing, then its own check), or None."""
        if self.package and machine.package(self.package) is None:
            return f"{self.package} is not installed: pip install {self.package}"
        return self.unavailable(machine, device)

    def rank(self, device: str, precision: Precision) -> int:
        return self.auto_rank_for.get((device, Precision(precision)), self.auto_rank)

    def open(self, plan: ServingPlan, family: Family):
        module, _, name = self.opens.partition(":")
        return getattr(importlib.import_module(module), name).from_plan(plan, family)


# --- each backend's planner ----------------------------------------------------------------------------------


def _torch_plan(inputs: PlanInputs, device: str) -> ServingPlan | Skipped:
    """bf16 weights for a bf16 artifact, and on a GPU unless fp32 was asked for; fp32 otherwise. The family's torch
    scorer reuses prefixes itself whenever the encoder marks them. Padding-free packed batches (on CUDA unless
    turned off; on CPU only when asked for: not measured faster there) with CUDA graphs on CUDA; a family without
    a packed path stays padded (the backend logs why)."""
    request = inputs.request
    cuda_default = device == "cuda" and not inputs.explicit
    dtype = Precision.BF16 if inputs.precision == Precision.BF16 or cuda_default else Precision.FP32
    packed = request.packed if request.packed is not None else device == "cuda"
    common = {**inputs.common("torch", device), "precision": dtype, "prefix_reuse": request.prefix_reuse,
              "packed_tokens": request.max_batch_tokens if packed else None,
              "cuda_graphs": packed and device == "cuda" and request.cuda_graphs}  # fmt: skip
    if inputs.manifest is None:
        return ServingPlan(**common, weights=inputs.model_ref)
    source = inputs.manifest.source  # the original weights: the export's local folder, else the Hub revision
    if not source.files:
        return Skipped(
            "torch", device, "the artifact does not hash its source model's files, which the torch backend "
            "would read; re-export it with this rerankrt (or serve the model folder itself)",
        )  # fmt: skip
    weights = source.path if source.path and Path(source.path).is_dir() else source.ref
    revision = None if weights == source.path else source.revision
    return ServingPlan(**common, weights=weights, revision=revision, weight_files=dict(source.files))


def _onnxruntime_unavailable(machine: Machine, device: str) -> str | None:
    if device == "cuda" and "CUDAExecutionProvider" not in machine.onnxruntime_providers:
        return "onnxruntime has no CUDA execution provider (install onnxruntime-gpu)"
    return None


def _onnxruntime_plan(inputs: PlanInputs, device: str) -> ServingPlan | Skipped:
    """The artifact's variant for this device (int8 on CPU, fp16 on CUDA) when it was exported with it, else its
    fp32 graphs."""
    tensorrt_ep = inputs.request.tensorrt_ep and device == "cuda"
    if tensorrt_ep and "TensorrtExecutionProvider" not in inputs.machine.onnxruntime_providers:
        return Skipped("onnxruntime", device, "onnxruntime has no TensorRT execution provider in this build")
    variant = ONNXRUNTIME_VARIANT[device]
    if inputs.precision == variant:
        plan = inputs.graph_plan("onnxruntime", device, variant, tensorrt_ep=tensorrt_ep)
        if isinstance(plan, ServingPlan):
            return plan
    return inputs.graph_plan("onnxruntime", device, Precision.FP32, tensorrt_ep=tensorrt_ep)


def _openvino_unavailable(machine: Machine, device: str) -> str | None:
    return "openvino is not installed: pip install openvino" if machine.openvino is None else None


def _openvino_plan(inputs: PlanInputs, device: str) -> ServingPlan | Skipped:
    """The fp32 graphs, computed in bf16 (OpenVINO's precision hint) for a bf16 artifact on a CPU with BF16, in fp32
    otherwise: without BF16 instructions bf16 is emulated, slower than fp32 (OPENVINO_BF16 in docs/precision.md).
    An int8 artifact: its int8 graphs, which OpenVINO reads when their recipe uses standard operators (blockwise,
    mixed; the export gate then checked OpenVINO's run too); the dynamic recipe's fused ONNX Runtime operators fail
    to load, and ONNX Runtime serves it."""
    if inputs.precision == Precision.INT8:
        plan = inputs.graph_plan("openvino", device, Precision.INT8)
        if isinstance(plan, ServingPlan):
            return plan
    runs = Precision.BF16 if inputs.precision == Precision.BF16 and inputs.machine.cpu_bf16 else Precision.FP32
    return inputs.graph_plan("openvino", device, Precision.FP32, computes=runs)


def _tensorrt_unavailable(machine: Machine, device: str) -> str | None:
    return "TensorRT is not installed: pip install 'rerankrt[gpu]'" if machine.tensorrt is None else None


def _tensorrt_plan(inputs: PlanInputs, device: str) -> ServingPlan | Skipped:
    """The engine for this GPU and TensorRT version (of the precision asked for, else the fastest), running the one
    graph the family chooses among those its engines were built from."""
    machine, manifest, folder = inputs.machine, inputs.manifest, inputs.folder
    wanted = inputs.precision if inputs.explicit else None  # asked for: that engine; else the fastest there is
    if wanted is not None and wanted not in ENGINE_PRECISIONS:
        return Skipped("tensorrt", device, f"TensorRT engines are fp16, bf16 or fp32, not {wanted}")
    engine = select_engine(manifest.engines, machine.compute_capability, machine.tensorrt, wanted)
    if engine is None:
        what = f"{wanted} " if wanted else ""
        flag = f" --precision {wanted}" if wanted else ""
        return Skipped(
            "tensorrt", device,
            f"no {what}TensorRT engine for compute capability {machine.compute_capability} and TensorRT "
            f"{machine.tensorrt} in {folder}; build one with: rerankrt build-engine {folder}{flag}",
        )  # fmt: skip
    if engine.profile.max[1] < inputs.request.max_length:
        return Skipped(
            "tensorrt", device, f"{engine.file} takes sequences up to {engine.profile.max[1]} tokens, the encoder "
            f"makes {inputs.request.max_length}",
        )  # fmt: skip
    built_from = [variant_role(base_role(role), engine.precision) for role, graph in manifest.graphs.items()
                  if graph.file == engine.graph]  # fmt: skip
    choice = inputs.family.serving_graphs(built_from, engine.precision, inputs.request.prefix_reuse)
    if isinstance(choice, str):
        return Skipped("tensorrt", device, f"{engine.file} (built from {engine.graph}): {choice}")
    if len(choice.graphs) != 1:
        return Skipped("tensorrt", device, f"an engine runs one graph; this serving runs {', '.join(choice.graphs)}")
    graphs = {role: engine.file for role in choice.graphs}  # the engine stands for the graph of that role
    return ServingPlan(**inputs.common("tensorrt", device), precision=engine.precision, engine=engine, graphs=graphs,
                       prefix_reuse=choice.prefix_reuse)  # fmt: skip


BACKEND_TABLE: tuple[BackendRow, ...] = (
    BackendRow(
        "tensorrt", ("cuda",), "rerankrt.runtime.tensorrt_backend:TensorRTBackend", _tensorrt_plan,
        unavailable=_tensorrt_unavailable, refuses=lambda family: family.tensorrt_problem, auto_rank=0,
    ),
    BackendRow(
        "onnxruntime", ("cuda", "cpu"), "rerankrt.runtime.onnxruntime_backend:OnnxRuntimeBackend", _onnxruntime_plan,
        unavailable=_onnxruntime_unavailable, auto_rank=1,
        # no bf16 CPU kernels (it would serve the fp32 graph): torch's bf16 weights go first
        auto_rank_for={("cpu", Precision.BF16): 3},
    ),
    BackendRow(  # runs the same fp32 graph faster than ONNX Runtime on CPUs
        "openvino", ("cpu",), "rerankrt.runtime.openvino_backend:OpenVinoBackend", _openvino_plan,
        unavailable=_openvino_unavailable, auto_rank=0,
    ),
    BackendRow(
        "torch", ("cuda", "cpu"), "rerankrt.runtime.torch_backend:TorchBackend", _torch_plan,
        plain_models=True, auto_rank=2,
    ),
)  # fmt: skip
BACKENDS = tuple(row.name for row in BACKEND_TABLE)
BACKEND_CHOICES = ("auto", *BACKENDS)


def this_machine() -> Machine:
    """This machine, with the versions of the packages the backend rows need (`BackendRow.package`)."""
    return Machine.detect(row.package for row in BACKEND_TABLE if row.package)


def backend_row(name: str) -> BackendRow:
    for row in BACKEND_TABLE:
        if row.name == name:
            return row
    choices = ", ".join(("auto", *(row.name for row in BACKEND_TABLE)))
    raise BackendUnavailableError(f"unknown backend {name!r}; choose one of {choices}")


def auto_order(precision: Precision | str) -> tuple[tuple[str, str], ...]:
    """(backend, device) in the order `auto` tries them for an artifact of `precision`: every GPU path, then the
    CPU ones, each device's backends by their rows' rank (bf16: torch ahead of ONNX Runtime on CPU, OpenVINO first,
    bf16 through its precision hint where the CPU computes bf16)."""
    return tuple(
        (row.name, device)
        for device in DEVICES
        for row in sorted((r for r in BACKEND_TABLE if device in r.devices), key=lambda r: r.rank(device, precision))
    )


AUTO_ORDER = auto_order(Precision.FP32)


def availability(machine: Machine) -> dict[str, dict[str, str]]:
    """backend -> device -> "available", or why this machine cannot run it there (`rerankrt info`)."""
    return {
        row.name: {
            device: _device_problem(machine, device) or row.machine_problem(machine, device) or "available"
            for device in row.devices
        }
        for row in BACKEND_TABLE
    }


def _device_problem(machine: Machine, device: str) -> str | None:
    return "no CUDA device" if device == "cuda" and not machine.cuda else None


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
    if request.backend != "auto":
        backend_row(request.backend)  # an unknown name is refused with the choices
    threads = request.threads or machine.physical_cores
    if manifest is None:
        if request.precision not in (None, Precision.FP32):
            raise ArtifactError(
                f"precision {request.precision} needs an artifact: rerankrt export --precision {request.precision}"
            )
        precision = Precision.FP32
    else:
        precision = serving_precision(manifest, request.precision)
    explicit = request.precision is not None
    inputs = PlanInputs(family, request, machine, precision, explicit, threads, manifest, folder, model_ref)
    out = _candidates(inputs)
    if manifest is not None and precision != Precision.FP32 and not explicit and request.backend == "auto":
        # where the variant's plans fail to load or miss the self-check here, the fp32 graphs still serve
        fp32 = _candidates(PlanInputs(family, request, machine, Precision.FP32, False, threads, manifest, folder))
        out += [plan for plan in fp32 if isinstance(plan, ServingPlan) and plan not in out]
    return out


def _candidates(inputs: PlanInputs) -> list[ServingPlan | Skipped]:
    out: list[ServingPlan | Skipped] = []
    for name, device in auto_order(inputs.precision):
        if inputs.request.backend not in ("auto", name):
            continue
        row = backend_row(name)
        if problem := row.refuses(inputs.family) or _device_problem(inputs.machine, device):
            out.append(Skipped(name, device, problem))
        elif inputs.manifest is None and not row.plain_models:
            plain = f"{inputs.model_ref} is a plain model folder; run `rerankrt export` first"
            out.append(Skipped(name, device, plain))
        elif problem := row.machine_problem(inputs.machine, device):
            out.append(Skipped(name, device, problem))
        else:
            out.append(row.plan(inputs, device))
    return out
