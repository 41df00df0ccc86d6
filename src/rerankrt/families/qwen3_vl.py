"""Multimodal yes/no rerankers (Qwen/Qwen3-VL-Reranker-2B/8B): P(yes) at the prompt's last token.

Queries and documents are a string or a list of content parts whose media are
already decoded (the server fetches them):

    {"type": "text", "text": "..."}
    {"type": "image", "image": PIL.Image.Image}
    {"type": "video", "video": uint8 [T, H, W, 3] frames, already sampled, "fps": float}

As in the official scoring script, parts are ordered videos, images, texts within
each side, an empty side reads "NULL", and the prompt is the Qwen3-VL chat
template's rendering of the reranker's messages (`templates/qwen3_vl_reranker.jinja`).
Each video's placeholder becomes one `<t seconds><|vision_start|>…<|vision_end|>`
block per temporal patch, as transformers 4.57's processor writes it.

Scoring runs two graphs (`qwen3_vl_modules`): the vision encoder over every
image/video of a batch, then the decoder with the visual features scattered in,
whose trimmed head gives logit(yes) - logit(no); the score is its sigmoid.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path

import jinja2
import numpy as np
import torch

from rerankrt.errors import InputError, UnsupportedModelError
from rerankrt.families.base import (
    Batch,
    Content,
    Family,
    Features,
    PairEncoder,
    load_fast_tokenizer,
    resolve_max_length,
    save_tokenizer,
)
from rerankrt.families.decoder_yes_no import NO, TEMPLATE_FILE, YES, has_yes_no_tokens, pad_token_id, single_token_id
from rerankrt.families.qwen3_vl_geometry import VisionGeometry, rope_positions
from rerankrt.families.qwen3_vl_media import MediaConfig, VisualItem, preprocess_image, preprocess_video

ARCHITECTURE = "Qwen3VLForConditionalGeneration"
DEFAULT_TEMPLATE = "qwen3_vl_reranker.jinja"
VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"
IMAGE_PAD, VIDEO_PAD = "<|image_pad|>", "<|video_pad|>"
VIDEO_PLACEHOLDER = VISION_START + VIDEO_PAD + VISION_END
# Private-use characters bracket each text part, so truncation knows which tokens are the query's and document's.
QUERY_MARKS = ("\ue000", "\ue001")
DOC_MARKS = ("\ue002", "\ue003")
MARK_CHARS = "".join(QUERY_MARKS + DOC_MARKS)
MEDIA_KINDS = {"image": 0, "video": 1}
PART_ORDER = {"video": 0, "image": 1, "text": 2}  # the official script's order within a side


def _clean_text(text: str) -> str:
    """User text cannot add marks or vision placeholders (they would desynchronise the media)."""
    for token in (VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD):
        text = text.replace(token, "")
    return text.translate(str.maketrans("", "", MARK_CHARS))


def normalize_content(content: Content, field: str) -> list[dict]:
    """Parts in the official order (videos, images, texts; stable within a kind); "NULL" for an empty side."""
    if isinstance(content, str):
        parts = [{"type": "text", "text": content}] if content else []
    else:
        parts = []
        for i, part in enumerate(content):
            kind = part.get("type") if isinstance(part, Mapping) else None
            if kind == "text" and isinstance(part.get("text"), str):
                parts.append({"type": "text", "text": part["text"]})
            elif kind == "image" and part.get("image") is not None:
                parts.append({"type": "image", "image": part["image"]})
            elif kind == "video" and part.get("video") is not None:
                parts.append({"type": "video", "video": part["video"], "fps": part.get("fps")})
            else:
                raise InputError(f"{field}[{i}]", "expected a text, image or video part")
    if not parts:
        return [{"type": "text", "text": "NULL"}]
    return sorted(parts, key=lambda part: PART_ORDER[part["type"]])


class VisionLanguagePrompt:
    """The Jinja reranker template over content parts, reporting the character spans of every text part."""

    def __init__(self, source: str, origin: str):
        env = jinja2.Environment(keep_trailing_newline=True, undefined=jinja2.StrictUndefined, autoescape=False)
        try:
            self.template = env.from_string(source)
            text, query_spans, doc_spans = self.render(
                [{"type": "text", "text": "Query q"}], [{"type": "image"}, {"type": "text", "text": "Document d"}], None
            )
        except (jinja2.TemplateError, ValueError) as exc:
            raise UnsupportedModelError(f"{origin}: not a usable reranker template ({exc})") from exc
        if [text[slice(*s)] for s in query_spans + doc_spans] != ["Query q", "Document d"] or IMAGE_PAD not in text:
            raise UnsupportedModelError(f"{origin}: the template must keep text parts unchanged, media as placeholders")
        self.source = source

    def render(self, query: list[dict], document: list[dict], instruct: str | None):
        """(prompt, query text spans, document text spans); media parts render as their placeholders."""

        def marked(parts, marks):
            return [
                {"type": "text", "text": marks[0] + _clean_text(p["text"]) + marks[1]}
                if p["type"] == "text"
                else {"type": p["type"]}
                for p in parts
            ]

        variables = {
            "messages": [
                {"role": "user", "content": marked(query, QUERY_MARKS)},
                {"role": "user", "content": marked(document, DOC_MARKS)},
            ]
        }
        if instruct is not None:
            variables["instruct"] = _clean_text(instruct)
        rendered = self.template.render(**variables)
        text, spans, opened = [], {QUERY_MARKS: [], DOC_MARKS: []}, None
        for char in rendered:
            for marks in spans:
                if char == marks[0]:
                    opened = len(text)
                    break
                if char == marks[1]:
                    spans[marks].append((opened, len(text)))
                    break
            else:
                text.append(char)
        return "".join(text), spans[QUERY_MARKS], spans[DOC_MARKS]


class VisionLanguagePairEncoder(PairEncoder):
    """Prompt + media per pair -> token ids with placeholders expanded, 3-D positions, patches and grids."""

    padding_side = "left"
    input_names = ("input_ids", "attention_mask", "position_ids", "pixel_values", "grid_thw")

    def __init__(self, tokenizer, prompt: VisionLanguagePrompt, max_length: int, media: MediaConfig):
        self.tokenizer = tokenizer
        self.prompt = prompt
        self.max_length = max_length
        self.media = media
        self.pad_values = {"input_ids": pad_token_id(tokenizer)}
        ids = {token: tokenizer.convert_tokens_to_ids(token) for token in (IMAGE_PAD, VIDEO_PAD)}
        if any(i is None or i == tokenizer.unk_token_id for i in ids.values()):
            raise UnsupportedModelError(f"the tokenizer lacks {IMAGE_PAD} / {VIDEO_PAD}")
        self.image_pad, self.video_pad = ids[IMAGE_PAD], ids[VIDEO_PAD]

    # --- encoding -----------------------------------------------------------------------------

    def encode(
        self, query: Content, documents: Sequence[Content], instruct: str | None = None, truncate: bool = True
    ) -> list[Features]:
        query_parts = normalize_content(query, "query")
        query_items = self._preprocess(query_parts, "query")
        pairs = []
        texts, spans, items = [], [], []
        for i, document in enumerate(documents):
            doc_parts = normalize_content(document, f"documents[{i}]")
            doc_items = self._preprocess(doc_parts, f"documents[{i}]")
            text, q_spans, d_spans = self.prompt.render(query_parts, doc_parts, instruct)
            text, q_spans, d_spans = self._expand_videos(text, q_spans, d_spans, query_items + doc_items)
            texts.append(text)
            spans.append((q_spans, d_spans))
            items.append(query_items + doc_items)
        encoded = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True) if texts else None
        for i, (pair_items, (q_spans, d_spans)) in enumerate(zip(items, spans, strict=True)):
            ids = encoded["input_ids"][i]
            blocks = self._blocks(pair_items)
            extra = sum(h * w - 1 for h, w in blocks)
            if len(ids) + extra > self.max_length:
                if not truncate:
                    raise self.too_long(i, len(ids) + extra)
                ids = self._truncate(i, ids, encoded["offset_mapping"][i], q_spans, d_spans, extra)
            pairs.append(self._features(ids, pair_items, blocks))
        return pairs

    def _preprocess(self, parts: list[dict], field: str) -> list[VisualItem]:
        items = []
        for i, part in enumerate(parts):
            try:
                if part["type"] == "image":
                    items.append(preprocess_image(part["image"], self.media))
                elif part["type"] == "video":
                    items.append(preprocess_video(part["video"], part["fps"], self.media))
            except (ValueError, TypeError, AttributeError, OSError) as exc:
                raise InputError(f"{field}", f"{part['type']} part {i}: {exc}") from exc
        return items

    def _expand_videos(self, text: str, q_spans, d_spans, items: list[VisualItem]):
        """Each video placeholder -> one timestamped block per temporal patch; text spans shifted to match."""
        videos = iter(item for item in items if item.kind == "video")
        out, cursor, shifts = [], 0, []
        while (at := text.find(VIDEO_PLACEHOLDER, cursor)) >= 0:
            video = next(videos)
            blocks = "".join(f"<{t:.1f} seconds>{VIDEO_PLACEHOLDER}" for t in video.timestamps)
            out.append(text[cursor:at] + blocks)
            shifts.append((at, len(blocks) - len(VIDEO_PLACEHOLDER)))
            cursor = at + len(VIDEO_PLACEHOLDER)
        if not shifts:
            return text, q_spans, d_spans
        out.append(text[cursor:])

        def moved(pos):
            return pos + sum(delta for at, delta in shifts if at < pos)

        return "".join(out), [(moved(a), moved(b)) for a, b in q_spans], [(moved(a), moved(b)) for a, b in d_spans]

    def _blocks(self, items: list[VisualItem]) -> list[tuple[int, int]]:
        """Merged (h, w) of each visual block in prompt order: an image, or one temporal patch of a video."""
        m = self.media.merge_size
        return [(item.grid_thw[1] // m, item.grid_thw[2] // m) for item in items for _ in range(item.grid_thw[0])]

    def _truncate(self, index: int, ids: list[int], offsets, q_spans, d_spans, extra: int) -> list[int]:
        """Drop the document's last text tokens, then the query's; media and the template stay whole."""
        excess = len(ids) + extra - self.max_length
        dropped: set[int] = set()
        for spans in (d_spans, q_spans):
            inside = [t for t, (s, e) in enumerate(offsets) if any(s < end and e > start for start, end in spans)]
            take = inside[len(inside) - min(excess, len(inside)) :]
            dropped.update(take)
            excess -= len(take)
            if excess == 0:
                return [token for t, token in enumerate(ids) if t not in dropped]
        raise InputError(
            f"documents[{index}]",
            f"the images, videos and prompt take {len(ids) - len(dropped) + extra} tokens without any text, "
            f"over max_length {self.max_length}",
        )

    def _features(self, ids: list[int], items: list[VisualItem], blocks: list[tuple[int, int]]) -> Features:
        sizes = iter(h * w for h, w in blocks)
        expanded: list[int] = []
        for token in ids:
            if token == self.image_pad or token == self.video_pad:
                expanded.extend([token] * next(sizes))
            else:
                expanded.append(token)
        input_ids = np.asarray(expanded, dtype=np.int64)
        patch_dim = self.media.patch_dim
        return {
            "input_ids": input_ids,
            "attention_mask": np.ones_like(input_ids),
            "position_ids": rope_positions(input_ids, {self.image_pad, self.video_pad}, blocks),
            "pixel_values": np.concatenate([it.pixel_values for it in items])
            if items
            else np.zeros((0, patch_dim), dtype=np.float32),
            "grid_thw": np.asarray([it.grid_thw for it in items], dtype=np.int64).reshape(-1, 3),
            "media_kind": np.asarray([MEDIA_KINDS[it.kind] for it in items], dtype=np.int64),
        }

    # --- batching -----------------------------------------------------------------------------

    def collate(self, pairs: Sequence[Features]) -> Batch:
        """Left-pad ids, mask and positions; concatenate every pair's patches and grids in row order."""
        width = max(len(pair["input_ids"]) for pair in pairs)
        rows = len(pairs)
        input_ids = np.full((rows, width), self.pad_values["input_ids"], dtype=np.int64)
        attention_mask = np.zeros((rows, width), dtype=np.int64)
        position_ids = np.ones((3, rows, width), dtype=np.int64)
        for row, pair in enumerate(pairs):
            n = len(pair["input_ids"])
            input_ids[row, width - n :] = pair["input_ids"]
            attention_mask[row, width - n :] = 1
            position_ids[:, row, width - n :] = pair["position_ids"]
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            "pixel_values": np.concatenate([pair["pixel_values"] for pair in pairs]).astype(np.float32, copy=False),
            "grid_thw": np.concatenate([pair["grid_thw"] for pair in pairs]),
            "media_kind": np.concatenate([pair["media_kind"] for pair in pairs]),
        }

    def save(self, out_dir: Path) -> list[str]:
        (Path(out_dir) / TEMPLATE_FILE).write_text(self.prompt.source)
        return sorted([*save_tokenizer(self.tokenizer, out_dir), TEMPLATE_FILE, self.media.save(out_dir)])


