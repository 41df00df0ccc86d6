"""TensorRT backend: the artifact's engine for this GPU and TensorRT version, run on a CUDA stream.

The engine stands for the one graph the family's serving runs (`ServingPlan.graphs`: role -> engine file), and
the family's `serving_pipeline` runs it like any other graph (`EngineGraph` is a `GraphRunner`). Device memory
and the stream come from torch (already a dependency), so no extra CUDA binding is needed. Each input is
converted to the type the engine declares for it (`get_tensor_dtype`: int64 for graphs parsed by TensorRT >= 9,
int32 for others); a batch with more rows than the engine's profile allows is split into several executions.
Every TensorRT call that can fail is checked and the error names the step, the tensor and the engine.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np

from rerankrt.artifact import Engine
from rerankrt.errors import BackendUnavailableError
from rerankrt.families import Batch, Family
from rerankrt.runtime.plan import ServingPlan
from rerankrt.tensorrt_engines import split_rows

log = logging.getLogger(__name__)

# TensorRT DataType name -> torch dtype name
TORCH_DTYPES = {
    "FLOAT": "float32",
    "HALF": "float16",
    "BF16": "bfloat16",
    "INT32": "int32",
    "INT64": "int64",
    "INT8": "int8",
    "UINT8": "uint8",
    "BOOL": "bool",
}


class EngineError(RuntimeError):
    """A TensorRT call failed while running an engine (a server fault: logged, never shown to a client)."""


class EngineRunner:
    """One deserialized engine and its execution context, every call checked. Device-agnostic (tensors on
    `device`, executed on the stream handle given), so it runs against a stand-in TensorRT in the tests."""

    def __init__(self, trt, torch, serialized: bytes, entry: Engine, device: str = "cuda"):
        self.torch, self.entry, self.device = torch, entry, device
        self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(serialized)
        if self.engine is None:
            raise BackendUnavailableError(
                f"TensorRT {trt.__version__} could not load {entry.file} (built with TensorRT {entry.tensorrt} for "
                f"compute capability {entry.compute_capability}): rebuild it with `rerankrt build-engine ARTIFACT`, "
                "or start `rerankrt serve` without --no-build-engine to rebuild it there"
            )
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise BackendUnavailableError(
                f"TensorRT could not create an execution context for {entry.file} (out of GPU memory? the engine "
                f"needs its profile's activations: max batch {entry.profile.max[0]} x {entry.profile.max[1]} tokens)"
            )
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(outputs) != 1:
            raise BackendUnavailableError(f"{entry.file} has outputs {outputs}; a scorer engine has one")
        self.output = outputs[0]
        self.dtypes = {name: self._torch_dtype(trt, name) for name in names}

    def _torch_dtype(self, trt, name: str):
        declared = self.engine.get_tensor_dtype(name)
        kind = next((k for k in TORCH_DTYPES if getattr(trt.DataType, k, None) == declared), None)
        if kind is None:
            raise BackendUnavailableError(f"{self.entry.file}: tensor {name!r} has type {declared}, unsupported here")
        return getattr(self.torch, TORCH_DTYPES[kind])

    def execute(self, batch: Batch, rows: slice, stream_handle: int):
        """Run rows `rows` of `batch`; return the output tensor on the device (valid once the stream is done)."""
        torch = self.torch
        missing = [name for name in self.inputs if name not in batch]
        if missing:
            raise EngineError(f"{self.entry.file} takes inputs {self.inputs}; the batch lacks {missing}")
        tensors = {}
        for name in self.inputs:
            values = np.ascontiguousarray(batch[name][rows])
            tensor = torch.from_numpy(values).to(self.device, dtype=self.dtypes[name], non_blocking=True)
            tensors[name] = tensor
            if not self.context.set_input_shape(name, tuple(tensor.shape)):
                raise EngineError(
                    f"TensorRT refused shape {tuple(tensor.shape)} for input {name!r} of {self.entry.file} "
                    f"(set_input_shape; the profile takes {self.entry.profile.min} to {self.entry.profile.max})"
                )
            self._address(name, tensor)
        shape = tuple(self.context.get_tensor_shape(self.output))
        if any(d < 0 for d in shape):
            raise EngineError(f"TensorRT could not infer the shape of output {self.output!r} of {self.entry.file}")
        out = torch.empty(shape, dtype=self.dtypes[self.output], device=self.device)
        self._address(self.output, out)
        if not self.context.execute_async_v3(stream_handle):
            raise EngineError(f"TensorRT execution of {self.entry.file} failed (execute_async_v3)")
        self.bound = tensors  # kept alive until the stream has run
        return out

    def _address(self, name: str, tensor) -> None:
        if not self.context.set_tensor_address(name, tensor.data_ptr()):
            raise EngineError(f"TensorRT refused the address of {name!r} for {self.entry.file} (set_tensor_address)")


class EngineGraph:
    """An engine as the family's pipeline runs a graph (a `GraphRunner`): its one output for all rows, the rows
    split into executions of at most the profile's batch, each on the stream and waited for."""

    def __init__(self, runner: EngineRunner, stream):
        self.runner, self.stream = runner, stream
        self.input_names = runner.inputs
        self.max_rows = runner.entry.profile.max[0]

    def run(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> list[np.ndarray]:
        rows = len(next(iter(feeds.values())))
        return [np.concatenate([self._execute(feeds, part) for part in split_rows(rows, self.max_rows)])]

    def _execute(self, feeds: Mapping[str, np.ndarray], rows: slice) -> np.ndarray:
        torch = self.runner.torch
        with torch.cuda.stream(self.stream):
            out = self.runner.execute(feeds, rows, self.stream.cuda_stream)
        self.stream.synchronize()
        return out.float().cpu().numpy()


class TensorRTBackend:
    name = "tensorrt"
    device = "cuda"

    def __init__(self, plan: ServingPlan, family: Family | None = None):
        """The engine the plan chose (for this GPU, TensorRT version and precision; see `runtime.plan`), run by
        `family`'s serving pipeline as the graph of the role the plan names (None: its output is the logits)."""
        try:
            import tensorrt as trt
        except ImportError as exc:
            raise BackendUnavailableError("TensorRT is not installed: pip install 'rerankrt[gpu]'") from exc
        import torch

        if not torch.cuda.is_available():
            raise BackendUnavailableError("no CUDA device for TensorRT")
        engine = plan.engine
        self.entry: Engine = engine
        self.stream = torch.cuda.Stream()
        runner = EngineRunner(trt, torch, (plan.folder / engine.file).read_bytes(), engine)
        self.graphs = {role: EngineGraph(runner, self.stream) for role in plan.graphs or {"engine": engine.file}}
        if family is None:
            graph = next(iter(self.graphs.values()))
            self.run = lambda batch: graph.run(batch)[0].reshape(-1)
        else:
            self.run = family.serving_pipeline(plan.folder, self.graphs)
        log.info("tensorrt engine %s (%s, profile %s)", engine.file, engine.precision, engine.profile.model_dump())

    @classmethod
    def from_plan(cls, plan: ServingPlan, family: Family) -> TensorRTBackend:
        return cls(plan, family)
