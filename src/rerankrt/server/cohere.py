"""Cohere's and Jina's rerank API, `POST /rerank` and `POST /v2/rerank`: a `results` object with usage.

Documents are strings, `{"text": ...}`, or vLLM's `{"content": [parts]}`. Fields named in errors: `query` (or
`query.content[k]`), `documents[i]` (or `documents[i].content[k]`), `documents` for the count.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field, StrictBool, StrictInt, StrictStr

from rerankrt.server.content import Input
from rerankrt.server.schemas import (
    ERRORS,
    MULTIMODAL_EXAMPLE,
    PANDA_EXAMPLE,
    ContentDocument,
    NonEmptyStr,
    ScoringOptions,
    TextDocument,
    Usage,
    tagged,
)
from rerankrt.server.scoring import ScoringService

CohereQuery = tagged(
    (NonEmptyStr, "a string"), (ContentDocument, "a content object"),
    message='must be a string or {"content": [content parts]}',
)  # fmt: skip
CohereDocument = tagged(
    (StrictStr, "a string"), (TextDocument, "a text object"), (ContentDocument, "a content object"),
    message='must be a string, {"text": ...} or {"content": [content parts]}',
)  # fmt: skip


class CohereRerankRequest(ScoringOptions):
    """Cohere / Jina rerank request: documents are strings, {"text": ...} or vLLM's {"content": [parts]}."""

    query: CohereQuery
    documents: list[CohereDocument] = Field(min_length=1)
    top_n: StrictInt | None = Field(None, ge=1)
    return_documents: StrictBool = Field(True, description="include each document (Jina's default)")

    model_config = {
        "json_schema_extra": {
            "examples": [
                PANDA_EXAMPLE,
                {**MULTIMODAL_EXAMPLE, "documents": [{"content": d} if isinstance(d, list) else d
                                                     for d in MULTIMODAL_EXAMPLE["documents"]]},
            ]
        }
    }  # fmt: skip


class CohereResult(BaseModel):
    index: int
    relevance_score: float
    document: TextDocument | ContentDocument | None = None


class CohereRerankResponse(BaseModel):
    id: str
    model: str
    results: list[CohereResult]
    usage: Usage


router = APIRouter()


async def cohere_rerank(body: CohereRerankRequest, request: Request, scoring: ScoringService) -> CohereRerankResponse:
    documents = [_input(d, f"documents[{i}]") for i, d in enumerate(body.documents)]
    result = await scoring.score(request, body, _input(body.query, "query"), documents)
    return CohereRerankResponse(
        id=request.state.request_id,
        model=scoring.model_name,
        results=[
            CohereResult(
                index=r.index,
                relevance_score=r.score,
                document=_document(body.documents[r.index]) if body.return_documents else None,
            )
            for r in result.ranked(body.top_n)
        ],
        usage=Usage(prompt_tokens=result.tokens, total_tokens=result.tokens),
    )


for _path in ("/rerank", "/v2/rerank"):
    router.post(
        _path,
        response_model=CohereRerankResponse,
        response_model_exclude_none=True,
        responses=ERRORS,
        summary="Rerank (Cohere / Jina shape)",
    )(cohere_rerank)


def _input(value: str | TextDocument | ContentDocument, field: str) -> Input:
    if isinstance(value, ContentDocument):
        return Input(value.content, f"{field}.content")
    return Input(value if isinstance(value, str) else value.text, field)


def _document(value: str | TextDocument | ContentDocument) -> TextDocument | ContentDocument:
    """A document as sent: {"text"} for text, {"content": [parts]} for content parts."""
    return TextDocument(text=value) if isinstance(value, str) else value
