"""OpenVINO backend for CPUs: the artifact's own ONNX graphs, read by OpenVINO's ONNX frontend (no other format).

Each graph is compiled for one request at a time on `plan.threads` threads, with dynamic shapes (any batch and
length). The precision hint is always set: OpenVINO computes bf16 by default on CPUs with BF16 instructions, which
would silently turn an fp32 plan into a bf16 one. Nothing is cached or written beside the artifact, and OpenVINO's
telemetry is kept off (`import_openvino`).

Memory stays bounded under any mix of shapes: OpenVINO keeps prepared kernels per input shape in two caches (its
CPU runtime cache, 5,000 entries by default, and oneDNN's primitive cache, 1,024), and a server sees thousands of
(batch, length) shapes, so by default RSS rose ~0.23 MB per new shape on the tiny test model (a soak's RSS rose in
steps at each burst of new batch shapes). Both are capped at SHAPE_CACHE_CAPACITY: RSS then levels off after a few
hundred shapes, with no measured slowdown (docs/benchmarks.md, "Soak").
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from rerankrt.errors import BackendUnavailableError
from rerankrt.families import Family
from rerankrt.precision import Precision
from rerankrt.runtime.backend import GraphBackend
from rerankrt.runtime.plan import ServingPlan

log = logging.getLogger(__name__)

# the plan's precision -> OpenVINO's INFERENCE_PRECISION_HINT
# (int8 graphs carry int8 weights; what is not int8 in them computes in f32)
PRECISION_HINTS = {Precision.FP32: "f32", Precision.BF16: "bf16", Precision.INT8: "f32"}
SHAPE_CACHE_CAPACITY = 256  # prepared kernels kept per input shape, in OpenVINO's and oneDNN's caches each


def import_openvino():
    """The openvino module, imported without its telemetry and with oneDNN's primitive cache capped (at
    SHAPE_CACHE_CAPACITY, read once as oneDNN loads: see the module docstring).

    `import openvino` sends a Google Analytics event ("general_import") and writes a client id under ~/intel unless
    the `openvino_telemetry` package is missing, in which case OpenVINO uses its own no-op stub: so it is made
    missing for this process (a server does not phone home; rerankrt/__init__ does the same for ONNX Runtime).
    """
    if "openvino" not in sys.modules:
        sys.modules.setdefault("openvino_telemetry", None)  # None in sys.modules: `import` raises ImportError
        os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(SHAPE_CACHE_CAPACITY))  # read as oneDNN loads
    try:
        import openvino
    except ImportError as exc:
        raise BackendUnavailableError("openvino is not installed: pip install rerankrt") from exc
    return openvino


def compile_config(threads: int, precision: Precision) -> dict[str, str]:
    """The CPU plugin settings every rerankrt graph is compiled with (latency: one batch at a time)."""
    if precision not in PRECISION_HINTS:
        raise BackendUnavailableError(f"the openvino backend runs fp32, bf16 and int8 plans, not {precision}")
    return {
        "INFERENCE_NUM_THREADS": str(threads),
        "NUM_STREAMS": "1",
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": PRECISION_HINTS[precision],
        "CPU_RUNTIME_CACHE_CAPACITY": str(SHAPE_CACHE_CAPACITY),
    }


class OpenVinoGraph:
    """One ONNX graph compiled by OpenVINO for the CPU: what `Family.serving_pipeline` runs (a `GraphRunner`)."""

    def __init__(self, core, graph_path: Path, config: Mapping[str, str]):
        self.graph_path = Path(graph_path)
        try:  # external data files are read from beside the graph
            self.compiled = core.compile_model(core.read_model(str(self.graph_path)), "CPU", dict(config))
        except RuntimeError as exc:  # e.g. ONNX Runtime's own fused operators (the dynamic int8 recipe)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BackendUnavailableError(f"openvino cannot load {self.graph_path.name}: {first}") from exc
        self.input_names = [port.get_any_name() for port in self.compiled.inputs]
        self.output_names = [port.get_any_name() for port in self.compiled.outputs]
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()  # an infer request runs one inference at a time
        log.debug("openvino compiled %s with %s", graph_path, config)

    def run(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> list[np.ndarray]:
        with self._lock:
            results = self._request.infer({name: feeds[name] for name in self.input_names}, share_outputs=False)
            values = list(results.to_tuple())
        if not outputs:
            return values
        return [values[self.output_names.index(name)] for name in outputs]


class OpenVinoBackend(GraphBackend):
    """An artifact's graphs compiled by OpenVINO for the CPU, run in the order the family declares."""

    name = "openvino"

    def __init__(
        self,
        family: Family,
        folder: Path,
        graphs: Mapping[str, str],
        threads: int = 1,
        precision: Precision = Precision.FP32,
    ):
        """`graphs`: role -> file in `folder`; `precision`: fp32, or bf16 (the hint, on a CPU with BF16)."""
        core = import_openvino().Core()
        config = compile_config(threads, Precision(precision))
        self.precision = Precision(precision)
        super().__init__(family, folder, graphs, "cpu", lambda path: OpenVinoGraph(core, path, config))

    @classmethod
    def from_plan(cls, plan: ServingPlan, family: Family) -> OpenVinoBackend:
        return cls(family, plan.folder, plan.graphs, plan.threads, plan.precision)
