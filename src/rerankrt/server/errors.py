"""One place that turns exceptions into JSON error responses; no stack trace reaches a client."""

from __future__ import annotations

import logging
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from rerankrt.errors import InputError, RerankrtError
from rerankrt.runtime.reranker import RequestTimedOut, RequestTooLarge
from rerankrt.runtime.scheduler import Overloaded
from rerankrt.server.media import MediaBusy
from rerankrt.server.schemas import ErrorResponse

log = logging.getLogger(__name__)

ERROR_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    404: "NotFoundError",
    405: "MethodNotAllowed",
    413: "RequestTooLarge",
    499: "ClientClosedRequest",
    503: "ServiceUnavailable",
}
RETRY_AFTER_SECONDS = "1"


class ClientDisconnected(RerankrtError):
    """The client went away before its scores were ready."""


def error_response(status: int, message: str, param: str | None = None, headers: dict | None = None) -> JSONResponse:
    body = ErrorResponse(message=message, type=ERROR_TYPES.get(status, "InternalServerError"), param=param, code=status)
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def field_name(loc: tuple) -> str:
    """('body', 'documents', 2) -> 'documents[2]'; the body itself -> 'body'.

    Union members' labels are dropped: tags with a space (schemas' discriminated unions name them so, e.g.
    'image_url part') and pydantic's own labels with brackets ('list[str]').
    """
    parts = [str(p) for p in loc[1:] if p not in ("body",)] if loc and loc[0] == "body" else [str(p) for p in loc]
    parts = [p for p in parts if " " not in p and "[" not in p]
    name = ""
    for part in parts:
        name += f"[{part}]" if part.isdigit() else (f".{part}" if name else part)
    return name or "body"


def validation_message(exc: RequestValidationError) -> tuple[str, str]:
    first = exc.errors()[0]
    if first["type"] == "json_invalid":
        return "body", f"body: invalid JSON ({first.get('ctx', {}).get('error', first['msg'])})"
    field = field_name(tuple(first["loc"]))
    message = first["msg"]
    if first["type"] == "missing":
        message = "is required"
    elif field == "body" and first["type"] in ("model_attributes_type", "dict_type"):
        message = "must be a JSON object"
    more = len(exc.errors()) - 1
    if more:
        message += f" (and {more} more problem{'s' if more > 1 else ''})"
    return field, f"{field}: {message}"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        field, message = validation_message(exc)
        return error_response(400, message, field)

    @app.exception_handler(InputError)
    async def on_input_error(request: Request, exc: InputError) -> JSONResponse:
        return error_response(413 if isinstance(exc, RequestTooLarge) else 400, str(exc), exc.field)

    @app.exception_handler(Overloaded)
    async def on_overloaded(request: Request, exc: Overloaded) -> JSONResponse:
        return error_response(503, str(exc), headers={"Retry-After": str(exc.retry_after)})

    @app.exception_handler(MediaBusy)
    async def on_media_busy(request: Request, exc: MediaBusy) -> JSONResponse:
        return error_response(503, str(exc), headers={"Retry-After": RETRY_AFTER_SECONDS})

    @app.exception_handler(RequestTimedOut)
    async def on_timeout(request: Request, exc: RequestTimedOut) -> JSONResponse:
        return error_response(503, str(exc), headers={"Retry-After": RETRY_AFTER_SECONDS})

    @app.exception_handler(ClientDisconnected)
    async def on_disconnect(request: Request, exc: ClientDisconnected) -> JSONResponse:
        return error_response(499, str(exc))

    @app.exception_handler(ClientDisconnect)
    async def on_body_cut_short(request: Request, exc: ClientDisconnect) -> JSONResponse:
        return error_response(499, "the client closed the connection before its body arrived")

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 413:  # the body limit (middleware.BodySizeLimit)
            return error_response(413, f"body: {exc.detail}", "body")
        return error_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        request_id = getattr(request.state, "request_id", None) or uuid.uuid4().hex[:12]
        log.exception("request %s %s failed (request id %s)", request.method, request.url.path, request_id)
        return error_response(500, f"internal error; the server log has the details under request id {request_id}")
