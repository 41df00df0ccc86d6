"""The Qwen3-VL family's two graphs, the check that proves them, and how they run at serve time.

Both graphs come from the family's torch modules (`modules`) with torch.onnx's
dynamo exporter; every axis that varies is dynamic and named. The export check
compares the two graphs, run the way the runtime runs them, with the
transformers model's own forward and the official scoring (last hidden state ·
(W[yes] - W[no])), on generated pairs: text only, one image, several images of
different sizes, an image in the query, a video, and all of them mixed in
padded batches. At serve time the vision graph runs once per group of
equal-length sequences (`geometry.vision_plan`), its outputs land in
placeholder order, and the scorer graph scatters them into the prompt; a batch
without images or videos skips the vision graph.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch

from rerankrt.families.base import SCORER, Batch, GraphRunner, ParityCheck, TorchGraph, random_text
from rerankrt.families.qwen3_vl.encoder import VisionLanguagePairEncoder
from rerankrt.families.qwen3_vl.geometry import VisionGeometry
from rerankrt.families.qwen3_vl.modules import DecoderScorer, VisionEncoder, run_vision_calls
from rerankrt.model_source import read_config

VISION = "vision"
VISION_INPUTS = ("pixel_values", "pos_index", "pos_weight", "rotary_cos", "rotary_sin")
VISION_OUTPUTS = ("visual_embeds", "deepstack_embeds")
SCORER_INPUTS = ("input_ids", "attention_mask", "position_ids", "visual_embeds", "deepstack_embeds")


def graph_specs(model, vision: VisionEncoder, decoder: DecoderScorer, patch_dim: int) -> list[TorchGraph]:
    """vision.onnx (grid tensors as inputs, sequences stacked) and scorer.onnx (decoder + yes - no head)."""
    config = model.config
    vision_config = config.vision_config
    window = vision_config.spatial_merge_size**2
    head_dim = vision_config.hidden_size // vision_config.num_heads
    sequences, merged = ("sequences", 1), ("merged_tokens", 1)
    vision_graph = TorchGraph(
        role=VISION,
        file="vision.onnx",
        module=vision,
        args=(
            torch.randn(2, 3, window, patch_dim),
            torch.randint(0, vision_config.num_position_embeddings, (4, 2, 3, window)),
            torch.rand(4, 2, 3, window),
            torch.rand(2, 3, window, head_dim),
            torch.rand(2, 3, window, head_dim),
        ),
        input_names=VISION_INPUTS,
        output_names=VISION_OUTPUTS,
        dynamic_axes=(
            {0: sequences, 1: merged},
            {1: sequences, 2: merged},
            {1: sequences, 2: merged},
            {0: sequences, 1: merged},
            {0: sequences, 1: merged},
        ),
    )
    hidden = config.text_config.hidden_size
    ids = torch.full((2, 12), 1, dtype=torch.long)
    ids[:, 3:7] = config.image_token_id
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, :2] = 0
    batch, length, visual = ("batch", 1), ("sequence", 2), ("visual_tokens", 0)
    scorer_graph = TorchGraph(
        role=SCORER,
        file="scorer.onnx",
        module=decoder,
        args=(
            ids,
            mask,
            torch.arange(12).repeat(3, 2, 1),
            torch.randn(8, hidden),
            torch.randn(len(vision_config.deepstack_visual_indexes), 8, hidden),
        ),
        input_names=SCORER_INPUTS,
        output_names=("logits",),
        dynamic_axes=({0: batch, 1: length}, {0: batch, 1: length}, {1: batch, 2: length}, {0: visual}, {1: visual}),
    )
    return [vision_graph, scorer_graph]


def serving_pipeline(folder: Path, graphs: Mapping[str, GraphRunner]) -> Callable[[Batch], np.ndarray]:
    """run(batch) -> logits: the vision graph over every image and video frame, then the scorer graph."""
    vision_config = read_config(folder)["vision_config"]
    geometry = VisionGeometry.from_config(vision_config)
    layers = len(vision_config.get("deepstack_visual_indexes") or [])
    hidden = read_config(folder)["text_config"]["hidden_size"]
    vision, scorer = graphs[VISION], graphs[SCORER]

    def encode(pixel_values: np.ndarray, **grid_inputs: np.ndarray):
        feeds = {"pixel_values": np.ascontiguousarray(pixel_values, dtype=np.float32), **grid_inputs}
        return vision.run(feeds, VISION_OUTPUTS)

    def run(batch: Batch) -> np.ndarray:
        if len(batch["grid_thw"]):
            embeds, deepstack = run_vision_calls(batch["pixel_values"], batch["grid_thw"], geometry, encode, np)
        else:
            embeds = np.zeros((0, hidden), dtype=np.float32)
            deepstack = np.zeros((layers, 0, hidden), dtype=np.float32)
        feeds = {
            "input_ids": batch["input_ids"],
            "attention_mask": batch["attention_mask"],
            "position_ids": batch["position_ids"],
            "visual_embeds": embeds,
            "deepstack_embeds": deepstack,
        }
        (logits,) = scorer.run(feeds, ("logits",))
        return logits.reshape(-1).astype(np.float32, copy=False)

    return run


# --- export-time check ----------------------------------------------------------------------------


def parity_check(model, row: torch.Tensor, encoder: VisionLanguagePairEncoder) -> ParityCheck:
    """The graphs against the transformers model's forward + the official head, on generated multimodal pairs."""
    samples = generated_samples(encoder)
    return ParityCheck(
        reference=lambda batch: transformers_logits(model, row, batch),
        reference_name="transformers Qwen3VLModel forward + (W[yes] - W[no]) at the last token, fp32, cpu",
        samples=samples,
        batch_size=max(len(docs) for _, docs in samples),
    )


