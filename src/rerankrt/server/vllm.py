"""vLLM's score API, `POST /v1/score`: sigmoid scores of text_1 against each text_2, in input order.

text_1 and text_2 are each a string, a list, or (as in vLLM) a single `{"content": [...]}` that holds one input
per part. One text_1 is scored against every text_2; two lists of equal length are scored pairwise. Fields named
in errors: `text_1` / `text_1[i]` / `text_1[i].content[k]` / `text_1.content[k]`, the same for text_2, and
`text_2` for the count.
"""

from __future__ import annotations

import time
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, StrictStr

from rerankrt.errors import InputError
from rerankrt.server.content import Input
from rerankrt.server.schemas import ERRORS, PANDA_EXAMPLE, TINY_PNG, ContentDocument, ScoringOptions, Usage, tagged
from rerankrt.server.scoring import ScoringService

ScoreInput = tagged(
    (StrictStr, "a string"), (ContentDocument, "a content object"),
    message='must be a string or {"content": [content parts]}',
)  # fmt: skip
ScoreInputs = tagged(
    (StrictStr, "a string"), (ContentDocument, "a content object"), (list[ScoreInput], "a list"),
    message='must be a string, {"content": [content parts]} or a list of them',
)  # fmt: skip


class ScoreRequest(ScoringOptions):
    """vLLM's /v1/score: text_1 against each text_2 (or pairwise when both are lists of equal length).

    As in vLLM, a single `{"content": [...]}` (not in a list) holds one input per part.
    """

    text_1: ScoreInputs
    text_2: ScoreInputs

    model_config = {
        "json_schema_extra": {
            "examples": [
                {"text_1": "what is panda?", "text_2": PANDA_EXAMPLE["documents"]},
                {"text_1": "a two-tone test pattern", "text_2": [
                    "a photo of a panda", {"content": [{"type": "image_url", "image_url": {"url": TINY_PNG}}]},
                ]},
            ]
        }
    }  # fmt: skip


class ScoreData(BaseModel):
    index: int
    object: Literal["score"] = "score"
    score: float


class ScoreResponse(BaseModel):
    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list[ScoreData]
    usage: Usage


router = APIRouter()


@router.post("/v1/score", response_model=ScoreResponse, responses=ERRORS)
async def score_pairs(body: ScoreRequest, request: Request, scoring: ScoringService) -> ScoreResponse:
    """vLLM's score API: sigmoid scores of text_1 against each text_2, in input order."""
    queries, documents = _pairs(body)
    if all(q.value == queries[0].value for q in queries):
        result = await scoring.score(request, body, queries[0], documents, documents_field="text_2")
    else:  # pairwise with different queries
        result = await scoring.score_pairwise(request, body, queries, documents, documents_field="text_2")
    return ScoreResponse(
        id=request.state.request_id,
        created=int(time.time()),
        model=scoring.model_name,
        data=[ScoreData(index=i, score=float(s)) for i, s in enumerate(result.values())],
        usage=Usage(prompt_tokens=result.tokens, total_tokens=result.tokens),
    )


def _inputs(value: str | ContentDocument | list, name: str) -> list[Input]:
    """text_1 / text_2: a string, {"content": [...]} (one input per part, as vLLM has it), or a list."""
    if isinstance(value, str):
        return [Input(value, name)]
    if isinstance(value, ContentDocument):
        fields = [f"{name}.content[{k}]" for k in range(len(value.content))]
        return [Input([part], field, (field,)) for part, field in zip(value.content, fields, strict=True)]
    return [
        Input(item, f"{name}[{i}]") if isinstance(item, str) else Input(item.content, f"{name}[{i}].content")
        for i, item in enumerate(value)
    ]


def _pairs(body: ScoreRequest) -> tuple[list[Input], list[Input]]:
    first, second = _inputs(body.text_1, "text_1"), _inputs(body.text_2, "text_2")
    if not first or not second:
        raise InputError("text_1" if not first else "text_2", "must not be empty")
    if len(first) == 1:
        return first * len(second), second
    if len(first) != len(second):
        raise InputError("text_2", f"{len(second)} texts for {len(first)} in text_1; give one text_1 or equal lists")
    return first, second
