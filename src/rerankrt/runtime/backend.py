"""The one interface every backend implements."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from rerankrt.families import Batch


class Backend(Protocol):
    name: str  # "tensorrt" | "onnxruntime" | "torch"
    device: str  # "cpu" | "cuda"

    def run(self, batch: Batch) -> np.ndarray:
        """One float32 relevance logit per row of `batch`, shape [batch]."""
        ...
