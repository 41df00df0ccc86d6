"""TensorRT backend: the artifact's engine for this GPU and TensorRT version, run on a CUDA stream.

Device memory and the stream come from torch (already a dependency), so no
extra CUDA binding is needed. Inputs are bound as int64; a batch with more rows
than the engine's profile allows is split into several executions.
"""

from __future__ import annotations

import logging

import numpy as np

from rerankrt.artifact import Engine
from rerankrt.engines import split_rows
from rerankrt.errors import BackendUnavailableError
from rerankrt.families import Batch
from rerankrt.runtime.plan import ServingPlan

log = logging.getLogger(__name__)


class TensorRTBackend:
    name = "tensorrt"
    device = "cuda"

    def __init__(self, plan: ServingPlan):
        """The engine the plan chose (for this GPU, TensorRT version and precision; see `runtime.plan`)."""
        try:
            import tensorrt as trt
        except ImportError as exc:
            raise BackendUnavailableError("TensorRT is not installed: pip install 'rerankrt[gpu]'") from exc
        import torch

        if not torch.cuda.is_available():
            raise BackendUnavailableError("no CUDA device for TensorRT")
        engine = plan.engine
        folder = plan.folder
        self.torch = torch
        self.entry: Engine = engine
        self.max_rows = engine.profile.max[0]
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine((folder / engine.file).read_bytes())
        if self.engine is None:
            raise BackendUnavailableError(f"TensorRT could not load {engine.file}")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        self.output_dtype = {
            trt.DataType.FLOAT: torch.float32,
            trt.DataType.HALF: torch.float16,
            trt.DataType.BF16: torch.bfloat16,
        }[self.engine.get_tensor_dtype(self.output)]
        log.info("tensorrt engine %s (%s, profile %s)", engine.file, engine.precision, engine.profile.model_dump())

    def run(self, batch: Batch) -> np.ndarray:
        rows = len(next(iter(batch.values())))
        return np.concatenate([self._execute(batch, part) for part in split_rows(rows, self.max_rows)])

    def _execute(self, batch: Batch, rows: slice) -> np.ndarray:
        torch = self.torch
        with torch.cuda.stream(self.stream):
            tensors = {
                name: torch.from_numpy(np.ascontiguousarray(batch[name][rows])).to("cuda", non_blocking=True)
                for name in self.inputs
            }
            for name, tensor in tensors.items():
                self.context.set_input_shape(name, tuple(tensor.shape))
                self.context.set_tensor_address(name, tensor.data_ptr())
            out = torch.empty(tuple(self.context.get_tensor_shape(self.output)), dtype=self.output_dtype, device="cuda")
            self.context.set_tensor_address(self.output, out.data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError(f"TensorRT execution of {self.entry.file} failed")
        self.stream.synchronize()
        return out.float().reshape(-1).cpu().numpy()
