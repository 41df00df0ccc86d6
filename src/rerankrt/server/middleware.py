"""Cross-cutting request handling: body size limit, request ids, API key, metrics and the access log."""

from __future__ import annotations

import hmac
import logging
import re
import time
import uuid
from collections.abc import Iterable

from fastapi import FastAPI
from starlette.exceptions import HTTPException

from rerankrt.runtime.scheduler import Scheduler
from rerankrt.server.errors import error_response
from rerankrt.server.metrics import Metrics
from rerankrt.server.settings import ServeSettings

access_log = logging.getLogger("rerankrt.access")

API_PREFIXES = (  # what --api-key protects (docs, OpenAPI and SageMaker's /ping stay public)
    "/v1/", "/v2/", "/rerank", "/score", "/invocations", "/tokenize", "/detokenize", "/predict", "/models",
)  # fmt: skip
REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class BodySizeLimit:
    """ASGI middleware: a JSON 413 for a body over `max_bytes`, by Content-Length or by counting what arrives.

    Reading such a body raises HTTPException(413) where the route reads it, so the route answers in its API's error
    body (the app's handler names the limit); any other answer to it (a route that reads no body) is replaced by
    rerankrt's 413. (Starlette's own limit answers in plain text.)
    """

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        over = declared.isdigit() and int(declared) > self.max_bytes
        received = 0
        raised = answered = False

        async def limited_receive():
            nonlocal received, over, raised
            if not over:
                event = await receive()
                if event["type"] == "http.request":
                    received += len(event.get("body", b""))
                    over = received > self.max_bytes
                if not over:
                    return event
            if raised:  # the route was told once; past that the body is gone
                return {"type": "http.disconnect"}
            raised = True
            raise HTTPException(413, f"over the limit of {self.max_bytes} bytes")

        async def guarded_send(message):
            nonlocal answered
            if message["type"] == "http.response.start":
                answered = not over or message["status"] == 413
            if answered:
                await send(message)

        await self.app(scope, limited_receive, guarded_send)
        if over and not answered:
            too_large = error_response(413, f"body: over the limit of {self.max_bytes} bytes", "body")
            await too_large(scope, receive, send)


class Observe:
    """ASGI middleware: request id, API key, metrics and one access-log line per request.

    Pure ASGI rather than Starlette's BaseHTTPMiddleware, which wraps `receive` in a task group
    and so hides client disconnects from `request.is_disconnected()`.
    """

    def __init__(self, app, settings: ServeSettings, metrics: Metrics, scheduler: Scheduler, routes: set[str]):
        self.app = app
        self.metrics = metrics
        self.scheduler = scheduler
        self.routes = routes
        self.expected = f"Bearer {settings.api_key}".encode() if settings.api_key else None
        self.protected_ops = {
            path for path, public in (("/health", settings.public_health), ("/metrics", settings.public_metrics))
            if not public
        }  # fmt: skip

    def needs_key(self, path: str) -> bool:
        return self.expected is not None and (path.startswith(API_PREFIXES) or path in self.protected_ops)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        headers = dict(scope["headers"])
        incoming = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if REQUEST_ID.match(incoming) else uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = request_id  # request.state.request_id in routes
        status = 500

        async def send_with_id(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            path = scope["path"]
            if self.needs_key(path) and not hmac.compare_digest(headers.get(b"authorization", b""), self.expected):
                response = error_response(401, "missing or wrong API key: send Authorization: Bearer <key>")
                response.headers["WWW-Authenticate"] = "Bearer"
                await response(scope, receive, send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        finally:
            self.record(scope, status, time.perf_counter() - started, request_id)

    def record(self, scope, status: int, seconds: float, request_id: str) -> None:
        route = scope["path"] if scope["path"] in self.routes else "unmatched"
        self.metrics.requests.labels(route, str(status)).inc()
        self.metrics.latency.labels(route).observe(seconds)
        access_log.info(
            "%s %s %d %.1f ms (request id %s)", scope["method"], scope["path"], status, seconds * 1000, request_id,
            extra={
                "request_id": request_id, "method": scope["method"], "path": scope["path"], "status": status,
                "duration_ms": round(seconds * 1000, 2),
            },
        )  # fmt: skip


def install_middleware(
    app: FastAPI, settings: ServeSettings, metrics: Metrics, scheduler: Scheduler, routes: Iterable[str]
) -> None:
    """Body limit inside, Observe outside (so it logs and counts the 413s too); metrics are labelled by `routes`,
    the paths the app serves (any other path counts as "unmatched")."""
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
    app.add_middleware(Observe, settings=settings, metrics=metrics, scheduler=scheduler, routes=set(routes))
