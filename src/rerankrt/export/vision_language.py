"""ONNX export of the Qwen3-VL family: a vision graph and a scorer graph, checked against transformers.

Both graphs come from the family's torch modules (`families.qwen3_vl_modules`) with
torch.onnx's dynamo exporter; every axis that varies is dynamic and carries a
readable name (the exporter would call it s43). The check at export compares the
two graphs, run the way the runtime runs them, with the transformers model's own
forward and the official scoring (last hidden state · (W[yes] - W[no])), on
generated pairs: text only, one image, several images of different sizes, an
image in the query, a video, and all of them mixed in padded batches.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch

from rerankrt.errors import ExportError
from rerankrt.export.onnx_graph import ExportedGraph, describe_graph
from rerankrt.export.parity import FP32_TOLERANCE, ParityReport, parity_report, random_text
from rerankrt.families.qwen3_vl import Qwen3VLFamily, VisionLanguagePairEncoder, geometry

log = logging.getLogger(__name__)

VISION_LANGUAGE_TASK = Qwen3VLFamily.onnx_task
VISION_FILE, SCORER_FILE = "vision.onnx", "scorer.onnx"
DEFAULT_OPSET = 18
VISION_INPUTS = ["pixel_values", "pos_index", "pos_weight", "rotary_cos", "rotary_sin"]
VISION_OUTPUTS = ["visual_embeds", "deepstack_embeds"]
SCORER_INPUTS = ["input_ids", "attention_mask", "position_ids", "visual_embeds", "deepstack_embeds"]
SCORER_OUTPUTS = ["logits"]


def export_vision_language(
    family: Qwen3VLFamily,
    model_dir: Path,
    encoder: VisionLanguagePairEncoder,
    out_dir: Path,
    opset: int | None = None,
    tolerance: float = FP32_TOLERANCE,
) -> tuple[dict[str, ExportedGraph], ParityReport]:
    """Write vision.onnx and scorer.onnx into `out_dir`; return them by role and the parity report."""
    model = family.load_export_model(model_dir)
    vision, decoder = family.score_modules(model)
    opset = opset or DEFAULT_OPSET
    config = model.config
    window = config.vision_config.spatial_merge_size**2
    patch_dim = encoder.media.patch_dim
    head_dim = config.vision_config.hidden_size // config.vision_config.num_heads
    sequences, merged = torch.export.Dim("sequences", min=1), torch.export.Dim("merged_tokens", min=1)
    vision_args = (
        torch.randn(2, 3, window, patch_dim),
        torch.randint(0, config.vision_config.num_position_embeddings, (4, 2, 3, window)),
        torch.rand(4, 2, 3, window),
        torch.rand(2, 3, window, head_dim),
        torch.rand(2, 3, window, head_dim),
    )
    vision_shapes = (
        {0: sequences, 1: merged},
        {1: sequences, 2: merged},
        {1: sequences, 2: merged},
        {0: sequences, 1: merged},
        {0: sequences, 1: merged},
    )
    _export(vision, vision_args, vision_shapes, out_dir / VISION_FILE, VISION_INPUTS, VISION_OUTPUTS, opset)

    batch, length = torch.export.Dim("batch", min=1), torch.export.Dim("sequence", min=2)
    visual = torch.export.Dim("visual_tokens", min=0)
    hidden = config.text_config.hidden_size
    ids = torch.full((2, 12), 1, dtype=torch.long)
    ids[:, 3:7] = config.image_token_id
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, :2] = 0
    scorer_args = (
        ids,
        mask,
        torch.arange(12).repeat(3, 2, 1),
        torch.randn(8, hidden),
        torch.randn(len(config.vision_config.deepstack_visual_indexes), 8, hidden),
    )
    scorer_shapes = ({0: batch, 1: length}, {0: batch, 1: length}, {1: batch, 2: length}, {0: visual}, {1: visual})
    _export(decoder, scorer_args, scorer_shapes, out_dir / SCORER_FILE, SCORER_INPUTS, SCORER_OUTPUTS, opset)

    graphs = {
        "vision": describe_graph(out_dir, _files(out_dir, VISION_FILE)),
        "scorer": describe_graph(out_dir, _files(out_dir, SCORER_FILE)),
    }
    from rerankrt.runtime.vision_language_backend import OnnxRuntimeVisionLanguageBackend

    backend = OnnxRuntimeVisionLanguageBackend(
        out_dir / VISION_FILE,
        out_dir / SCORER_FILE,
        geometry(config.vision_config.to_dict()),
        len(config.vision_config.deepstack_visual_indexes),
    )
    name = f"onnxruntime {backend.scorer.session.get_providers()[0]}, vision + scorer graphs"
    report = check_vision_language_parity(encoder, model, model_dir, backend.run, name, tolerance)
    return graphs, report


def _files(folder: Path, name: str) -> list[str]:
    """The graph file, then its external-data files."""
    return [name] + sorted(p.name for p in folder.iterdir() if p.name.startswith(name + "."))


def _export(module, args, dynamic_shapes, path: Path, inputs, outputs, opset: int) -> None:
    names = _axis_names(dynamic_shapes, inputs)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module,
                args,
                dynamo=True,
                dynamic_shapes=dynamic_shapes,
                input_names=inputs,
                output_names=outputs,
                opset_version=opset,
                optimize=True,
                verbose=False,
            )
    except Exception as exc:
        raise ExportError(f"torch.onnx could not export {type(module).__name__}: {exc}") from exc
    large = sum(p.numel() * p.element_size() for p in module.parameters()) > 1_900_000_000
    program.save(str(path), external_data=large)
    model = onnx.load(str(path), load_external_data=False)  # weights stay where they were written
    _rename_axes(model, names)
    path.write_bytes(model.SerializeToString())


def _axis_names(dynamic_shapes, inputs) -> dict[tuple[str, int], str]:
    return {
        (name, axis): dim.__name__
        for name, shape in zip(inputs, dynamic_shapes, strict=True)
        for axis, dim in shape.items()
    }


def _rename_axes(model: onnx.ModelProto, names: dict[tuple[str, int], str]) -> None:
    """Give dynamic axes the names above (the exporter's own are s0, s1, ...), in inputs and outputs alike."""
    renamed = {}
    for value in model.graph.input:
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if (value.name, axis) in names and dim.dim_param:
                renamed[dim.dim_param] = names[(value.name, axis)]
    for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in renamed:
                dim.dim_param = renamed[dim.dim_param]


# --- export-time check ----------------------------------------------------------------------------


def generated_samples(encoder: VisionLanguagePairEncoder, seed: int = 0):
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


def check_vision_language_parity(
    encoder: VisionLanguagePairEncoder,
    model,
    model_dir: Path,
    candidate: Callable[[dict], np.ndarray],
    candidate_name: str,
    tolerance: float = FP32_TOLERANCE,
    seed: int = 0,
) -> ParityReport:
    """The candidate on padded batches of generated pairs vs the transformers model's forward + official head."""
    from rerankrt.families.qwen3_vl import yes_no_ids

    yes, no = yes_no_ids(str(model_dir))
    row = (model.lm_head.weight[yes] - model.lm_head.weight[no]).detach().float()
    samples = generated_samples(encoder, seed)
    ref_logits, cand_logits, lengths = [], [], []
    for query, documents in samples:
        pairs = encoder.encode(query, documents)
        batch = encoder.collate(pairs)
        ref_logits.append(transformers_logits(model, row, batch))
        cand_logits.append(np.asarray(candidate(batch), dtype=np.float32))
        lengths += [len(p["input_ids"]) for p in pairs]
    return parity_report(
        np.concatenate(ref_logits),
        np.concatenate(cand_logits),
        [len(docs) for _, docs in samples],
        lengths,
        "transformers Qwen3VLModel forward + (W[yes] - W[no]) at the last token, fp32, cpu",
        candidate_name,
        tolerance,
        seed,
        batch_size=max(len(docs) for _, docs in samples),
    )


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
