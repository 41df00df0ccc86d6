"""Torch backend: the family's scorer module itself (the function every graph is exported from).

With packed batches (`ServingPlan.packed_tokens`) a batch runs as padding-free streams through the family's packed
module (`families.packed`; multi-item for decoders whose rows carry their prefix), with FlexAttention on CUDA and
CUDA graphs for bucketed token counts (`runtime.cuda_graphs`); a family without a packed path stays padded.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from rerankrt.artifact import check_source_files
from rerankrt.errors import BackendUnavailableError, UnsupportedModelError
from rerankrt.families import Batch, Family
from rerankrt.families.packed import PackedScorer
from rerankrt.model_source import resolve_model
from rerankrt.precision import Precision
from rerankrt.runtime.cuda_graphs import GraphBuckets, bucket_sizes
from rerankrt.runtime.plan import ServingPlan

log = logging.getLogger(__name__)

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
        packed_tokens: int | None = None,
        cuda_graphs: bool = False,
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
        self.packed: PackedScorer | None = None
        if packed_tokens:
            self.packed = self._packed(family, packed_tokens, cuda_graphs and device == "cuda")

    def _packed(self, family: Family, tokens: int, cuda_graphs: bool) -> PackedScorer | None:
        module = family.packed_module(self.scorer)
        if isinstance(module, str):
            log.info("torch: padded batches: %s", module)
            return None
        attention = module.use_attention("flex" if self.device == "cuda" else "dense")
        runner = None
        if cuda_graphs:
            runner = GraphBuckets(module, bucket_sizes(tokens))
            runner.warm_up(self.device)
        log.info("torch: packed streams of at most %d tokens, %s attention%s", tokens, attention,
                 ", CUDA graphs" if runner else "")  # fmt: skip
        return PackedScorer(module, tokens, self.device, multi_item=True, run_stream=runner)

    @classmethod
    def from_plan(cls, plan: ServingPlan, family: Family) -> TorchBackend:
        try:
            weights = resolve_model(plan.weights, plan.revision).path
        except UnsupportedModelError as exc:
            raise BackendUnavailableError(f"torch backend needs the source weights: {exc}") from exc
        if plan.weight_files is not None:  # serving an artifact: only the files its export hashed, unchanged
            check_source_files(weights, dict(plan.weight_files))
        return cls(family, weights, plan.device, plan.precision, plan.threads, plan.packed_tokens, plan.cuda_graphs)

    def run(self, batch: Batch) -> np.ndarray:
        if self.pipeline is not None:  # the family's own pipeline over the scorer's modules (Family.torch_graphs)
            return self.pipeline(batch)
        if self.packed is not None:
            return self.packed(batch)
        with torch.inference_mode():
            inputs = {name: torch.from_numpy(values).to(self.device) for name, values in batch.items()}
            return self.scorer(**inputs).float().cpu().numpy()
