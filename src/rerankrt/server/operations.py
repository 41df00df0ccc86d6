"""Operational routes: `GET /health`, `GET /v1/models`, `GET /metrics` (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from rerankrt.server.errors import error_response


class ModelCard(BaseModel):
    id: str
    object: str = "model"
    owned_by: str = "rerankrt"
    family: str
    backend: str
    device: str
    precision: str
    max_length: int


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelCard]


router = APIRouter()


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    """200 once the model is loaded and warmed up, 503 before and while shutting down."""
    if not request.app.state.ready:
        return error_response(503, "model is loading", headers={"Retry-After": "5"})
    return JSONResponse({"status": "ok"})


@router.get("/v1/models", response_model=ModelList)
async def models(request: Request) -> ModelList:
    reranker = request.app.state.reranker
    return ModelList(data=[ModelCard(id=reranker.name, **reranker.describe())])


@router.get("/metrics", include_in_schema=False)
async def metrics_endpoint(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type="text/plain; version=0.0.4")
