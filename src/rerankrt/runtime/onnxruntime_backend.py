"""ONNX Runtime backend: the CUDA execution provider (device "cuda") or the CPU one."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from rerankrt.errors import BackendUnavailableError
from rerankrt.families import Batch

log = logging.getLogger(__name__)


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, graph_path: Path, device: str = "cpu", intra_op_threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailableError("onnxruntime is not installed: pip install rerankrt") from exc
        providers = ["CPUExecutionProvider"]
        if device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendUnavailableError("onnxruntime has no CUDA execution provider (install onnxruntime-gpu)")
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if intra_op_threads:
            options.intra_op_num_threads = intra_op_threads
        self.session = ort.InferenceSession(str(graph_path), options, providers=providers)
        self.device = "cuda" if self.session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        if self.device != device:
            raise BackendUnavailableError(f"onnxruntime could not start the CUDA provider for {graph_path.name}")
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_name = self.session.get_outputs()[0].name
        log.debug("onnxruntime session for %s with providers %s", graph_path, self.session.get_providers())

    def run(self, batch: Batch) -> np.ndarray:
        feeds = {name: batch[name] for name in self.input_names}
        (logits,) = self.session.run([self.output_name], feeds)
        return logits.reshape(-1).astype(np.float32, copy=False)
