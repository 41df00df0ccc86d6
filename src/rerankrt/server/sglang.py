"""SGLang's rerank API, `POST /v1/rerank`: a query, documents, and a JSON list of results, best first.

The answer of /v1/rerank under `--rerank-convention sglang`, the default (`registry.py` routes the path).

Fields named in errors: `query` (`query[k]` for a part), `documents[i]` (`documents[i][k]`), `documents` for the
count.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, StrictBool, StrictInt, StrictStr

from rerankrt.server.content import Input
from rerankrt.server.schemas import (
    IMAGE_QUERY_EXAMPLE,
    MULTIMODAL_EXAMPLE,
    PANDA_EXAMPLE,
    ContentPart,
    NonEmptyStr,
    Parts,
    ScoringOptions,
    tagged,
)
from rerankrt.server.scoring import Scoring
from rerankrt.server.shapes import ApiShape, Claim, respond

Content = tagged((StrictStr, "a string"), (Parts, "a list"), message="must be a string or a list of content parts")
Query = tagged((NonEmptyStr, "a string"), (Parts, "a list"), message="must be a string or a list of content parts")


class RerankRequest(ScoringOptions):
    """SGLang's /v1/rerank request, plus `raw_scores` and the ScoringOptions."""

    query: Query = Field(description="the search query: a string, or content parts (multimodal rerankers)")
    documents: list[Content] = Field(
        min_length=1, description="documents to score against the query: strings, or lists of content parts"
    )
    top_n: StrictInt | None = Field(None, ge=0, description="return only the n best documents (default, or 0: all)")
    return_documents: StrictBool = Field(True, description="include each document, as sent, in the response")
    raw_scores: StrictBool = Field(False, description="return the raw relevance logit instead of sigmoid(logit)")

    model_config = {"json_schema_extra": {"examples": [PANDA_EXAMPLE, MULTIMODAL_EXAMPLE, IMAGE_QUERY_EXAMPLE]}}


class RerankResult(BaseModel):
    score: float = Field(description="sigmoid(logit) in [0, 1], or the logit with raw_scores")
    index: int = Field(description="position of the document in the request")
    document: str | list[ContentPart] | None = Field(
        None, description="the document as sent (text, or its content parts), when return_documents is true"
    )


async def rerank(body: RerankRequest, request: Request, scoring: Scoring) -> JSONResponse:
    """Score each document (text, or content parts) against the query; best first (SGLang-compatible)."""
    documents = [Input(d, f"documents[{i}]") for i, d in enumerate(body.documents)]
    result = await scoring.score(request, body, Input(body.query, "query"), documents)
    results = [
        RerankResult(score=r.score, index=r.index, document=body.documents[r.index] if body.return_documents else None)
        for r in result.ranked(body.top_n, body.raw_scores)
    ]
    return respond([r.model_dump(exclude_none=True) for r in results], body)


API = ApiShape(
    "sglang", "SGLang's rerank (a list, best first)", model=RerankRequest, handle=rerank,
    claims=(Claim("/v1/rerank", convention="sglang"),),
)  # fmt: skip