class Qwen3VLFamily(Family):
    name = "qwen3-vl-yes-no"
    multimodal = True
    default_max_length = 8192
    onnx_task = "qwen3-vl-vision+scorer"  # two torch.onnx graphs (export.vision_language), not an optimum task

    @classmethod
    def matches(cls, config: dict, model_dir: Path) -> bool:
        if ARCHITECTURE not in (config.get("architectures") or []):
            return False
        return has_yes_no_tokens(model_dir)

    @classmethod
    def describe(cls) -> str:
        return f"multimodal yes/no reranker ({ARCHITECTURE} whose tokenizer has single tokens 'yes' and 'no')"

    def load_encoder(
        self, model_dir: Path, max_length: int | None = None, chat_template: Path | None = None
    ) -> VisionLanguagePairEncoder:
        model_dir = Path(model_dir)
        tokenizer = load_fast_tokenizer(model_dir)
        if chat_template is not None:
            source, origin = Path(chat_template).read_text(), str(chat_template)
        elif (model_dir / TEMPLATE_FILE).is_file():
            source, origin = (model_dir / TEMPLATE_FILE).read_text(), str(model_dir / TEMPLATE_FILE)
        else:
            source = resources.files("rerankrt.templates").joinpath(DEFAULT_TEMPLATE).read_text()
            origin = DEFAULT_TEMPLATE
        return VisionLanguagePairEncoder(
            tokenizer,
            VisionLanguagePrompt(source, origin),
            resolve_max_length(model_dir, max_length, self.default_max_length),
            MediaConfig.load(model_dir),
        )

    def load_export_model(self, model_dir: Path, dtype: torch.dtype | None = None) -> torch.nn.Module:
        """The checkpoint's Qwen3VLForConditionalGeneration (fp32 unless asked), in eval mode."""
        from transformers import Qwen3VLForConditionalGeneration

        return Qwen3VLForConditionalGeneration.from_pretrained(model_dir, dtype=dtype or torch.float32).eval()

    def wrap_scorer(self, export_model: torch.nn.Module) -> torch.nn.Module:
        from rerankrt.families.qwen3_vl_modules import Qwen3VLScorer

        vision, decoder = self.score_modules(export_model)
        config = export_model.config
        return Qwen3VLScorer(
            vision,
            decoder,
            geometry(config.vision_config.to_dict()),
            len(config.vision_config.deepstack_visual_indexes),
        ).eval()

    def score_modules(self, model) -> tuple[torch.nn.Module, torch.nn.Module]:
        """(VisionEncoder, DecoderScorer) sharing the loaded model's weights: the two graphs' modules."""
        from rerankrt.families.qwen3_vl_modules import DecoderScorer, VisionEncoder

        yes, no = yes_no_ids(model.config.name_or_path or None)
        head = model.get_output_embeddings().weight
        row = head[yes].detach().float() - head[no].detach().float()
        config = model.config
        decoder = DecoderScorer(model.model.language_model, row, (config.image_token_id, config.video_token_id))
        return VisionEncoder(model.model.visual).eval(), decoder.eval()


def geometry(vision_config: dict) -> VisionGeometry:
    return VisionGeometry.from_config(vision_config)


def yes_no_ids(model_dir: str | None) -> tuple[int, int]:
    """Token ids of 'yes' and 'no' from the checkpoint's tokenizer."""
    if not model_dir:
        raise UnsupportedModelError("cannot find the tokenizer of this model (load it from a folder)")
    tokenizer = load_fast_tokenizer(Path(model_dir))
    yes, no = single_token_id(tokenizer, YES), single_token_id(tokenizer, NO)
    if yes is None or no is None:
        raise UnsupportedModelError(f"{model_dir}: the tokenizer has no single-token 'yes' and 'no'")
    return yes, no
