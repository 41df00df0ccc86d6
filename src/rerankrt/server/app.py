"""The FastAPI application. Routes validate, submit to the one scoring core, and shape the answer.

Three API shapes share the core: SGLang's `/v1/rerank`, Cohere/Jina's `/rerank`
and `/v2/rerank`, vLLM's `/v1/score`. Requests are encoded off the event loop,
batched across requests by the scheduler, and run on its inference thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from rerankrt import __version__
from rerankrt.errors import InputError
from rerankrt.runtime import Reranker
from rerankrt.runtime.scheduler import Scheduler
from rerankrt.runtime.service import RerankService, ScoreRequest, Scores
from rerankrt.server import schemas
from rerankrt.server.errors import ClientDisconnected, RequestTimedOut, error_response, install_error_handlers
from rerankrt.server.metrics import Metrics
from rerankrt.server.middleware import install_middleware
from rerankrt.server.settings import ServeSettings

log = logging.getLogger(__name__)

ERRORS = {
    400: {"model": schemas.ErrorResponse, "description": "invalid request; `param` names the field"},
    413: {"model": schemas.ErrorResponse, "description": "too many documents or too large a body"},
    503: {"model": schemas.ErrorResponse, "description": "overloaded or timed out; retry after Retry-After"},
}
DISCONNECT_POLL_SECONDS = 0.25


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * logits.astype(np.float64)))  # stable for any logit


def default_padding_ratio(device: str) -> float:
    """On CPU a padded position costs as much as a real one and big batches buy little (bench/load.py)."""
    return 0.1 if device == "cpu" else 1.0


def ranked(scores: np.ndarray, top_n: int | None) -> list[int]:
    """Document indices, best first (ties by index), cut to top_n."""
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:top_n]


def create_app(reranker: Reranker, settings: ServeSettings | None = None) -> FastAPI:
    """An app serving `reranker`; `settings` gives the limits (defaults when None)."""
    settings = settings or ServeSettings(model_path="-")
    metrics = Metrics()
    scheduler = Scheduler(
        reranker.backend.run,
        reranker.encoder.collate,
        max_batch_size=settings.max_batch_size,
        max_batch_tokens=settings.max_batch_tokens,
        max_queued_pairs=settings.max_queued_pairs,
        batch_wait_ms=settings.batch_wait_ms,
        max_padding_ratio=settings.max_padding_ratio or default_padding_ratio(reranker.backend.device),
        on_batch=metrics.observe_batch,
    )
    service = RerankService(reranker, scheduler, settings.max_documents_per_request)

    async def score(request: Request, job: ScoreRequest) -> Scores:
        """The core call, dropped when the client disconnects or the request times out."""
        task = asyncio.ensure_future(service.score(job))
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

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if settings.warmup:
            log.info("warming up %s on %s", reranker.model_name, reranker.backend.name)
            await service.score(ScoreRequest("warm-up query", ["warm-up document", "a second warm-up document"]))
        app.state.ready = True
        log.info("ready: %s on %s (%s)", reranker.model_name, reranker.backend.name, reranker.backend.device)
        yield
        app.state.ready = False
        await asyncio.to_thread(service.close)  # in-flight requests are finished by now; drain the rest

    app = FastAPI(title="rerankrt", version=__version__, lifespan=lifespan)
    app.state.ready = False
    app.state.metrics = metrics
    app.state.scheduler = scheduler
    install_error_handlers(app)

    @app.post(
        "/v1/rerank", response_model=list[schemas.RerankResult], response_model_exclude_none=True, responses=ERRORS
    )
    async def rerank(body: schemas.RerankRequest, request: Request) -> list[schemas.RerankResult]:
        """Score each document against the query; best first (SGLang-compatible)."""
        result = await score(request, _job(body, body.query, body.documents))
        scores = result.logits.astype(np.float64) if body.raw_scores else sigmoid(result.logits)
        return [
            schemas.RerankResult(
                score=float(scores[i]), index=i, document=body.documents[i] if body.return_documents else None
            )
            for i in ranked(scores, body.top_n)
        ]

    async def cohere_rerank(body: schemas.CohereRerankRequest, request: Request) -> schemas.CohereRerankResponse:
        texts = body.texts()
        result = await score(request, _job(body, body.query, texts))
        scores = sigmoid(result.logits)
        return schemas.CohereRerankResponse(
            id=request.state.request_id,
            model=reranker.model_name,
            results=[
                schemas.CohereResult(
                    index=i,
                    relevance_score=float(scores[i]),
                    document=schemas.TextDocument(text=texts[i]) if body.return_documents else None,
                )
                for i in ranked(scores, body.top_n)
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
        if len(set(queries)) == 1:
            results = [await score(request, _job(body, queries[0], documents))]
        else:  # pairwise with different queries: one core call per query, concurrently
            calls = [score(request, _job(body, q, [d])) for q, d in zip(queries, documents, strict=True)]
            results = await asyncio.gather(*calls)
        logits = np.concatenate([r.logits for r in results])
        tokens = sum(r.tokens for r in results)
        return schemas.ScoreResponse(
            id=request.state.request_id,
            created=int(time.time()),
            model=reranker.model_name,
            data=[schemas.ScoreData(index=i, score=float(s)) for i, s in enumerate(sigmoid(logits))],
            usage=schemas.Usage(prompt_tokens=tokens, total_tokens=tokens),
        )

    @app.get("/health")
    async def health(request: Request) -> JSONResponse:
        """200 once the model is loaded and warmed up, 503 before and while shutting down."""
        if not request.app.state.ready:
            return error_response(503, "model is loading", headers={"Retry-After": "5"})
        return JSONResponse({"status": "ok"})

    @app.get("/v1/models", response_model=schemas.ModelList)
    async def models() -> schemas.ModelList:
        return schemas.ModelList(data=[schemas.ModelCard(id=reranker.model_name, **reranker.describe())])

    @app.get("/metrics", include_in_schema=False)
    async def metrics_endpoint() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    install_middleware(app, settings, metrics, scheduler)  # after the routes: it labels metrics by them
    return app


def _job(body: schemas.ScoringOptions, query: str, documents: list[str]) -> ScoreRequest:
    return ScoreRequest(
        query=query,
        documents=documents,
        instruct=body.instruct,
        truncate=body.truncate,
        max_chunks_per_doc=body.max_chunks_per_doc,
    )


def _score_pairs(body: schemas.ScoreRequest) -> tuple[list[str], list[str]]:
    first = [body.text_1] if isinstance(body.text_1, str) else body.text_1
    second = [body.text_2] if isinstance(body.text_2, str) else body.text_2
    if not first or not second:
        raise InputError("text_1" if not first else "text_2", "must not be empty")
    if len(first) == 1:
        return first * len(second), second
    if len(first) != len(second):
        raise InputError("text_2", f"{len(second)} texts for {len(first)} in text_1; give one text_1 or equal lists")
    return first, second
