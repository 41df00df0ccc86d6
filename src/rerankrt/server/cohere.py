"""The `{results}` rerank API of Cohere (v1 and v2), Jina and vLLM: `POST /rerank`, `/v2/rerank` (and `/v1/rerank`
with `--rerank-convention results`).

One request model holds every field these peers define, each honoured or refused with a 400 that says why:

- Cohere v1: documents as strings or objects (`text`, other fields kept in the response); `rank_fields` scores the
  named fields of an object, in order (one field: its value; several: `field: value` lines, as Cohere formats
  structured documents); `max_chunks_per_doc`; `return_documents`.
- Cohere v2: `max_tokens_per_doc` (each document cut to its first N tokens), `priority` (0 only: requests are served
  in arrival order), `relevant_spans` (refused unless its mode is off: this server returns scores, not spans),
  `meta.billed_units.search_units` (one per 100 documents).
- Jina: `return_documents` (default true), `usage`.
- vLLM: `top_n: 0` (all), documents as one `{"content": [parts]}` (one document per part), `use_activation` (and
  its deprecated `activation` / `softmax`: false returns the logit), `truncate_prompt_tokens` (-1: the model's
  max length; N: pairs cut to N tokens), `request_id` (the response's id), `mm_processor_kwargs` (refused: media
  are preprocessed as the model's processor config says), `user` (logged).
- rerankrt: `raw_scores`, `instruct`, `truncate`.

Fields named in errors: `query` (or `query.content[k]`), `documents[i]` (or `documents[i].content[k]`,
`documents.content[k]`), `documents` for the count, and each option by its own name.
"""

from __future__ import annotations

import json
import math
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from rerankrt.errors import InputError
from rerankrt.server.content import Input
from rerankrt.server.schemas import (
    ERRORS,
    MULTIMODAL_EXAMPLE,
    PANDA_EXAMPLE,
    ContentDocument,
    NonEmptyStr,
    tagged,
)
from rerankrt.server.scoring import Scoring, ScoringService
from rerankrt.server.shapes import ApiShape, Claim, refuse, respond, results_shape, shaped_route
from rerankrt.server.vllm_options import VLLMOptions, renamed

SEARCH_UNIT_DOCUMENTS = 100  # Cohere bills one search unit per query and up to 100 documents


class ObjectDocument(BaseModel):
    """A Cohere v1 document object: `text`, or the fields `rank_fields` names; every field comes back as sent."""

    text: StrictStr | None = None
    model_config = ConfigDict(extra="allow")


CohereQuery = tagged(
    (NonEmptyStr, "a string"), (ContentDocument, "a content object"),
    message='must be a string or {"content": [content parts]}',
)  # fmt: skip
CohereDocument = tagged(
    (StrictStr, "a string"), (ObjectDocument, "a text object"), (ContentDocument, "a content object"),
    message='must be a string, {"text": ...} or {"content": [content parts]}',
)  # fmt: skip
CohereDocuments = tagged(
    (list[CohereDocument], "a list"), (ContentDocument, "a content object"), (StrictStr, "a string"),
    message='must be a list of documents, or one {"content": [content parts]} (one document per part)',
)  # fmt: skip


class CohereRerankRequest(VLLMOptions):
    """The `{results}` rerank request: Cohere v1/v2, Jina and vLLM fields (see the module docstring)."""

    query: CohereQuery
    documents: CohereDocuments
    top_n: StrictInt | None = Field(None, ge=0, description="the n best documents (default, or 0: all)")
    return_documents: StrictBool = Field(True, description="include each document, as sent (Jina's default)")
    raw_scores: StrictBool = Field(False, description="the raw relevance logit instead of sigmoid(logit)")
    rank_fields: list[StrictStr] | None = Field(None, min_length=1, description="Cohere v1: fields of object documents")
    max_tokens_per_doc: StrictInt | None = Field(None, description="Cohere v2 / vLLM: cut each document to N tokens")
    relevant_spans: dict[str, Any] | None = Field(None, description="Cohere v2: refused unless its mode is off")

    model_config = {
        "json_schema_extra": {
            "examples": [
                PANDA_EXAMPLE,
                {**MULTIMODAL_EXAMPLE, "documents": [{"content": d} if isinstance(d, list) else d
                                                     for d in MULTIMODAL_EXAMPLE["documents"]]},
            ]
        }
    }  # fmt: skip


def request_options(body: CohereRerankRequest, scoring: Scoring) -> dict:
    """Cohere's `max_tokens_per_doc` and vLLM's options as ScoreRequest fields, refusing what cannot be honoured."""
    options: dict = {}
    if body.max_tokens_per_doc is not None:
        if body.max_tokens_per_doc < 1:
            raise refuse("max_tokens_per_doc", "max_tokens_per_doc must be a positive integer")
        options["max_tokens_per_doc"] = body.max_tokens_per_doc
    return options | body.request_options(scoring)


