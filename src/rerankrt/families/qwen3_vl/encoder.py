"""Qwen3-VL reranker prompts and encoding: content parts -> token ids, 3-D positions, patches and grids.

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
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from rerankrt.errors import InputError, UnsupportedModelError
from rerankrt.families.base import MODEL_LIMITS, Batch, Content, Features, PairEncoder, Truncation, save_tokenizer
from rerankrt.families.qwen3_vl.geometry import rope_positions
from rerankrt.families.qwen3_vl.media import MediaConfig, VisualItem, preprocess_image, preprocess_video
from rerankrt.families.yes_no import TEMPLATE_FILE, PromptTemplate, dropped_tokens, pad_token_id, strip_marks

VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"
IMAGE_PAD, VIDEO_PAD = "<|image_pad|>", "<|video_pad|>"
VIDEO_PLACEHOLDER = VISION_START + VIDEO_PAD + VISION_END
MEDIA_KINDS = {"image": 0, "video": 1}
PART_ORDER = {"video": 0, "image": 1, "text": 2}  # the official script's order within a side


def _clean_text(text: str) -> str:
    """User text cannot add vision placeholders (they would desynchronise the media)."""
    for token in (VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD):
        text = text.replace(token, "")
    return strip_marks(text)


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


def load_prompt(source: str, origin: str) -> PromptTemplate:
    """The sandboxed reranker template, checked to keep text parts unchanged and media as placeholders."""
    template = PromptTemplate(source, origin)
    probe = template.check(
        [{"type": "text", "text": "Query q"}],
        [{"type": "image"}, {"type": "text", "text": "Document d"}],
        ["Query q", "Document d"],
    )
    if IMAGE_PAD not in probe:
        raise UnsupportedModelError(f"{origin}: the template must render media parts as their placeholders")
    return template


class VisionLanguagePairEncoder(PairEncoder):
    """Prompt + media per pair -> token ids with placeholders expanded, 3-D positions, patches and grids."""

    padding_side = "left"
    input_names = ("input_ids", "attention_mask", "position_ids", "pixel_values", "grid_thw")

    def __init__(self, tokenizer, prompt: PromptTemplate, max_length: int, media: MediaConfig):
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
        self,
        query: Content,
        documents: Sequence[Content],
        instruct: str | None = None,
        truncate: bool = True,
        truncation: Truncation = MODEL_LIMITS,
    ) -> list[Features]:
        query_parts = normalize_content(query, "query")
        query_items = self._preprocess(query_parts, "query")
        pairs = []
        texts, spans, items = [], [], []
        for i, document in enumerate(documents):
            doc_parts = normalize_content(document, f"documents[{i}]")
            doc_items = self._preprocess(doc_parts, f"documents[{i}]")
            text, q_spans, d_spans = self.prompt.render(
                _cleaned(query_parts), _cleaned(doc_parts), None if instruct is None else _clean_text(instruct)
            )
            text, q_spans, d_spans = self._expand_videos(text, q_spans, d_spans, query_items + doc_items)
            texts.append(text)
            spans.append((q_spans, d_spans))
            items.append(query_items + doc_items)
        encoded = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True) if texts else None
        for i, (pair_items, (q_spans, d_spans)) in enumerate(zip(items, spans, strict=True)):
            ids = encoded["input_ids"][i]
            blocks = self._blocks(pair_items)
            extra = sum(h * w - 1 for h, w in blocks)
            if len(ids) + extra > self.max_length or truncation != MODEL_LIMITS:
                offsets = encoded["offset_mapping"][i]
                ids = self._truncate(i, ids, offsets, (q_spans, d_spans), extra, truncate, truncation)
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

    def _truncate(
        self, index: int, ids: list[int], offsets, spans, extra: int, truncate: bool, truncation: Truncation
    ) -> list[int]:
        """Drop the document's text tokens that must go, then the query's last ones; media and the template stay."""
        dropped = dropped_tokens(self, index, offsets, spans, extra, truncate, truncation)
        if dropped is None:
            raise InputError(
                f"documents[{index}]",
                f"the images, videos and prompt take more than max_length {self.max_length} tokens without any text",
            )
        return [token for t, token in enumerate(ids) if t not in dropped]

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


def _cleaned(parts: list[dict]) -> list[dict]:
    return [{**p, "text": _clean_text(p["text"])} if p["type"] == "text" else p for p in parts]
