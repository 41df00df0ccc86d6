"""Queries and documents as a request gives them -> what the model's encoder takes.

A string stays a string. Content parts go to a multimodal reranker with their media fetched and decoded
(`image_url` -> `{"type": "image", "image": PIL image}`, `video_url` -> `{"type": "video", "video": frames,
"fps": fps}`), every URL of the request in one concurrent `MediaFetcher.fetch_all`, each distinct URL once.
A text-only reranker takes text parts joined by newlines into one string, and refuses media parts.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from rerankrt.errors import InputError
from rerankrt.families import Content
from rerankrt.runtime.reranker import RequestTooLarge
from rerankrt.server.media import MediaFetcher, MediaRef, PixelBudget, Video
from rerankrt.server.metrics import Metrics
from rerankrt.server.schemas import ContentPart, ImagePart, TextPart

TEXT_SEPARATOR = "\n"  # between the text parts of one query or document, for text-only models
KINDS = {"image_url": "image", "video_url": "video"}


@dataclass(frozen=True)
class Input:
    """One query or document of a request, and the request field that holds it (for error messages)."""

    value: str | Sequence[ContentPart]
    field: str  # "query", "documents[2]", "documents[2].content", ...
    part_fields: tuple[str, ...] = ()  # each part's field, when not f"{field}[k]"

    def part_field(self, index: int) -> str:
        return self.part_fields[index] if self.part_fields else f"{self.field}[{index}]"

    def media(self) -> list[MediaRef]:
        if isinstance(self.value, str):
            return []
        return [
            MediaRef(KINDS[part.type], _url(part), f"{self.part_field(k)}.{part.type}.url")
            for k, part in enumerate(self.value)
            if not isinstance(part, TextPart)
        ]


def text_only(item: Input) -> str:
    """The input for a text-only model: a string as is, text parts joined; a media part is a 400."""
    if isinstance(item.value, str):
        return item.value
    for k, part in enumerate(item.value):
        if not isinstance(part, TextPart):
            raise InputError(
                item.part_field(k),
                f"this model takes text only; {part.type} parts need a multimodal reranker",
            )
    return TEXT_SEPARATOR.join(part.text for part in item.value)


async def resolve(
    inputs: Sequence[Input],
    multimodal: bool,
    fetcher: MediaFetcher | None,
    metrics: Metrics | None = None,
    budget: PixelBudget | None = None,
) -> list[Content]:
    """Each input as the encoder takes it, media fetched and decoded (concurrently, in one go), their decoded
    pixels reserved from `budget` (the caller releases it once the request is answered)."""
    if not multimodal:
        return [text_only(item) for item in inputs]
    refs: dict[tuple[str, str], MediaRef] = {}  # each URL once; its first occurrence names it in errors
    parts = 0
    for item in inputs:
        for ref in item.media():
            parts += 1
            if fetcher is not None and parts > fetcher.limits.max_parts:  # before fetching anything
                raise RequestTooLarge(
                    ref.field, f"more than {fetcher.limits.max_parts} image and video parts in one request"
                )
            refs.setdefault((ref.kind, ref.url), ref)
    decoded: dict[tuple[str, str], object] = {}
    if refs:
        if fetcher is None:
            raise RuntimeError("the media fetcher is not running (the app's lifespan has not started)")
        started = time.perf_counter()
        media = await fetcher.fetch_all(list(refs.values()), budget)
        decoded = dict(zip(refs, media, strict=True))
        if metrics is not None:
            metrics.media_seconds.observe(time.perf_counter() - started)
    return [_decoded(item, decoded) for item in inputs]


def _decoded(item: Input, media: dict) -> Content:
    if isinstance(item.value, str):
        return item.value
    parts: list[dict] = []
    for part in item.value:
        if isinstance(part, TextPart):
            parts.append({"type": "text", "text": part.text})
        elif isinstance(part, ImagePart):
            parts.append({"type": "image", "image": media["image", part.image_url.url]})
        else:
            video: Video = media["video", part.video_url.url]
            parts.append({"type": "video", "video": video.frames, "fps": video.fps})
    return parts


def _url(part: ContentPart) -> str:
    return part.image_url.url if isinstance(part, ImagePart) else part.video_url.url
