"""The paths two peers share, each request routed to the adapter whose API it is.

- A body with `texts` (and no `documents`) is text-embeddings-inference's rerank, on any rerank path.
- `/v1/rerank`: SGLang's list by default; with `--rerank-convention results` the `{results}` object that the
  Cohere v1 SDK, Jina and vLLM clients read; with `infinity`, Infinity's.
- `/rerank`: the `{results}` object (Cohere, Jina, vLLM) by default; Infinity's with `--rerank-convention infinity`.
- `/v1/score` and `/score`: SGLang's score API when the body has `query` or `label_token_ids` (vLLM's forms use
  `text_1`, `queries`, `data_1`), else vLLM's.
- `/invocations` (SageMaker): by the body's fields: vLLM's score forms, SGLang's `query` + `items`, TEI's `texts`,
  else `query` + `documents` as vLLM's rerank.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse

from rerankrt.errors import InputError
from rerankrt.server import cohere, infinity, sglang, sglang_score, tei, vllm
from rerankrt.server.bodies import read_json
from rerankrt.server.schemas import ERRORS
from rerankrt.server.shapes import Peer, error_in_shape, serve_peer

CONVENTIONS = ("sglang", "results", "infinity")
SCORE_FORMS = ("text_1", "text_2", "queries", "data_1", "data_2")

router = APIRouter()


def rerank_peer(path: str, data: Any, convention: str) -> Peer:
    if isinstance(data, dict) and "texts" in data and "documents" not in data:
        return tei.PEER
    if convention == "infinity":
        return infinity.PEER
    if path == "/v1/rerank":
        return sglang.PEER if convention == "sglang" else cohere.PEER_V1
    return cohere.PEER


def score_peer(data: Any) -> Peer:
    if isinstance(data, dict) and ("label_token_ids" in data or "query" in data):
        return sglang_score.PEER
    return vllm.PEER


def invocation_peer(data: Any) -> Peer | None:
    if not isinstance(data, dict):
        return None
    if any(key in data for key in SCORE_FORMS):
        return vllm.PEER
    if "label_token_ids" in data or "items" in data:
        return sglang_score.PEER
    if "texts" in data:
        return tei.PEER
    if "documents" in data:
        return cohere.PEER
    return None


async def _dispatch(request: Request, pick, default: Peer) -> JSONResponse:
    try:
        data = await read_json(request)
    except Exception as exc:  # noqa: BLE001 - a body parse_json refuses (or the client left), in the default shape
        return await error_in_shape(request, exc, default.shape)
    peer = pick(data)
    if peer is None:
        error = InputError("body", "not a request this path knows: send a rerank or score body")
        return await error_in_shape(request, error, default.shape)
    return await serve_peer(request, peer, data)


def _convention(request: Request) -> str:
    return getattr(request.app.state, "rerank_convention", "sglang")


@router.post("/v1/rerank", responses=ERRORS, summary="Rerank (SGLang list by default; see --rerank-convention)")
async def rerank_v1(request: Request) -> JSONResponse:
    """SGLang's rerank (a list, best first) by default; the `{results}` object or Infinity's with
    `--rerank-convention`; TEI's list for a body with `texts`."""
    convention = _convention(request)
    return await _dispatch(
        request, lambda data: rerank_peer("/v1/rerank", data, convention), rerank_peer("/v1/rerank", {}, convention)
    )


@router.post("/rerank", responses=ERRORS, summary="Rerank (Cohere / Jina / vLLM {results}; TEI with texts)")
async def rerank(request: Request) -> JSONResponse:
    """The `{results}` object of Cohere, Jina and vLLM (Infinity's with `--rerank-convention infinity`); TEI's list
    for a body with `texts`."""
    convention = _convention(request)
    return await _dispatch(
        request, lambda data: rerank_peer("/rerank", data, convention), rerank_peer("/rerank", {}, convention)
    )


@router.post("/v1/score", responses=ERRORS, summary="Score (vLLM forms; SGLang's with query and items)")
async def score_v1(request: Request) -> JSONResponse:
    """vLLM's score API (`text_1`/`text_2`, `queries`/`documents`, ...), or SGLang's (`query`, `items`,
    `label_token_ids`)."""
    return await _dispatch(request, score_peer, vllm.PEER)


@router.post("/score", responses=ERRORS, summary="Score (vLLM forms)")
async def score(request: Request) -> JSONResponse:
    """vLLM's score API at its own path."""
    return await _dispatch(request, score_peer, vllm.PEER)


@router.post("/invocations", responses=ERRORS, summary="SageMaker invocations (routed by the body's fields)")
async def invocations(request: Request) -> JSONResponse:
    """A score or rerank body of any API above, answered by that API."""
    return await _dispatch(request, invocation_peer, vllm.PEER)


def add_request_schemas(app: FastAPI) -> None:
    """The shared paths read their bodies by hand; their OpenAPI entries list every body they take."""
    bodies = {
        "/v1/rerank": [sglang.PEER, cohere.PEER, infinity.PEER, tei.PEER],
        "/rerank": [cohere.PEER, infinity.PEER, tei.PEER],
        "/v1/score": [vllm.PEER, sglang_score.PEER],
        "/score": [vllm.PEER, sglang_score.PEER],
        "/invocations": [vllm.PEER, sglang_score.PEER, tei.PEER, cohere.PEER],
    }
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        spec = generate()
        components = spec.setdefault("components", {}).setdefault("schemas", {})
        for path, peers in bodies.items():
            operation = spec["paths"].get(path, {}).get("post")
            if operation is None:
                continue
            refs = []
            for peer in peers:
                schema = peer.model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(schema.pop("$defs", {}))
                components.setdefault(peer.model.__name__, schema)
                refs.append({"$ref": f"#/components/schemas/{peer.model.__name__}"})
            operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": {"oneOf": refs}}}}
        app.openapi_schema = spec
        return spec

    app.openapi = openapi
