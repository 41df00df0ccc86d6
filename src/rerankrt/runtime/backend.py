"""The one interface every backend implements, and what the ONNX-graph backends share."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

import numpy as np

from rerankrt.families import Batch, Family
from rerankrt.families.base import GraphRunner


class Backend(Protocol):
    """What a backend module's class is: its row in `runtime.plan.BACKEND_TABLE` names it ("module:Class"), and the
    loader opens it with `Class.from_plan(plan, family)`."""

    name: str  # its row's name
    device: str  # "cpu" | "cuda"

    def run(self, batch: Batch) -> np.ndarray:
        """One float32 relevance logit per row of `batch`, shape [batch]."""
        ...


class GraphBackend:
    """An artifact's graphs, each loaded by `open_graph`, run in the order the family's `serving_pipeline` declares.

    ONNX Runtime and OpenVINO differ only in how one graph is loaded and run (a `GraphRunner`)."""

    name: str

    def __init__(
        self,
        family: Family,
        folder: Path,
        graphs: Mapping[str, str],
        device: str,
        open_graph: Callable[[Path], GraphRunner],
    ):
        """`graphs`: role -> file in `folder`, for every role the family's pipeline runs."""
        self.device = device
        self.sessions = {role: open_graph(Path(folder) / file) for role, file in graphs.items()}
        self.run = family.serving_pipeline(Path(folder), self.sessions)