async def rerank(body: CohereRerankRequest, request: Request, scoring: Scoring, api_version: str = "2") -> JSONResponse:
    options = request_options(body, scoring)
    if body.relevant_spans and str(body.relevant_spans.get("mode", "")).lower() not in ("", "off", "none", "disabled"):
        raise refuse("relevant_spans", "this server returns relevance scores only; it does not extract spans")
    documents = _documents(body)
    try:
        result = await scoring.score(request, body.scoring_body(), _input(body.query, "query"), documents, **options)
    except InputError as error:
        raise renamed(error) from error
    raw = body.raw_scores or not body.activated()
    results = []
    for r in result.ranked(body.top_n, raw):
        item: dict[str, Any] = {"index": r.index, "relevance_score": r.score}
        if body.return_documents:
            item["document"] = _document(_listed(body.documents)[r.index])
        results.append(item)
    units = math.ceil(len(documents) / SEARCH_UNIT_DOCUMENTS)
    content = {
        "id": body.request_id or request.state.request_id,
        "model": scoring.model_name,
        "results": results,
        "usage": {"prompt_tokens": result.tokens, "total_tokens": result.tokens},
        "meta": {"api_version": {"version": api_version}, "billed_units": {"search_units": units}},
    }
    return respond(content, body)


async def rerank_v1(body: CohereRerankRequest, request: Request, scoring: Scoring) -> JSONResponse:
    return await rerank(body, request, scoring, api_version="1")


router = APIRouter(route_class=shaped_route(results_shape))


@router.post("/v2/rerank", responses=ERRORS, summary="Rerank (Cohere v2 / vLLM shape)")
async def rerank_v2(body: CohereRerankRequest, request: Request, scoring: ScoringService) -> JSONResponse:
    """Cohere v2's and vLLM's /v2/rerank: `{id, model, results, usage, meta}`."""
    return await rerank(body, request, scoring)


API = ApiShape(
    "results", "the {results} object (Cohere, Jina, vLLM)", router=router,
    model=CohereRerankRequest, handle=rerank, errors=results_shape,
    claims=(
        Claim("/v1/rerank", convention="results", handle=rerank_v1),  # the Cohere v1 SDK, Jina, vLLM clients
        Claim("/rerank", fallback=True),
        Claim("/invocations", fields=("documents",), fallback=True),
    ),
)  # fmt: skip


def _listed(documents) -> list:
    if isinstance(documents, ContentDocument):
        return [ContentDocument(content=[part]) for part in documents.content]
    return [documents] if isinstance(documents, str) else documents


def _documents(body: CohereRerankRequest) -> list[Input]:
    if isinstance(body.documents, ContentDocument):
        return [
            Input([part], f"documents.content[{k}]", (f"documents.content[{k}]",))
            for k, part in enumerate(body.documents.content)
        ]
    listed = _listed(body.documents)
    if not listed:
        raise refuse("documents", "must hold at least one document")
    return [_input(d, f"documents[{i}]", body.rank_fields) for i, d in enumerate(listed)]


def _input(value, field: str, rank_fields: list[str] | None = None) -> Input:
    if isinstance(value, ContentDocument):
        return Input(value.content, f"{field}.content")
    if isinstance(value, str):
        return Input(value, field)
    return Input(_ranked_text(value, field, rank_fields), field)


def _ranked_text(document: ObjectDocument, field: str, rank_fields: list[str] | None) -> str:
    """A document object's text to score: `text`, or its `rank_fields` (one: the value; several: `name: value`)."""
    values = document.model_dump(exclude_none=True)
    names = rank_fields or ["text"]
    missing = [name for name in names if name not in values]
    if missing:
        why = "names" if rank_fields else "needs (or give rank_fields)"
        name = missing[0]
        raise refuse(f"{field}.{name}", f"is missing: the document has no field {name!r} that rank_fields {why}")
    texts = [v if isinstance(v, str) else json.dumps(v, ensure_ascii=False) for v in (values[n] for n in names)]
    if len(names) == 1:
        return texts[0]
    return "\n".join(f"{name}: {text}" for name, text in zip(names, texts, strict=True))


def _document(value) -> dict:
    """A document as sent: {"text"} for a string, the object itself (every field), {"content": [parts]}."""
    if isinstance(value, str):
        return {"text": value}
    return value.model_dump(exclude_none=isinstance(value, ObjectDocument))
