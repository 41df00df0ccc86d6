"""The FastAPI application: routes only validate, submit to the inference thread and shape the answer."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from rerankrt import __version__
from rerankrt.runtime import Reranker
from rerankrt.server.errors import error_response, install_error_handlers
from rerankrt.server.schemas import ErrorResponse, ModelCard, ModelList, RerankRequest, RerankResult

log = logging.getLogger(__name__)

ERRORS = {400: {"model": ErrorResponse, "description": "invalid request; `param` names the field"}}


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * logits.astype(np.float64)))  # stable for any logit


def create_app(reranker: Reranker) -> FastAPI:
    """An app serving `reranker`; inference runs on one worker thread, never on the event loop."""
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rerankrt-inference")

    async def infer(query: str, documents: list[str], instruct: str | None) -> np.ndarray:
        return await asyncio.get_running_loop().run_in_executor(executor, reranker.score, query, documents, instruct)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        log.info("warming up %s on %s", reranker.model_name, reranker.backend.name)
        await infer("warm-up query", ["warm-up document", "a second, longer warm-up document"], None)
        app.state.ready = True
        log.info("ready")
        yield
        app.state.ready = False
        executor.shutdown(wait=True)

    app = FastAPI(title="rerankrt", version=__version__, lifespan=lifespan)
    app.state.ready = False
    install_error_handlers(app)

    @app.post("/v1/rerank", response_model=list[RerankResult], response_model_exclude_none=True, responses=ERRORS)
    async def rerank(request: RerankRequest) -> list[RerankResult]:
        """Score each document against the query; best first (SGLang-compatible)."""
        logits = await infer(request.query, request.documents, request.instruct)
        scores = logits.astype(np.float64) if request.raw_scores else sigmoid(logits)
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[: request.top_n]
        return [
            RerankResult(
                score=float(scores[i]),
                index=i,
                document=request.documents[i] if request.return_documents else None,
            )
            for i in order
        ]

    @app.get("/health")
    async def health(request: Request) -> JSONResponse:
        """200 once the model is loaded and warmed up, 503 before."""
        if not request.app.state.ready:
            return error_response(503, "model is loading", headers={"Retry-After": "5"})
        return JSONResponse({"status": "ok"})

    @app.get("/v1/models", response_model=ModelList)
    async def models() -> ModelList:
        return ModelList(data=[ModelCard(id=reranker.model_name, **reranker.describe())])

    return app
