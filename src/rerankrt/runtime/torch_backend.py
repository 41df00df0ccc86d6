"""Torch backend: the family's scorer module itself (the function every graph is exported from)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from rerankrt.artifact import check_source_files
from rerankrt.errors import BackendUnavailableError, UnsupportedModelError
from rerankrt.families import Batch, Family
from rerankrt.model_source import resolve_model
from rerankrt.precision import Precision
from rerankrt.runtime.plan import ServingPlan

DTYPES = {Precision.FP32: torch.float32, Precision.BF16: torch.bfloat16, Precision.FP16: torch.float16}


class TorchBackend:
    name = "torch"

    def __init__(
        self,
        family: Family,
        model_dir: Path,
        device: str = "cpu",
        precision: Precision = Precision.FP32,
        threads: int | None = None,
    ):
        if device == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailableError("torch sees no CUDA device")
        if threads:
            torch.set_num_threads(threads)  # process-wide, as torch has it
        self.device = device
        self.dtype = DTYPES[Precision(precision)]
        self.scorer = family.load_scorer(model_dir, dtype=self.dtype, device=device)
        graphs = family.torch_graphs(self.scorer, device)
        self.pipeline = family.serving_pipeline(Path(model_dir), graphs) if graphs is not None else None

    @classmethod
    def from_plan(cls, plan: ServingPlan, family: Family) -> TorchBackend:
        try:
            weights = resolve_model(plan.weights, plan.revision).path
        except UnsupportedModelError as exc:
            raise BackendUnavailableError(f"torch backend needs the source weights: {exc}") from exc
        if plan.weight_files is not None:  # serving an artifact: only the files its export hashed, unchanged
            check_source_files(weights, dict(plan.weight_files))
        return cls(family, weights, plan.device, plan.precision, plan.threads)

    def run(self, batch: Batch) -> np.ndarray:
        if self.pipeline is not None:  # the family's own pipeline over the scorer's modules (Family.torch_graphs)
            return self.pipeline(batch)
        with torch.inference_mode():
            inputs = {name: torch.from_numpy(values).to(self.device) for name, values in batch.items()}
            return self.scorer(**inputs).float().cpu().numpy()
