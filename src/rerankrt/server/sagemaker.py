"""Amazon SageMaker's container contract, as vLLM serves it: `GET|POST /ping` (200 once ready) and
`POST /invocations`, a path the other shapes share (`registry.py` routes a body to the API whose fields it has).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from rerankrt.server.errors import error_response
from rerankrt.server.shapes import ApiShape

router = APIRouter()


@router.get("/ping", summary="SageMaker health check")
@router.post("/ping", summary="SageMaker health check", operation_id="ping_post", include_in_schema=False)
async def ping(request: Request) -> JSONResponse:
    """200 once the model is loaded and warmed up, 503 before (as /health)."""
    if not request.app.state.ready:
        return error_response(503, "model is loading", headers={"Retry-After": "5"})
    return JSONResponse({})


API = ApiShape("sagemaker", "SageMaker's health check", router=router)
