"""vLLM's score API, `POST /score` and `/v1/score`: sigmoid scores of one input against each other, in input order.

Every form vLLM takes: `text_1`/`text_2`, `queries`/`documents`, `queries`/`items`, `data_1`/`data_2`; each side
is a string, a list, or (as in vLLM) a single `{"content": [...]}` that holds one input per part. One first input
is scored against every second; two lists of equal length are scored pairwise. vLLM's options: `use_activation`
(false: the logit), `truncate_prompt_tokens`, `request_id`, `priority` (0), `mm_processor_kwargs` (refused),
`user`; errors come in vLLM's body, `{"error": {"message", "type", "param", "code"}}`. Fields named in errors:
`text_1` / `text_1[i]` / `text_1[i].content[k]` / `text_1.content[k]`, the same for the other names, and the
second field for the count.
"""

from __future__ import annotations

import time
from typing import Literal

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, StrictStr

from rerankrt.errors import InputError
from rerankrt.server.content import Input
from rerankrt.server.schemas import PANDA_EXAMPLE, TINY_PNG, ContentDocument, Usage, tagged
from rerankrt.server.scoring import Scoring
from rerankrt.server.shapes import ApiShape, Claim, respond, vllm_shape
from rerankrt.server.vllm_options import VLLMOptions, renamed

ScoreInput = tagged(
    (StrictStr, "a string"), (ContentDocument, "a content object"),
    message='must be a string or {"content": [content parts]}',
)  # fmt: skip
ScoreInputs = tagged(
    (StrictStr, "a string"), (ContentDocument, "a content object"), (list[ScoreInput], "a list"),
    message='must be a string, {"content": [content parts]} or a list of them',
)  # fmt: skip


class VLLMScoreRequest(VLLMOptions):
    """vLLM's score request in any of its forms: text_1/text_2, queries/documents, queries/items, data_1/data_2.

    The first input is scored against each of the second (or pairwise when both are lists of equal length). As in
    vLLM, a single `{"content": [...]}` (not in a list) holds one input per part.
    """

    text_1: ScoreInputs | None = None
    text_2: ScoreInputs | None = None
    queries: ScoreInputs | None = None
    documents: ScoreInputs | None = None
    items: ScoreInputs | None = None
    data_1: ScoreInputs | None = None
    data_2: ScoreInputs | None = None

    model_config = {
        "json_schema_extra": {
            "examples": [
                {"text_1": "what is panda?", "text_2": PANDA_EXAMPLE["documents"]},
                {"queries": "what is panda?", "documents": PANDA_EXAMPLE["documents"]},
                {"text_1": "a two-tone test pattern", "text_2": [
                    "a photo of a panda", {"content": [{"type": "image_url", "image_url": {"url": TINY_PNG}}]},
                ]},
            ]
        }
    }  # fmt: skip

    def pair_fields(self) -> tuple[str, str]:
        """The two fields this request uses, by vLLM's forms in the order vLLM tries them."""
        for first, second in FORMS:
            if getattr(self, first) is not None and getattr(self, second) is not None:
                return first, second
        for first, second in FORMS:
            if getattr(self, first) is not None or getattr(self, second) is not None:
                raise InputError(second if getattr(self, first) is not None else first, "is required")
        raise InputError("text_1", "is required (with text_2; or queries and documents, queries and items, data_1 "
                         "and data_2)")  # fmt: skip


FORMS = (("queries", "documents"), ("queries", "items"), ("data_1", "data_2"), ("text_1", "text_2"))


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


async def score(body: VLLMScoreRequest, request: Request, scoring: Scoring) -> JSONResponse:
    """vLLM's score API: scores of the first input against each of the second, in input order."""
    first, second = body.pair_fields()
    options = body.request_options(scoring)
    scoring_body = body.scoring_body()
    queries, documents = _pairs(body, first, second)
    try:
        if all(q.value == queries[0].value for q in queries):
            result = await scoring.score(request, scoring_body, queries[0], documents, second, **options)
        else:  # pairwise with different queries
            result = await scoring.score_pairwise(request, scoring_body, queries, documents, second, **options)
    except InputError as error:
        raise renamed(error) from None
    values = result.values(raw=not body.activated())
    response = ScoreResponse(
        id=body.request_id or request.state.request_id,
        created=int(time.time()),
        model=scoring.model_name,
        data=[ScoreData(index=i, score=float(v)) for i, v in enumerate(values)],
        usage=Usage(prompt_tokens=result.tokens, total_tokens=result.tokens),
    )
    return respond(response.model_dump(), body)


OWN_FIELDS = ("text_1", "text_2", "queries", "data_1", "data_2")
"""The fields of vLLM's score forms that no other API's body has (`documents` and `items` are others' too)."""

API = ApiShape(
    "vllm-score", "vLLM's score", model=VLLMScoreRequest, handle=score, errors=vllm_shape,
    claims=(
        Claim("/v1/score", fallback=True),
        Claim("/score", fallback=True),
        Claim("/invocations", fields=OWN_FIELDS),
    ),
)  # fmt: skip


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


def _pairs(body: VLLMScoreRequest, first_name: str, second_name: str) -> tuple[list[Input], list[Input]]:
    first = _inputs(getattr(body, first_name), first_name)
    second = _inputs(getattr(body, second_name), second_name)
    if not first or not second:
        raise InputError(first_name if not first else second_name, "must not be empty")
    if len(first) == 1:
        return first * len(second), second
    if len(first) != len(second):
        raise InputError(
            second_name, f"{len(second)} inputs for {len(first)} in {first_name}; give one {first_name} or equal lists"
        )
    return first, second
