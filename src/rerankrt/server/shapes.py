"""What makes an adapter a peer's API rather than a look-alike: its error body, the fields it does not know, and
bodies validated by hand where several peers share a path; and what an API shape declares to the registry.

- Error bodies. `errors.py` turns every failure into rerankrt's (and SGLang's) body, `{"object": "error",
  "message", "type", "param", "code"}`. A peer whose clients read another body gets its own, rendered from that
  one: vLLM's `{"error": {...}}` (beside rerankrt's fields on the {results} paths, which Cohere's, Jina's and
  vLLM's clients share), TEI's `{"error", "error_type"}`, Infinity's FastAPI-style 422 `{"detail":
  [...]}` for a client mistake (infinity_client parses only 200 and 422). `shaped_route(shape)` is the route class
  of an adapter's router; `error_in_shape` serves the shared paths, which pick their adapter from the body.
- Unknown fields. Request models accept fields they do not define (a newer client's, another peer's) and
  list them once, in the `X-Rerankrt-Unknown-Fields` response header and a debug log line: never an error, never
  silent. A field a peer defines is a declared field, honoured or refused with a 400 that names it.
- `parse_body`: a JSON body validated against the model the route picked, with errors exactly as FastAPI's
  (so `errors.field_name` names the client's field).
- `ApiShape`: one adapter module's entry in `registry.SHAPES`: its own router, and its `Claim`s on the paths
  several shapes share (/v1/rerank, /rerank, /v1/score, /score, /invocations), which say when a body there is
  its own.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

from fastapi import APIRouter, Request
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
    Reranker's, unexpected ones) come in the peer's `shape`."""

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


Handler = Callable[[Any, Request, Any], Awaitable[JSONResponse]]
"""(the validated request, the HTTP request, `scoring.Scoring`) -> the whole response."""


@dataclass(frozen=True)
class Claim:
    """When a body on a path several API shapes share is this shape's (`registry.pick` decides among them).

    - `fields`: the body is a JSON object with one of these fields and none of `without`;
    - `all_of`: the body is a JSON object with every one of these fields (and, with `fields`, one of those too)
      and none of `without`: a client that always sends the same fields says who it is;
    - `convention`: only under this `--rerank-convention` (the conventions are those the claims name);
    - `fallback`: tried after every other claim on the path (with `fields`, still only such a body).

    Claims by fields are tried first, then claims by the convention alone, then fallbacks; within each, in the
    registry's order. `handle` answers instead of the shape's handler on this path.
    """

    path: str
    fields: tuple[str, ...] = ()
    all_of: tuple[str, ...] = ()
    without: tuple[str, ...] = ()
    convention: str | None = None
    fallback: bool = False
    handle: Handler | None = None

    def __post_init__(self):
        if not (self.fields or self.all_of or self.convention or self.fallback):
            raise ValueError(f"a claim on {self.path} needs fields, a convention or fallback=True")
        if self.without and not (self.fields or self.all_of):
            raise ValueError(f"a claim on {self.path}: `without` narrows `fields` or `all_of`, which it lacks")

    @property
    def tier(self) -> int:
        """0: by the body's fields, 1: by the convention alone, 2: a fallback."""
        return 2 if self.fallback else 0 if self.fields or self.all_of else 1

    def takes(self, data: Any, convention: str) -> bool:
        if self.convention is not None and self.convention != convention:
            return False
        if not (self.fields or self.all_of):
            return True
        return (
            isinstance(data, dict)
            and (not self.fields or any(field in data for field in self.fields))
            and all(field in data for field in self.all_of)
            and not any(field in data for field in self.without)
        )

    def describe(self) -> str:
        """When it takes a body, in words (for the OpenAPI description and --help)."""
        said = []
        if self.fields or self.all_of:
            named = [" or ".join(f"`{f}`" for f in self.fields)] if self.fields else []
            if self.all_of:
                named.append(", ".join(f"`{f}`" for f in self.all_of[:-1]) + f" and `{self.all_of[-1]}`"
                             if len(self.all_of) > 1 else f"`{self.all_of[0]}`")  # fmt: skip
            said.append("a body with " + " and ".join(named))
            if self.without:
                said[-1] += " and no " + " or ".join(f"`{f}`" for f in self.without)
        if self.convention:
            said.append(f"with --rerank-convention {self.convention}")
        if self.fallback:
            said.append("when no other API takes the body")
        return ", ".join(said)


@dataclass(frozen=True)
class ApiShape:
    """One API shape: its own routes (`router`), and how it answers on a path several shapes share: `claims` say
    when a body there is its, `model` validates it, `handle` answers it, `errors` renders its errors. One entry of
    `registry.SHAPES`."""

    name: str
    title: str
    router: APIRouter | None = None
    model: type[BaseModel] | None = None
    handle: Handler | None = None
    errors: ErrorShape = standard_shape
    claims: tuple[Claim, ...] = ()

    def __post_init__(self):
        if self.claims and (self.model is None or self.handle is None):
            raise ValueError(f"API shape {self.name} claims shared paths: it needs a model and a handler")


async def serve_claim(request: Request, shape: ApiShape, claim: Claim, data: Any) -> JSONResponse:
    """`data` (the parsed JSON body) validated as `shape`'s request and answered by it, errors in its shape."""
    try:
        body = parse_body(data, shape.model)
        return await (claim.handle or shape.handle)(body, request, request.app.state.scoring)
    except Exception as exc:  # noqa: BLE001 - rendered by the app's own handlers, then reshaped
        return await error_in_shape(request, exc, shape.errors)
