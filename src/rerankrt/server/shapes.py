"""What makes an adapter a peer's API rather than a look-alike: its error body, the fields it does not know, and
bodies validated by hand where one path serves two peers.

- Error bodies. `errors.py` turns every failure into rerankrt's (and SGLang's) body, `{"object": "error",
  "message", "type", "param", "code"}`. A peer whose clients read another body gets its own, rendered from that
  one: vLLM's `{"error": {...}}` (beside rerankrt's fields on the {results} paths, which Cohere's, Jina's and
  vLLM's clients share), TEI's `{"error", "error_type"}`, Infinity's FastAPI-style 422 `{"detail":
  [...]}` for a client mistake (infinity_client parses only 200 and 422). `shaped_route(shape)` is the route class
  of an adapter's router; `error_in_shape` serves routes that pick their adapter from the body.
- Unknown fields. Request models accept fields they do not define (a newer client's, another peer's) and
  list them once, in the `X-Rerankrt-Unknown-Fields` response header and a debug log line: never an error, never
  silent. A field a peer defines is a declared field, honoured or refused with a 400 that names it.
- `parse_body`: a JSON body validated against the model the route picked, with errors exactly as FastAPI's
  (so `errors.field_name` names the client's field).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError

from rerankrt.errors import InputError
from rerankrt.server.bodies import StrictJSONRequest

log = logging.getLogger(__name__)

UNKNOWN_FIELDS_HEADER = "X-Rerankrt-Unknown-Fields"
LISTED_FIELDS, LISTED_CHARS = 20, 64
M = TypeVar("M", bound=BaseModel)

ErrorShape = Callable[[int, dict, dict], JSONResponse]
"""(status, rerankrt's error body, headers) -> the peer's error response."""


def listed_fields(names: list[str]) -> str:
    """Field names as a header value: percent-encoded (a client's names may hold control or non-ASCII characters,
    which no header can carry), at most LISTED_FIELDS of them, LISTED_CHARS characters each."""
    shown = [quote(name[:LISTED_CHARS], safe="") for name in names[:LISTED_FIELDS]]
    return ", ".join(shown) + (", ..." if len(names) > LISTED_FIELDS else "")


def unknown_fields(body: BaseModel) -> list[str]:
    """Top-level fields of the request its model does not define (accepted, not used)."""
    return sorted(body.model_extra or {})


def respond(content: Any, body: BaseModel | None = None, status: int = 200) -> JSONResponse:
    """`content` as JSON, with the request's unknown fields listed in a header and a debug log line."""
    response = JSONResponse(content, status_code=status)
    if body is not None and (unknown := unknown_fields(body)):
        response.headers[UNKNOWN_FIELDS_HEADER] = listed_fields(unknown)
        log.debug("%s: fields not used by this API: %s", type(body).__name__, ", ".join(unknown))
    return response


def refuse(field: str, why: str) -> InputError:
    """A 400 for a peer's field this server cannot honour, saying why."""
    return InputError(field, why)


def parse_body(data: Any, model: type[M]) -> M:
    """`data` as `model`, its validation errors located under "body" as FastAPI locates them."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = [{**error, "loc": ("body", *error["loc"])} for error in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from None


# --- error bodies ---------------------------------------------------------------------------------


def standard_shape(status: int, error: dict, headers: dict) -> JSONResponse:
    return JSONResponse(error, status_code=status, headers=headers)


def vllm_shape(status: int, error: dict, headers: dict) -> JSONResponse:
    """vLLM's ErrorResponse: the same fields, under "error"."""
    return JSONResponse({"error": _inner(error)}, status_code=status, headers=headers)


def results_shape(status: int, error: dict, headers: dict) -> JSONResponse:
    """The {results} paths serve Cohere's, Jina's and vLLM's clients: rerankrt's body (Cohere's SDK reads
    `message`) with vLLM's `error` object beside it."""
    return JSONResponse({**error, "error": _inner(error)}, status_code=status, headers=headers)


def _inner(error: dict) -> dict:
    return {key: error.get(key) for key in ("message", "type", "param", "code")}


TEI_ERROR_TYPES = {400: "Validation", 413: "Validation", 422: "Tokenizer", 429: "Overloaded", 503: "Overloaded"}


def tei_shape(status: int, error: dict, headers: dict) -> JSONResponse:
    """text-embeddings-inference's ErrorResponse: `{"error": message, "error_type": kind}`."""
    body = {"error": error.get("message", ""), "error_type": TEI_ERROR_TYPES.get(status, "Backend")}
    return JSONResponse(body, status_code=status, headers=headers)


def infinity_shape(status: int, error: dict, headers: dict) -> JSONResponse:
    """Infinity's: a client mistake is FastAPI's 422 `{"detail": [{"loc", "msg", "type"}]}`; others as vLLM's."""
    if status != 400:
        return vllm_shape(status, error, headers)
    param = error.get("param") or "body"
    loc = ["body", *_path(param)] if param != "body" else ["body"]
    detail = [{"loc": loc, "msg": error.get("message", ""), "type": "value_error"}]
    return JSONResponse({"detail": detail}, status_code=422, headers=headers)


def _path(param: str) -> list[str | int]:
    """'documents[2].text' -> ['documents', 2, 'text']."""
    parts: list[str | int] = []
    for piece in param.replace("]", "").replace("[", ".").split("."):
        if piece:
            parts.append(int(piece) if piece.isdigit() else piece)
    return parts


async def error_in_shape(request: Request, exc: Exception, shape: ErrorShape) -> JSONResponse:
    """The response the app's exception handlers give `exc`, re-rendered in the peer's `shape`."""
    handlers = request.app.exception_handlers
    handler = next((handlers[cls] for cls in type(exc).__mro__ if cls in handlers), None)
    if handler is None:
        raise exc
    response = await handler(request, exc)
    if shape is standard_shape:
        return response
    headers = {k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "content-type")}
    return shape(response.status_code, json.loads(response.body), headers)


def shaped_route(shape: ErrorShape) -> type[APIRoute]:
    """A route class whose JSON bodies are parsed strictly (`bodies.parse_json`) and whose errors (validation, the
    engine's, unexpected ones) come in the peer's `shape`."""

    class ShapedRoute(APIRoute):
        def get_route_handler(self):
            handler = super().get_route_handler()

            async def run(request: Request):
                try:
                    return await handler(StrictJSONRequest(request.scope, request.receive))
                except Exception as exc:  # noqa: BLE001 - rendered by the app's own handlers, then reshaped
                    return await error_in_shape(request, exc, shape)

            return run

    return ShapedRoute


@dataclass(frozen=True)
class Peer:
    """One API shape as a path shared by several peers dispatches to it: its request model, its handler (which
    answers the whole response), and its error body."""

    name: str
    model: type[BaseModel]
    handle: Callable[[Any, Request, Any], Awaitable[JSONResponse]]
    shape: ErrorShape = standard_shape


async def serve_peer(request: Request, peer: Peer, data: Any) -> JSONResponse:
    """`data` (the parsed JSON body) validated as `peer`'s request and answered by it, errors in its shape."""
    try:
        body = parse_body(data, peer.model)
        return await peer.handle(body, request, request.app.state.scoring)
    except Exception as exc:  # noqa: BLE001 - rendered by the app's own handlers, then reshaped
        return await error_in_shape(request, exc, peer.shape)
