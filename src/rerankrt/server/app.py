"""The FastAPI application. Routes validate, submit to the one scoring core, and shape the answer.

Three API shapes share the core: SGLang's `/v1/rerank`, Cohere/Jina's `/rerank`
and `/v2/rerank`, vLLM's `/v1/score`. Requests are encoded off the event loop,
batched across requests by the scheduler, and run on its inference thread.
A multimodal request first fetches its media (server.content, server.media), within the
same timeout and disconnect watch as its scoring.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Sequence
from contextlib import asynccontextmanager
from typing import TypeVar

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from rerankrt import __version__
from rerankrt.errors import InputError
from rerankrt.runtime import Reranker
from rerankrt.runtime.engine import ScoreRequest, Scores
from rerankrt.server import schemas
from rerankrt.server.content import Input, resolve
from rerankrt.server.errors import ClientDisconnected, RequestTimedOut, error_response, install_error_handlers
from rerankrt.server.media import MediaFetcher, MediaLimits
from rerankrt.server.metrics import Metrics
from rerankrt.server.middleware import install_middleware
from rerankrt.server.settings import ServeSettings

log = logging.getLogger(__name__)

ERRORS = {
    400: {"model": schemas.ErrorResponse, "description": "invalid request; `param` names the field"},
    413: {"model": schemas.ErrorResponse, "description": "too many documents, too large a body or media item"},
    503: {"model": schemas.ErrorResponse, "description": "overloaded or timed out; retry after Retry-After"},
}
DISCONNECT_POLL_SECONDS = 0.25
T = TypeVar("T")


def create_app(settings: ServeSettings, reranker: Reranker | None = None, metrics: Metrics | None = None) -> FastAPI:
    """An app serving `settings.model_path` (or an engine already loaded with `settings` and `metrics`)."""
    metrics = metrics or Metrics()
    reranker = reranker or Reranker.load(settings=settings, on_batch=metrics.observe_batch)
    service = reranker
    scheduler = reranker.scheduler
    multimodal = reranker.family.multimodal

    async def guarded(request: Request, work: Awaitable[T]) -> T:
        """`work` (fetching media, scoring), dropped when the client disconnects or the request times out."""
        task = asyncio.ensure_future(work)
        deadline = time.monotonic() + settings.request_timeout
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_SECONDS)
                if done:
                    return task.result()
                if await request.is_disconnected():
                    raise ClientDisconnected("the client closed the connection; its pairs were dropped")
                if time.monotonic() > deadline:
                    raise RequestTimedOut(f"no scores within {settings.request_timeout:g} s; retry later")
        finally:
            if not task.done():  # the scheduler drops the pairs still queued before we answer
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def score(body: schemas.ScoringOptions, query: Input, documents: Sequence[Input]) -> Scores:
        """Fetch the media of query and documents (one concurrent fetch), then score through the core."""
        service.check_size(len(documents))  # before fetching anything
        query_content, *contents = await resolve([query, *documents], multimodal, app.state.media, metrics)
        return await service.ascore(_job(body, query_content, contents))

    async def score_pairwise(body: schemas.ScoringOptions, queries: list[Input], documents: list[Input]) -> Scores:
        """Each query against its document: media fetched in one go, then one core call per pair, concurrently."""
        service.check_size(len(documents))
        contents = await resolve([*queries, *documents], multimodal, app.state.media, metrics)
        pairs = zip(contents[: len(queries)], contents[len(queries) :], strict=True)
        results = await asyncio.gather(*(service.ascore(_job(body, q, [d])) for q, d in pairs))
        return Scores(np.concatenate([r.logits for r in results]), sum(r.tokens for r in results))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.media = MediaFetcher(media_limits(settings), on_fetched=metrics.observe_media)
        if settings.warmup:
            log.info("warming up %s on %s", reranker.name, reranker.backend.name)
            await reranker.awarm_up()
        app.state.ready = True
        log.info("ready: %s on %s (%s)", reranker.name, reranker.backend.name, reranker.backend.device)
        yield
        app.state.ready = False
        await app.state.media.aclose()
        await asyncio.to_thread(service.close)  # in-flight requests are finished by now; drain the rest

    app = FastAPI(title="rerankrt", version=__version__, lifespan=lifespan)
    app.state.ready = False
    app.state.media = None  # the MediaFetcher, while the lifespan runs
    app.state.metrics = metrics
    app.state.scheduler = scheduler
    app.state.reranker = reranker
    install_error_handlers(app)

    @app.post(
        "/v1/rerank", response_model=list[schemas.RerankResult], response_model_exclude_none=True, responses=ERRORS
    )
    async def rerank(body: schemas.RerankRequest, request: Request) -> list[schemas.RerankResult]:
        """Score each document (text, or content parts) against the query; best first (SGLang-compatible)."""
        documents = [Input(d, f"documents[{i}]") for i, d in enumerate(body.documents)]
        result = await guarded(request, score(body, Input(body.query, "query"), documents))
        return [
            schemas.RerankResult(
                score=r.score, index=r.index, document=body.documents[r.index] if body.return_documents else None
            )
            for r in result.ranked(body.top_n, body.raw_scores)
        ]

    async def cohere_rerank(body: schemas.CohereRerankRequest, request: Request) -> schemas.CohereRerankResponse:
        documents = [_cohere_input(d, f"documents[{i}]") for i, d in enumerate(body.documents)]
        result = await guarded(request, score(body, _cohere_input(body.query, "query"), documents))
        return schemas.CohereRerankResponse(
            id=request.state.request_id,
            model=reranker.name,
            results=[
                schemas.CohereResult(
                    index=r.index,
                    relevance_score=r.score,
                    document=_cohere_document(body.documents[r.index]) if body.return_documents else None,
                )
                for r in result.ranked(body.top_n)
            ],
            usage=schemas.Usage(prompt_tokens=result.tokens, total_tokens=result.tokens),
        )

    for path in ("/rerank", "/v2/rerank"):
        app.post(
            path,
            response_model=schemas.CohereRerankResponse,
            response_model_exclude_none=True,
            responses=ERRORS,
            summary="Rerank (Cohere / Jina shape)",
        )(cohere_rerank)

    @app.post("/v1/score", response_model=schemas.ScoreResponse, responses=ERRORS)
    async def score_pairs(body: schemas.ScoreRequest, request: Request) -> schemas.ScoreResponse:
        """vLLM's score API: sigmoid scores of text_1 against each text_2, in input order."""
        queries, documents = _score_pairs(body)
        if all(q.value == queries[0].value for q in queries):
            result = await guarded(request, score(body, queries[0], documents))
        else:  # pairwise with different queries
            result = await guarded(request, score_pairwise(body, queries, documents))
        return schemas.ScoreResponse(
            id=request.state.request_id,
            created=int(time.time()),
            model=reranker.name,
            data=[schemas.ScoreData(index=i, score=float(s)) for i, s in enumerate(result.values())],
            usage=schemas.Usage(prompt_tokens=result.tokens, total_tokens=result.tokens),
        )

    @app.get("/health")
    async def health(request: Request) -> JSONResponse:
        """200 once the model is loaded and warmed up, 503 before and while shutting down."""
        if not request.app.state.ready:
            return error_response(503, "model is loading", headers={"Retry-After": "5"})
        return JSONResponse({"status": "ok"})

    @app.get("/v1/models", response_model=schemas.ModelList)
    async def models() -> schemas.ModelList:
        return schemas.ModelList(data=[schemas.ModelCard(id=reranker.name, **reranker.describe())])

    @app.get("/metrics", include_in_schema=False)
    async def metrics_endpoint() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    install_middleware(app, settings, metrics, scheduler)  # after the routes: it labels metrics by them
    return app


