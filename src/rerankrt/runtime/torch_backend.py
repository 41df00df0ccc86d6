"""Torch backend: the family's scorer module itself (the function every graph is exported from)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from rerankrt.families import Batch, Family


class TorchBackend:
    name = "torch"

    def __init__(self, family: Family, model_dir: Path, device: str | None = None, dtype: torch.dtype | None = None):
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.scorer = family.load_scorer(model_dir, dtype=dtype, device=self.device)

    def run(self, batch: Batch) -> np.ndarray:
        with torch.inference_mode():
            inputs = {name: torch.from_numpy(values).to(self.device) for name, values in batch.items()}
            return self.scorer(**inputs).float().cpu().numpy()
