"""Torch backend: the family's scorer module itself (the function every graph is exported from)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from rerankrt.errors import BackendUnavailableError
from rerankrt.families import Batch, Family


class TorchBackend:
    name = "torch"

    def __init__(
        self,
        family: Family,
        model_dir: Path,
        device: str = "cpu",
        dtype: torch.dtype | None = None,
        threads: int | None = None,
    ):
        if device == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailableError("torch sees no CUDA device")
        if threads:
            torch.set_num_threads(threads)  # process-wide, as torch has it
        self.device = device
        # on a GPU: bf16 weights (SDPA attention is transformers' default); on CPU: fp32
        self.dtype = dtype or (torch.bfloat16 if device == "cuda" else torch.float32)
        self.scorer = family.load_scorer(model_dir, dtype=self.dtype, device=device)

    def run(self, batch: Batch) -> np.ndarray:
        with torch.inference_mode():
            inputs = {name: torch.from_numpy(values).to(self.device) for name, values in batch.items()}
            return self.scorer(**inputs).float().cpu().numpy()
