"""Amazon SageMaker's container contract, as vLLM serves it: `GET|POST /ping`, answered as /health (200 once ready),
and `POST /invocations`, a path the other shapes share (`registry.py` routes a body to the API whose fields it has).
"""

from __future__ import annotations

from fastapi import APIRouter

from rerankrt.server.operations import health
from rerankrt.server.shapes import ApiShape

router = APIRouter()
router.add_api_route(
    "/ping", health, methods=["GET"], name="ping", summary="SageMaker health check", description="/health's answer."
)
router.add_api_route(
    "/ping", health, methods=["POST"], name="ping", summary="SageMaker health check", operation_id="ping_post",
    include_in_schema=False,
)  # fmt: skip

API = ApiShape("sagemaker", "SageMaker's health check", router=router)
