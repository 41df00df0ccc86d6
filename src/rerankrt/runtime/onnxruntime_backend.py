"""ONNX Runtime backend: the CUDA execution provider (device "cuda", optionally behind ONNX Runtime's
TensorRT provider) or the CPU one."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from rerankrt.errors import BackendUnavailableError
from rerankrt.families import Family
from rerankrt.runtime.backend import GraphBackend
from rerankrt.runtime.plan import ServingPlan

log = logging.getLogger(__name__)


def providers_for(device: str, available: list[str], tensorrt_ep: bool = False, cache_dir: Path | None = None):
    """The provider list for a session: CPU only, or CUDA (behind TensorRT when asked and present) then CPU."""
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in available:
        raise BackendUnavailableError("onnxruntime has no CUDA execution provider (install onnxruntime-gpu)")
    providers: list = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if tensorrt_ep:
        if "TensorrtExecutionProvider" not in available:
            raise BackendUnavailableError("onnxruntime has no TensorRT execution provider in this build")
        # engines ONNX Runtime builds are cached beside the artifact, so only the first start pays for them
        options = {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache_dir or ".")}
        providers.insert(0, ("TensorrtExecutionProvider", options))
    return providers


SESSION_SETTINGS = {
    "graph_optimization_level": "ORT_ENABLE_ALL",  # fusions onnxruntime applies at load, on top of the export's
    "execution_mode": "ORT_SEQUENTIAL",  # one request batch at a time; parallelism is inside each operator
    "inter_op_num_threads": 1,
}


def session_options(ort, intra_op_threads: int | None):
    """The session options every rerankrt session uses (SESSION_SETTINGS, plus intra-op threads when given)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = SESSION_SETTINGS["inter_op_num_threads"]
    if intra_op_threads:
        options.intra_op_num_threads = intra_op_threads
    return options


class GraphSession:
    """One ONNX graph in an ONNX Runtime session: what `Family.serving_pipeline` runs (a `GraphRunner`)."""

    def __init__(
        self, graph_path: Path, device: str = "cpu", intra_op_threads: int | None = None, tensorrt_ep: bool = False
    ):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailableError("onnxruntime is not installed: pip install rerankrt") from exc
        ort.disable_telemetry_events()  # belt and braces: rerankrt/__init__ sets ORT_DISABLE_TELEMETRY before import
        self.graph_path = Path(graph_path)
        cache_dir = self.graph_path.parent / "onnxruntime-tensorrt-cache"
        providers = providers_for(device, ort.get_available_providers(), tensorrt_ep, cache_dir)
        options = session_options(ort, intra_op_threads)
        self.session = ort.InferenceSession(str(graph_path), options, providers=providers)
        self.provider = self.session.get_providers()[0]
        self.device = "cuda" if self.provider in {"CUDAExecutionProvider", "TensorrtExecutionProvider"} else "cpu"
        if self.device != device:
            raise BackendUnavailableError(f"onnxruntime could not start the CUDA provider for {self.graph_path.name}")
        self.input_names = [i.name for i in self.session.get_inputs()]
        log.debug("onnxruntime session for %s with providers %s", graph_path, self.session.get_providers())

    def run(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> list[np.ndarray]:
        return self.session.run(list(outputs) if outputs else None, dict(feeds))


class OnnxRuntimeBackend(GraphBackend):
    """An artifact's graphs in ONNX Runtime sessions, run in the order the family declares."""

    name = "onnxruntime"

    def __init__(
        self,
        family: Family,
        folder: Path,
        graphs: Mapping[str, str],
        device: str = "cpu",
        threads: int | None = None,
        tensorrt_ep: bool = False,
    ):
        """`graphs`: role -> file in `folder`, for every role the family's pipeline runs."""
        super().__init__(family, folder, graphs, device, lambda path: GraphSession(path, device, threads, tensorrt_ep))
        self.provider = next(iter(self.sessions.values())).provider

    @classmethod
    def from_plan(cls, plan: ServingPlan, family: Family) -> OnnxRuntimeBackend:
        return cls(family, plan.folder, plan.graphs, plan.device, plan.threads, plan.tensorrt_ep)