def generated_samples(encoder: VisionLanguagePairEncoder, seed: int = 0) -> list:
    """(query, documents) with every kind of content: text only, images of several sizes, an image in the
    query, a video, and the mixture; sizes around and above the encoder's pixel bounds."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    tokenizer = encoder.tokenizer

    def text(lo=2, hi=30):
        return random_text(tokenizer, rng, int(rng.integers(lo, hi)))

    def image(h, w):
        return {"type": "image", "image": Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))}

    def video(frames, h, w, fps=2.0):
        return {"type": "video", "video": rng.integers(0, 256, (frames, h, w, 3), dtype=np.uint8), "fps": fps}

    t = lambda: {"type": "text", "text": text()}  # noqa: E731
    return [
        (text(), [text(1, 80) for _ in range(3)]),
        (text(), [[image(64, 96), t()], [image(120, 50)], text()]),
        (text(), [[image(64, 64), image(200, 150), t()], [t(), image(40, 300)]]),
        ([image(96, 64), t()], [text(), [image(64, 64)], [t(), image(128, 128)]]),
        (text(), [[video(3, 70, 90), t()], [image(64, 80), video(2, 64, 64, 1.0)], text()]),
    ]


@torch.no_grad()
def transformers_logits(model, row: torch.Tensor, batch: dict) -> np.ndarray:
    """The transformers model on a collated batch: its own vision tower, mrope positions and DeepStack."""
    kinds, grids = batch["media_kind"], batch["grid_thw"]
    patches = grids.prod(-1)
    starts = np.concatenate([[0], np.cumsum(patches)])
    inputs = {
        "input_ids": torch.from_numpy(batch["input_ids"]),
        "attention_mask": torch.from_numpy(batch["attention_mask"]),
    }
    keys = ((0, "pixel_values", "image_grid_thw"), (1, "pixel_values_videos", "video_grid_thw"))
    for kind, pixels_key, grid_key in keys:
        chosen = np.flatnonzero(kinds == kind)
        if len(chosen):
            rows = np.concatenate([np.arange(starts[i], starts[i + 1]) for i in chosen])
            inputs[pixels_key] = torch.from_numpy(batch["pixel_values"][rows])
            inputs[grid_key] = torch.from_numpy(grids[chosen])
    hidden = model.model(**inputs).last_hidden_state[:, -1]
    return (hidden.float() @ row).numpy()
