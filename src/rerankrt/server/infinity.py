"""Infinity's rerank API (`POST /rerank`, and `/v1/rerank`, with `--rerank-convention infinity`) and `GET /models`.

Under any convention, a body on `/rerank` with `raw_scores`, `return_documents` and `model` (and no TEI `texts`) is
Infinity's: infinity_client sends all three on every call (they have defaults), so it works unmodified. No other
peer's client sends `raw_scores` (elsewhere a rerankrt extension); a body without all three stays the convention's.

Request: `query`, `documents` (strings), `return_documents` (default false), `raw_scores` (the logit instead of
sigmoid), `top_n`, `model`. Response: `{"object": "rerank", "results": [{"relevance_score", "index",
"document"}], "model", "usage", "id", "created"}` with `document` a string (or null). A client mistake is a 422
`{"detail": [{"loc", "msg", "type"}]}`, as Infinity's FastAPI answers it (infinity_client parses only 200 and 422).
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import Field, StrictBool, StrictInt, StrictStr

from rerankrt.server.content import Input
from rerankrt.server.schemas import NonEmptyStr, ScoringOptions
from rerankrt.server.scoring import Scoring
from rerankrt.server.shapes import ApiShape, Claim, infinity_shape, respond

INFINITY_CLIENT_FIELDS = ("raw_scores", "return_documents", "model")
"""What infinity_client's RerankInput always sends besides `query` and `documents` (each has a default)."""


class InfinityRerankRequest(ScoringOptions):
    """Infinity's RerankInput."""

    query: NonEmptyStr
    documents: list[StrictStr] = Field(min_length=1)
    return_documents: StrictBool = Field(False, description="include each document (a string) in the results")
    raw_scores: StrictBool = Field(False, description="the logit instead of sigmoid(logit)")
    top_n: StrictInt | None = Field(None, gt=0, description="the n best documents (default: all)")


async def rerank(body: InfinityRerankRequest, request: Request, scoring: Scoring) -> JSONResponse:
    documents = [Input(d, f"documents[{i}]") for i, d in enumerate(body.documents)]
    result = await scoring.score(request, body, Input(body.query, "query"), documents)
    results = [
        {"relevance_score": r.score, "index": r.index,
         "document": body.documents[r.index] if body.return_documents else None}
        for r in result.ranked(body.top_n, body.raw_scores)
    ]  # fmt: skip
    content = {
        "object": "rerank",
        "results": results,
        "model": scoring.model_name,
        "usage": {"prompt_tokens": result.tokens, "total_tokens": result.tokens},
        "id": f"infinity-{request.state.request_id}",
        "created": int(time.time()),
    }
    return respond(content, body)


router = APIRouter()


@router.get("/models", summary="Models (Infinity shape)")
async def models(request: Request) -> JSONResponse:
    """The served model as Infinity lists it (`owned_by` is "infinity": infinity_client accepts no other value;
    `/v1/models` lists the same model, OpenAI-style)."""
    reranker = request.app.state.reranker
    card = {
        "id": reranker.name, "object": "model", "owned_by": "infinity", "created": int(time.time()),
        "backend": reranker.backend.name, "capabilities": ["rerank"], "stats": {}, **reranker.describe(),
    }  # fmt: skip
    return JSONResponse({"data": [card], "object": "list"})


API = ApiShape(
    "infinity", "Infinity's rerank (422 for a client mistake)", router=router,
    model=InfinityRerankRequest, handle=rerank, errors=infinity_shape,
    claims=(
        Claim("/rerank", all_of=INFINITY_CLIENT_FIELDS, without=("texts",)),
        Claim("/v1/rerank", convention="infinity"),
        Claim("/rerank", convention="infinity"),
    ),
)  # fmt: skip