def media_limits(settings: ServeSettings) -> MediaLimits:
    return MediaLimits(
        allowed_local_media_path=settings.allowed_local_media_path,
        allowed_networks=tuple(settings.media_allowed_networks),
        max_bytes=settings.media_max_bytes,
        max_image_pixels=settings.media_max_image_pixels,
        max_video_frames=settings.media_max_video_frames,
        video_fps=settings.media_video_fps,
        fetch_timeout=settings.media_fetch_timeout,
        max_redirects=settings.media_max_redirects,
    )


def _job(body: schemas.ScoringOptions, query, documents: list) -> ScoreRequest:
    return ScoreRequest(
        query=query,
        documents=documents,
        instruct=body.instruct,
        truncate=body.truncate,
        max_chunks_per_doc=body.max_chunks_per_doc,
    )


def _cohere_input(value, field: str) -> Input:
    if isinstance(value, schemas.ContentDocument):
        return Input(value.content, f"{field}.content")
    return Input(value if isinstance(value, str) else value.text, field)


def _cohere_document(value) -> schemas.TextDocument | schemas.ContentDocument:
    """A document as sent: {"text"} for text, {"content": [parts]} for content parts."""
    return schemas.TextDocument(text=value) if isinstance(value, str) else value


def _score_inputs(value, name: str) -> list[Input]:
    """vLLM's text_1 / text_2: a string, {"content": [...]} (one input per part, as vLLM has it), or a list."""
    if isinstance(value, str):
        return [Input(value, name)]
    if isinstance(value, schemas.ContentDocument):
        fields = [f"{name}.content[{k}]" for k in range(len(value.content))]
        return [Input([part], field, (field,)) for part, field in zip(value.content, fields, strict=True)]
    return [
        Input(item, f"{name}[{i}]") if isinstance(item, str) else Input(item.content, f"{name}[{i}].content")
        for i, item in enumerate(value)
    ]


def _score_pairs(body: schemas.ScoreRequest) -> tuple[list[Input], list[Input]]:
    first, second = _score_inputs(body.text_1, "text_1"), _score_inputs(body.text_2, "text_2")
    if not first or not second:
        raise InputError("text_1" if not first else "text_2", "must not be empty")
    if len(first) == 1:
        return first * len(second), second
    if len(first) != len(second):
        raise InputError("text_2", f"{len(second)} texts for {len(first)} in text_1; give one text_1 or equal lists")
    return first, second
