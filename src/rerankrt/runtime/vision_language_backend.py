"""ONNX Runtime backend for vision-language artifacts: the vision graph, then the scorer graph.

The vision graph runs once per group of equal-length sequences (`qwen3_vl_geometry.vision_plan`),
its outputs land in placeholder order, and the scorer graph scatters them into the prompt.
A batch without images or videos skips the vision graph.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rerankrt.artifact import Manifest
from rerankrt.families import Batch
from rerankrt.families.qwen3_vl_geometry import VisionGeometry
from rerankrt.families.qwen3_vl_modules import run_vision_calls
from rerankrt.model_source import read_config
from rerankrt.runtime.onnxruntime_backend import OnnxRuntimeBackend


def load_vision_language_backend(
    folder: Path, manifest: Manifest, device: str, threads: int | None, tensorrt_ep: bool
) -> OnnxRuntimeVisionLanguageBackend:
    """The backend for an artifact with "vision" and "scorer" graphs; geometry from its config.json."""
    vision_config = read_config(folder)["vision_config"]
    return OnnxRuntimeVisionLanguageBackend(
        folder / manifest.graphs["vision"].file,
        folder / manifest.graphs["scorer"].file,
        VisionGeometry.from_config(vision_config),
        len(vision_config.get("deepstack_visual_indexes") or []),
        device=device,
        intra_op_threads=threads,
        tensorrt_ep=tensorrt_ep,
    )


class OnnxRuntimeVisionLanguageBackend:
    name = "onnxruntime"

    def __init__(
        self,
        vision_graph: Path,
        scorer_graph: Path,
        geometry: VisionGeometry,
        deepstack_layers: int,
        device: str = "cpu",
        intra_op_threads: int | None = None,
        tensorrt_ep: bool = False,
    ):
        self.vision = OnnxRuntimeBackend(Path(vision_graph), device, intra_op_threads, tensorrt_ep)
        self.scorer = OnnxRuntimeBackend(Path(scorer_graph), device, intra_op_threads, tensorrt_ep)
        self.device = self.scorer.device
        self.geometry = geometry
        self.deepstack_layers = deepstack_layers
        self.hidden_size = self._hidden_size()

    def _hidden_size(self) -> int:
        shape = next(i.shape for i in self.scorer.session.get_inputs() if i.name == "visual_embeds")
        return int(shape[-1])

    def _encode(self, pixel_values: np.ndarray, **grid_inputs: np.ndarray):
        feeds = {"pixel_values": np.ascontiguousarray(pixel_values, dtype=np.float32), **grid_inputs}
        embeds, deepstack = self.vision.session.run(["visual_embeds", "deepstack_embeds"], feeds)
        return embeds, deepstack

    def run(self, batch: Batch) -> np.ndarray:
        if len(batch["grid_thw"]):
            pixels, grids = batch["pixel_values"], batch["grid_thw"]
            embeds, deepstack = run_vision_calls(pixels, grids, self.geometry, self._encode, np)
        else:
            embeds = np.zeros((0, self.hidden_size), dtype=np.float32)
            deepstack = np.zeros((self.deepstack_layers, 0, self.hidden_size), dtype=np.float32)
        feeds = {
            "input_ids": batch["input_ids"],
            "attention_mask": batch["attention_mask"],
            "position_ids": batch["position_ids"],
            "visual_embeds": embeds,
            "deepstack_embeds": deepstack,
        }
        (logits,) = self.scorer.session.run(["logits"], feeds)
        return logits.reshape(-1).astype(np.float32, copy=False)
