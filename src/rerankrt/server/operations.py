"""Operational routes: `GET /health`, `GET /v1/models`, `GET /metrics` (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from rerankrt.server.errors import error_response
from rerankrt.server.shapes import ApiShape


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
    """200 once the model is loaded, self-checked and warmed up, 503 before and while shutting down; the body says
    how the plan's self-check went on this machine."""
    if not request.app.state.ready:
        return error_response(503, "model is loading", headers={"Retry-After": "5"})
    model = request.app.state.reranker.model
    return JSONResponse({"status": "ok", "self_check": self_check_summary(model), "plan": plan_choice(model)})


def plan_choice(model) -> dict:
    """The plan that serves and how it was chosen: by measurement here (runtime.tuning, with every plan's time on
    the golden set) or by the fixed order."""
    timings = model.timings
    if timings is None:
        return {"serving": model.plan.describe(), "chosen_by": "fixed order"}
    return {"serving": model.plan.describe(), "chosen_by": "measurement", "measured_at": timings.measured_at,
            "golden_set_seconds": timings.by_plan()}  # fmt: skip


def self_check_summary(model) -> dict:
    """The plan's self-check in a few fields: passed, the largest |Δlogit| from the golden set, the rule, the cost."""
    check = model.self_check
    if check is None:
        return {"status": "skipped", "reason": model.self_check_skipped}
    return {
        "status": "passed" if check.passed else "failed",
        "plan": check.plan,
        "max_dlogit": check.max_logit_diff,
        "rule": check.rule,
        "pairs": check.pairs,
        "seconds": check.seconds,
    }


@router.get("/v1/models", response_model=ModelList)
async def models(request: Request) -> ModelList:
    reranker = request.app.state.reranker
    return ModelList(data=[ModelCard(id=reranker.name, **reranker.describe())])


@router.get("/metrics", include_in_schema=False)
async def metrics_endpoint(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type="text/plain; version=0.0.4")


API = ApiShape("operations", "rerankrt's health, models and metrics", router=router)
