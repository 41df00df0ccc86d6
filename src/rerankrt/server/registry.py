"""Every API shape this server speaks, in one registry; the app's routes and its OpenAPI document come from it.

Each shape is one adapter module with an `API` entry (`shapes.ApiShape`): its own router for the paths that are
its alone, and its claims on the paths several shapes share (`SHARED_PATHS`). Such a path gets one route here,
which reads the body, picks the shape whose claim takes it (`pick`) and answers in that shape: claims by the
body's fields first, then by `--rerank-convention` alone, then fallbacks, each tier in the order of `SHAPES`. A
body no claim takes, or one that is not JSON, is a 400 in the shape of the path's default (`default`). The
`--rerank-convention` choices are the conventions the claims name (`CONVENTIONS`; the first is the default).

Adding an API shape: one adapter module with its `API`, and its line in `SHAPES`.
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse

from rerankrt.errors import InputError
from rerankrt.server import cohere, infinity, nim, operations, sagemaker, sglang, sglang_score, tei, tokens, vllm
from rerankrt.server.bodies import read_json
from rerankrt.server.schemas import ERRORS
from rerankrt.server.shapes import ApiShape, Claim, error_in_shape, serve_claim

SHAPES: tuple[ApiShape, ...] = (
    sglang.API, vllm.API, sglang_score.API, cohere.API, tei.API, tokens.API, operations.API, infinity.API,
    sagemaker.API, nim.API,
)  # fmt: skip
"""In the order the app serves their own routes, which is also the order claims of one tier are tried in."""

SHARED_PATHS = {
    "/v1/rerank": "Rerank",
    "/rerank": "Rerank",
    "/v1/score": "Score",
    "/score": "Score",
    "/invocations": "SageMaker invocations",
}
"""The paths several shapes claim, in the order the app serves them (before the shapes' own), and what they do."""

CONVENTIONS: tuple[str, ...] = tuple(
    dict.fromkeys(claim.convention for shape in SHAPES for claim in shape.claims if claim.convention)
)
"""The `--rerank-convention` choices; the first is the default."""


def _claims_on(path: str) -> tuple[tuple[ApiShape, Claim], ...]:
    found = [(shape, claim) for shape in SHAPES for claim in shape.claims if claim.path == path]
    return tuple(sorted(found, key=lambda claimed: claimed[1].tier))  # stable: SHAPES' order within a tier


CLAIMS = {path: _claims_on(path) for path in SHARED_PATHS}
"""Each shared path's claims, in the order they are tried."""


def _check_claims() -> None:
    stray = [f"{shape.name} on {claim.path}" for shape in SHAPES for claim in shape.claims if claim.path not in CLAIMS]
    if stray:
        raise ValueError(f"claims on paths that are not in SHARED_PATHS: {', '.join(stray)}")
    if unclaimed := [path for path, claims in CLAIMS.items() if not claims]:
        raise ValueError(f"shared paths that no API shape claims: {', '.join(unclaimed)}")


_check_claims()


def pick(path: str, data, convention: str) -> tuple[ApiShape, Claim] | None:
    """The shape (and its claim) that answers `data`, the parsed body, on the shared `path`; None if none does."""
    return next(((shape, claim) for shape, claim in CLAIMS[path] if claim.takes(data, convention)), None)


def default(path: str, convention: str) -> ApiShape:
    """The shape a shared path's errors come in when no claim takes the body: the one an empty object would get,
    else the first that claims the path under this convention, else the first claimant."""
    under = [(shape, claim) for shape, claim in CLAIMS[path] if claim.convention == convention]
    found = pick(path, {}, convention) or (under or CLAIMS[path])[0]
    return found[0]


def _answer(path: str):
    async def answer(request: Request) -> JSONResponse:
        convention = request.app.state.rerank_convention
        try:
            data = await read_json(request)
        except Exception as exc:  # noqa: BLE001 - a body parse_json refuses (or the client left), in the default shape
            return await error_in_shape(request, exc, default(path, convention).errors)
        found = pick(path, data, convention)
        if found is None:
            error = InputError("body", "not a request this path knows: send a rerank or score body")
            return await error_in_shape(request, error, default(path, convention).errors)
        return await serve_claim(request, *found, data)

    return answer


def _summary(path: str) -> str:
    by = " and --rerank-convention" if any(claim.convention for _, claim in CLAIMS[path]) else "'s fields"
    return f"{SHARED_PATHS[path]} (routed by the body{by})"


def _description(path: str) -> str:
    lines = [f"- {shape.title}: {claim.describe()} (`{shape.model.__name__}`)" for shape, claim in CLAIMS[path]]
    return "\n".join(["Answered by the first of these that takes the body:", "", *lines])


def _shared_router() -> APIRouter:
    router = APIRouter()
    for path in SHARED_PATHS:
        router.add_api_route(
            path, _answer(path), methods=["POST"], responses=ERRORS, summary=_summary(path),
            description=_description(path), name="_".join(reversed(path.strip("/").split("/"))),
        )  # fmt: skip
    return router


ROUTERS: tuple[APIRouter, ...] = (_shared_router(), *(shape.router for shape in SHAPES if shape.router is not None))
"""Every route of the API, in the order the app serves them."""


def convention_help() -> str:
    """What each `--rerank-convention` does, in words, from the claims (the flag's --help)."""
    said, otherwise, by_fields = [], [], {}
    for path in SHARED_PATHS:
        if not any(claim.convention for _, claim in CLAIMS[path]):
            continue
        otherwise += [f"{path} is {shape.title}" for shape, claim in CLAIMS[path] if claim.tier == 2]
        for shape, claim in CLAIMS[path]:
            if claim.tier == 0:
                by_fields.setdefault(f"{claim.describe()} is {shape.title}", []).append(path)
    for convention in CONVENTIONS:
        answers = []
        for shape in SHAPES:
            paths = [claim.path for claim in shape.claims if claim.convention == convention]
            if paths:
                answers.append(f"{' and '.join(paths)} {'is' if len(paths) == 1 else 'are'} {shape.title}")
        said.append(f"{convention}{' (default)' if convention == CONVENTIONS[0] else ''}: {', '.join(answers)}")
    before = "; ".join(f"{rule} on {' and '.join(paths)}" for rule, paths in by_fields.items())
    return (
        f"what the shared rerank paths answer: {'; '.join(said)}; otherwise {', '.join(otherwise)}. Before any "
        f"convention, {before} (docs/api.md)"
    )


def add_request_schemas(app: FastAPI) -> None:
    """The shared paths read their bodies by hand; their OpenAPI entries list every body they take."""
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        spec = generate()
        components = spec.setdefault("components", {}).setdefault("schemas", {})
        for path in SHARED_PATHS:
            operation = spec["paths"].get(path, {}).get("post")
            if operation is None:
                continue
            models = dict.fromkeys(shape.model for shape in SHAPES if any(c.path == path for c in shape.claims))
            refs = []
            for model in models:
                schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(schema.pop("$defs", {}))
                components.setdefault(model.__name__, schema)
                refs.append({"$ref": f"#/components/schemas/{model.__name__}"})
            operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": {"oneOf": refs}}}}
        app.openapi_schema = spec
        return spec

    app.openapi = openapi
