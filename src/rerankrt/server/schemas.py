"""What every API shape shares: content parts, the scoring options, usage, the error body, and OpenAPI examples.

A query or document is a string, or (for multimodal rerankers) a list of content parts as SGLang and
OpenAI write them: `{"type": "text", "text": ...}`, `{"type": "image_url", "image_url": {"url": ...}}`,
`{"type": "video_url", "video_url": {"url": ...}}`. The Cohere and vLLM shapes take the parts as vLLM does,
wrapped in `{"content": [...]}`. Each API shape's own request and response bodies live in its adapter module
(`sglang`, `cohere`, `vllm`).

Unions are discriminated by callables whose tags hold a space: pydantic puts a union's tag in an error's
location, and `errors.field_name` drops such elements, so an error names `documents[2][1].image_url.url`.
"""

from __future__ import annotations

import functools
import operator
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, StrictBool, StrictInt, StrictStr, Tag

PANDA_EXAMPLE = {
    "model": "BAAI/bge-reranker-v2-m3",
    "query": "what is panda?",
    "documents": [
        "hi",
        "The giant panda (Ailuropoda melanoleuca), sometimes called a panda bear or simply panda, "
        "is a bear species endemic to China.",
    ],
}
# 16x16 PNG, light and dark halves: a data: URI works without any network
TINY_PNG = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAABAAAAAQCAIAAACQkWg2AAAAH0lEQVR42mP88OEDAzZgYWGBVZyJgUQwqmFUw9DRAAC9"
    "dgOYJjJ1oAAAAABJRU5ErkJggg=="
)
MULTIMODAL_EXAMPLE = {
    "model": "my-multimodal-reranker",
    "query": "A woman playing with her dog on a beach at sunset.",
    "documents": [
        "A woman shares a joyful moment with her golden retriever on a sun-drenched beach at sunset.",
        [{"type": "image_url", "image_url": {"url": "https://example.com/beach_dog.jpeg"}}],
        [
            {"type": "text", "text": "A two-tone test pattern:"},
            {"type": "image_url", "image_url": {"url": TINY_PNG}},
        ],
    ],
    "instruct": "Retrieve images or text relevant to the user's query.",
}
IMAGE_QUERY_EXAMPLE = {
    "query": [
        {"type": "text", "text": "Find similar images to this:"},
        {"type": "image_url", "image_url": {"url": TINY_PNG}},
    ],
    "documents": ["A cat sleeping on a couch.", "A black and white test pattern."],
}


# --- content parts ------------------------------------------------------------------------------


class MediaURL(BaseModel):
    url: StrictStr = Field(
        min_length=1,
        description="http(s) URL, data: URI (base64), or an absolute file path under the server's "
        "--allowed-local-media-path",
    )


class TextPart(BaseModel):
    type: Literal["text"]
    text: StrictStr


class ImagePart(BaseModel):
    type: Literal["image_url"]
    image_url: MediaURL


class VideoPart(BaseModel):
    type: Literal["video_url"]
    video_url: MediaURL


PART_TYPES = ("text", "image_url", "video_url")


def _part_tag(value: Any) -> str | None:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return f"{kind} part" if kind in PART_TYPES else None


ContentPart = Annotated[
    Annotated[TextPart, Tag("text part")] | Annotated[ImagePart, Tag("image_url part")]
    | Annotated[VideoPart, Tag("video_url part")],
    Discriminator(
        _part_tag,
        custom_error_type="content_part_type",
        custom_error_message="must be a content part whose type is 'text', 'image_url' or 'video_url'",
    ),
]  # fmt: skip
Parts = Annotated[list[ContentPart], Field(min_length=1)]


class TextDocument(BaseModel):
    text: StrictStr


class ContentDocument(BaseModel):
    """vLLM's ScoreMultiModalParam: one multimodal query or document."""

    content: Parts


NonEmptyStr = Annotated[StrictStr, Field(min_length=1)]


def _input_tag(value: Any) -> str:
    """Which member of a query/document union `value` is for (a dict with "content" is a content object)."""
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, ContentDocument) or (isinstance(value, dict) and "content" in value):
        return "a content object"
    return "a text object" if isinstance(value, dict | TextDocument) else "something else"


def tagged(*members: tuple[Any, str], message: str) -> Any:
    """A union of (type, tag) members, tags "a string", "a list", "a content object" or "a text object", picked by
    the value's shape, with one error, `message`, when none fits."""
    union = functools.reduce(operator.or_, (Annotated[member, Tag(tag)] for member, tag in members))
    return Annotated[union, Discriminator(_input_tag, custom_error_type="input_type", custom_error_message=message)]


# --- what every API shape accepts and answers ---------------------------------------------------


class ScoringOptions(BaseModel):
    """Fields every API shape accepts on top of its own. Fields no model defines are accepted and listed in the
    response (`shapes.respond`)."""

    model_config = ConfigDict(extra="allow")

    model: StrictStr | None = Field(None, description="accepted for compatibility; this server serves one model")
    instruct: StrictStr | None = Field(
        None, description="task instruction for instruction-following rerankers; other rerankers ignore it"
    )
    truncate: StrictBool = Field(
        True, description="cut over-long pairs to max_length; false makes an over-long pair a 400"
    )
    max_chunks_per_doc: StrictInt | None = Field(
        None,
        ge=1,
        description="split long text documents into up to this many overlapping chunks; best chunk's score "
        "(documents given as content parts are scored whole)",
    )


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class ErrorResponse(BaseModel):
    object: str = "error"
    message: str
    type: str
    param: str | None = None
    code: int


ERRORS = {
    400: {"model": ErrorResponse, "description": "invalid request; `param` names the field"},
    413: {"model": ErrorResponse, "description": "too many documents, too large a body or media item"},
    503: {"model": ErrorResponse, "description": "overloaded or timed out; retry after Retry-After"},
}
"""The error answers of a scoring route, for its OpenAPI entry."""
