"""Multimodal yes/no rerankers (Qwen/Qwen3-VL-Reranker-2B/8B): P(yes) at the prompt's last token.

Texts, images and videos in the query and the documents (`encoder`, with numpy/Pillow preprocessing in
`media` and `geometry`). Scoring runs two graphs (`modules`, `graphs`): the vision encoder over every
image/video of a batch, then the decoder with the visual features scattered in, whose trimmed head gives
logit(yes) - logit(no); the score is its sigmoid.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch

from rerankrt.families.base import (
    Batch,
    ExportHints,
    Family,
    GraphRunner,
    PairEncoder,
    ParityCheck,
    TorchGraph,
    load_fast_tokenizer,
    named,
    resolve_max_length,
)
from rerankrt.families.qwen3_vl.encoder import VisionLanguagePairEncoder, load_prompt
from rerankrt.families.qwen3_vl.geometry import VisionGeometry
from rerankrt.families.qwen3_vl.media import MediaConfig
from rerankrt.families.yes_no import has_yes_no_tokens, template_source, yes_no_ids
from rerankrt.precision import Precision

ARCHITECTURE = "Qwen3VLForConditionalGeneration"
NAME_PATTERN = r"qwen3-vl-reranker"
DEFAULT_TEMPLATE = "qwen3_vl_reranker.jinja"

__all__ = ["Qwen3VLFamily", "VisionLanguagePairEncoder"]


class Qwen3VLFamily(Family):
    name = "qwen3-vl-yes-no"
    multimodal = True
    default_max_length = 8192
    precisions = (Precision.FP32,)
    precision_note = "reduced-precision variants of its two graphs are not built in this version"
    tensorrt_problem = (
        "TensorRT engines cover one-graph scorers; multimodal (vision + scorer) artifacts run on ONNX Runtime"
    )
    export_hints = ExportHints(language_config="text_config")  # the decoder's sizes (vision_config: the encoder's)

    @classmethod
    def recognise(cls, config: dict, model_dir: Path) -> str | None:
        if ARCHITECTURE not in (config.get("architectures") or []):
            return None
        name = named(model_dir, config, NAME_PATTERN)
        if name is None or not has_yes_no_tokens(model_dir):
            return None
        return f"{ARCHITECTURE} with single-token 'yes'/'no', a Qwen3-VL-Reranker by name {name!r}"

    @classmethod
    def describe(cls) -> str:
        return f"{cls.name}: Qwen3-VL-Reranker ({ARCHITECTURE} named Qwen3-VL-Reranker, single 'yes'/'no' tokens)"

    def load_encoder(
        self, model_dir: Path, max_length: int | None = None, chat_template: Path | None = None
    ) -> VisionLanguagePairEncoder:
        model_dir = Path(model_dir)
        return VisionLanguagePairEncoder(
            load_fast_tokenizer(model_dir),
            load_prompt(*template_source(model_dir, chat_template, DEFAULT_TEMPLATE)),
            resolve_max_length(model_dir, max_length, self.default_max_length),
            MediaConfig.load(model_dir),
        )

    def label_tokens(self, encoder: PairEncoder) -> tuple[int, int]:
        """The decoder's logit is logit(yes) - logit(no): the model card's softmax over these two tokens."""
        return yes_no_ids(encoder.tokenizer)

    def load_export_model(self, model_dir: Path, dtype: torch.dtype | None = None) -> torch.nn.Module:
        """The checkpoint's Qwen3VLForConditionalGeneration (fp32 unless asked), in eval mode."""
        from transformers import Qwen3VLForConditionalGeneration

        model = Qwen3VLForConditionalGeneration.from_pretrained(
            model_dir, dtype=dtype or torch.float32, trust_remote_code=False
        )
        model.score_row = _score_row(model, Path(model_dir))  # kept with the model: the scorer and checks need it
        return model.eval()

    def wrap_scorer(self, export_model: torch.nn.Module) -> torch.nn.Module:
        from rerankrt.families.qwen3_vl.modules import Qwen3VLScorer

        vision, decoder = _score_modules(export_model)
        vision_config = export_model.config.vision_config
        geometry = VisionGeometry.from_config(vision_config.to_dict())
        return Qwen3VLScorer(vision, decoder, geometry, len(vision_config.deepstack_visual_indexes)).eval()

    def graphs(self, export_model: torch.nn.Module, encoder: PairEncoder) -> list[TorchGraph]:
        from rerankrt.families.qwen3_vl.graphs import graph_specs

        return graph_specs(export_model, *_score_modules(export_model), encoder.media.patch_dim)

    def parity_check(self, export_model: torch.nn.Module, model_dir: Path, encoder: PairEncoder) -> ParityCheck:
        from rerankrt.families.qwen3_vl.graphs import parity_check

        return parity_check(export_model, export_model.score_row, encoder)

    def serving_pipeline(self, folder: Path, graphs: Mapping[str, GraphRunner]) -> Callable[[Batch], np.ndarray]:
        from rerankrt.families.qwen3_vl.graphs import serving_pipeline

        return serving_pipeline(folder, graphs)


def _score_row(model, model_dir: Path) -> torch.Tensor:
    """W[yes] - W[no] of the LM head, fp32."""
    yes, no = yes_no_ids(load_fast_tokenizer(model_dir), str(model_dir))
    head = model.get_output_embeddings().weight
    return head[yes].detach().float() - head[no].detach().float()


def _score_modules(model) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(VisionEncoder, DecoderScorer) sharing the loaded model's weights: the two graphs' modules."""
    from rerankrt.families.qwen3_vl.modules import DecoderScorer, VisionEncoder

    config = model.config
    decoder = DecoderScorer(model.model.language_model, model.score_row, (config.image_token_id, config.video_token_id))
    return VisionEncoder(model.model.visual).eval(), decoder.eval()
