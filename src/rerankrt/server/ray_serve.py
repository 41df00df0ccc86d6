"""Ray Serve: replicas of the rerankrt server behind Ray Serve's HTTP proxy (`rerankrt serve --ray`, `serve run`).

The one module that imports ray (the `ray` extra). Each replica is a Ray actor that runs `create_app(settings)`:
the same routes, one Reranker and one cross-request scheduler per replica, so batching stays inside a replica and Ray
only routes whole requests. Every replica loads the same artifact path (shared storage, verified by each loader)
and, on a GPU node, builds or checks the TensorRT engine for its own GPU first.

Overload stays 503 + Retry-After at both levels: Ray sends a replica at most `--max-ongoing-requests` requests and
each proxy holds at most `--max-queued-requests` more (503 + Retry-After beyond, Ray's backpressure answer); a
replica's own queue answers 503 + Retry-After past `--max-queued-pairs`. A replica lost mid-request (process killed,
node gone) makes Ray's proxy answer 500 for the requests it held; `ReplicaLost` (a proxy middleware, installed
through RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH) turns those into 503 + Retry-After, since scoring is safe to
retry. Responses from a replica carry X-Rerankrt-Replica (its id), which is how it tells them apart. See docs/deploy.md.

Deploy with `rerankrt serve --ray --replicas N ...`, or with Ray's own CLI and a config file:
`serve run deploy/ray/serve-config.yaml` (import_path `rerankrt.server.ray_serve:app_builder`; args are the
ServeSettings fields).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import signal
import threading
from pathlib import Path

from rerankrt.artifact import BUILD_LOCK
from rerankrt.errors import RerankrtError

try:
    import ray
    from ray import serve
except ImportError as exc:  # pragma: no cover - depends on the install
    raise RerankrtError("--ray needs Ray Serve: pip install 'rerankrt[ray]'") from exc

from starlette.middleware import Middleware

from rerankrt.logs import configure_logging
from rerankrt.server.errors import RETRY_AFTER_SECONDS, error_response
from rerankrt.server.settings import ServeSettings

log = logging.getLogger("rerankrt")

APP_NAME = "rerankrt"
REPLICA_HEADER = b"x-rerankrt-replica"
LOCK_FILE = BUILD_LOCK
PROXY_CALLBACK = "rerankrt.server.ray_serve:proxy_middlewares"
HEALTH_SCORE_TIMEOUT_S = 10.0  # the health check's own pair through an idle Reranker
HEALTH_CHECK_PERIOD_S = 5.0
HEALTH_CHECK_TIMEOUT_S = 20.0


# --- the replica ---------------------------------------------------------------------------------


@serve.ingress()
class RerankrtReplica:
    """One rerankrt server in a Ray actor: `create_app(settings)` as the ingress app, and a health check."""

    def __init__(self, settings: dict):
        self.settings = ServeSettings(**settings)
        configure_logging(self.settings.log_level, self.settings.log_format)
        model_path = Path(self.settings.model_path)
        if self.settings.build_engine and self.settings.backend in ("auto", "tensorrt"):
            from rerankrt.artifact import is_artifact

            if is_artifact(model_path):  # this replica's GPU (Ray sets CUDA_VISIBLE_DEVICES to it)
                ensure_engine_once(model_path, required=self.settings.backend == "tensorrt")

    def __serve_build_asgi_app__(self):
        from rerankrt.server.app import create_app

        app = create_app(self.settings)  # Ray runs its lifespan (warm-up) before the replica takes requests
        app.add_middleware(ReplicaHeader, replica=serve.get_replica_context().replica_id.unique_id)
        return app

    async def check_health(self) -> None:
        """Raise when the Reranker does not score: Ray then replaces this replica.

        Idle, one pair goes through the whole Reranker (encode, scheduler, backend). Busy, a pair would wait behind
        the queue, so the check is that the inference thread lives and a forward pass ended within
        --request-timeout (past that the stall guard fails the waiting requests anyway)."""
        from rerankrt.runtime.reranker import ScoreRequest

        app = self.app
        if not app.state.ready:
            raise RuntimeError("the model is not loaded (or is shutting down)")
        scheduler = app.state.scheduler
        if not scheduler.alive:
            raise RuntimeError("the inference thread has stopped")
        if scheduler.idle:
            request = ScoreRequest("health check", ["is the reranker scoring?"])
            scores = await asyncio.wait_for(app.state.reranker.ascore(request), HEALTH_SCORE_TIMEOUT_S)
            if len(scores.logits) != 1:
                raise RuntimeError(f"the Reranker gave {len(scores.logits)} scores for one pair")
        elif scheduler.stalled_seconds > self.settings.request_timeout:
            raise RuntimeError(
                f"{scheduler.queued_pairs} pairs queued and no forward pass finished for "
                f"{self.settings.request_timeout:g} s"
            )


def ensure_engine_once(artifact: Path, required: bool) -> None:
    """`ensure_engine` under an exclusive lock on the artifact folder: replicas starting together on GPUs of one type
    build its engine once (the others wait, then find it). The same lock file as deploy/kubernetes/gpu.yaml's
    `flock`; a read-only folder is checked without the lock (nothing can be built into it anyway)."""
    from rerankrt.export.tensorrt import ensure_engine

    try:
        lock = open(artifact / LOCK_FILE, "a")  # held across the build
    except OSError:
        return ensure_engine(artifact, required=required)
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ensure_engine(artifact, required=required)


class ReplicaHeader:
    """ASGI middleware in each replica: every response names its replica (X-Rerankrt-Replica), which tells the
    proxy's `ReplicaLost` a replica's answer from the proxy's own, and a client which replica answered."""

    def __init__(self, app, replica: str):
        self.app = app
        self.header = (REPLICA_HEADER, replica.encode())

    async def __call__(self, scope, receive, send):
        async def send_with_replica(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), self.header]
            await send(message)

        await self.app(scope, receive, send_with_replica if scope["type"] == "http" else send)


def deployment_options(settings: ServeSettings) -> dict:
    """`@serve.deployment` options from the settings: replicas or autoscaling, per-replica limits, resources."""
    options = {
        "max_ongoing_requests": settings.max_ongoing_requests,
        "max_queued_requests": settings.max_queued_requests,
        "backpressure_config": {"status_code": 503, "retry_after_s": int(RETRY_AFTER_SECONDS)},
        "ray_actor_options": {"num_cpus": settings.replica_cpus, "num_gpus": settings.replica_gpus},
        "health_check_period_s": HEALTH_CHECK_PERIOD_S,
        "health_check_timeout_s": HEALTH_CHECK_TIMEOUT_S,
        # a replica stopped on scale-down or upgrade finishes its requests first, as the plain server does on SIGTERM
        "graceful_shutdown_timeout_s": settings.request_timeout,
    }
    if settings.autoscale_min_replicas is not None:
        options["autoscaling_config"] = {
            "min_replicas": settings.autoscale_min_replicas,
            "max_replicas": settings.autoscale_max_replicas,
            "target_ongoing_requests": settings.autoscale_target_ongoing_requests,
        }
    else:
        options["num_replicas"] = settings.replicas
    return options


def build_app(settings: ServeSettings) -> serve.Application:
    """The Ray Serve application: the replica deployment with the settings' options, bound to the settings."""
    deployment = serve.deployment(RerankrtReplica, name="rerankrt", **deployment_options(settings))
    return deployment.bind(settings.model_dump(mode="json", exclude_none=True))


def app_builder(args: dict) -> serve.Application:
    """For `serve run` / a Serve config file / KubeRay's serveConfigV2: `args` are ServeSettings fields
    (model_path, max_queued_pairs, replicas, ...); RERANKRT_* variables on the driver fill the rest."""
    return build_app(ServeSettings(**args))


# --- the proxy: a lost replica is a 503 + Retry-After, not a 500 ------------------------------------


class ReplicaLost:
    """ASGI middleware for Ray's HTTP proxy: the client of a request whose replica died gets 503 + Retry-After (in
    our error shape) instead of the proxy's 500 or a response never started.

    The proxy's answer for such a request is a 500 that no replica sent (a replica's responses carry
    X-Rerankrt-Replica), or no response at all (uvicorn's own 500 follows). A replica's 500 passes unchanged."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = replaced = False

        async def guarded_send(message):
            nonlocal started, replaced
            if message["type"] == "http.response.start":
                started = True
                headers = [(name.lower(), value) for name, value in message.get("headers", [])]
                if message["status"] == 500 and not any(name == REPLICA_HEADER for name, _ in headers):
                    replaced = True
                    return await lost(scope, receive, send)
                # the replica's X-Request-ID and the proxy's are the same id: send it once
                message["headers"] = [
                    h for i, h in enumerate(headers) if h not in headers[:i] or h[0] != b"x-request-id"
                ]
            if not replaced:  # else: the proxy's own 500 body
                await send(message)

        try:
            await self.app(scope, receive, guarded_send)
        except Exception:
            if started:
                raise
            log.warning("Ray's proxy failed a request before any response: answering 503", exc_info=True)
        if not started:
            await lost(scope, receive, send)


def lost(scope, receive, send):
    response = error_response(
        503, "the replica serving this request was lost; retry", headers={"Retry-After": RETRY_AFTER_SECONDS}
    )
    return response(scope, receive, send)


def proxy_middlewares() -> list[Middleware]:
    """RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=rerankrt.server.ray_serve:proxy_middlewares (set on every Ray node,
    before Ray starts: `serve_on_ray` does it for a local cluster, deploy/kuberay/ for KubeRay)."""
    return [Middleware(ReplicaLost)]


# --- `rerankrt serve --ray` ---------------------------------------------------------------------------


def serve_on_ray(settings: ServeSettings) -> int:
    """Start (or join) a Ray cluster, run the application behind Ray's proxy on --host/--port, and block until
    SIGTERM or SIGINT; then delete the application (replicas finish their requests) and leave Ray."""
    address = settings.ray_address or os.environ.get("RAY_ADDRESS")
    if address is None:  # a local cluster inherits this process's environment: its proxy gets the middleware
        os.environ.setdefault("RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH", PROXY_CALLBACK)
    elif os.environ.get("RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH") != PROXY_CALLBACK:
        log.warning(
            "joining Ray at %s: set RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=%s on its nodes, or a lost replica's "
            "requests get Ray's 500 instead of 503 + Retry-After",
            address,
            PROXY_CALLBACK,
        )
    ray.init(address=address, include_dashboard=False, log_to_driver=True, configure_logging=False)
    try:
        serve.start(
            http_options={
                "host": settings.host,
                "port": settings.port,
                # an admitted request normally ends within --request-timeout, and a stalled one is a 503 within
                # --request-timeout of the last forward pass: the proxy's limit only catches a replica that hangs
                "request_timeout_s": 2 * settings.request_timeout,
            }
        )
        replicas = (
            f"{settings.autoscale_min_replicas}..{settings.autoscale_max_replicas} (autoscaling)"
            if settings.autoscale_min_replicas is not None
            else str(settings.replicas)
        )
        log.info("starting %s replicas of %s on Ray Serve", replicas, settings.model_path)
        serve.run(build_app(settings), name=APP_NAME, route_prefix="/", blocking=False)
        log.info("serving %s on http://%s:%d (Ray Serve)", settings.model_path, settings.host, settings.port)
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        while not stop.wait(1):
            pass
        log.info("stopping: replicas finish their requests (up to %g s)", settings.request_timeout)
        serve.delete(APP_NAME)
        serve.shutdown()
    finally:
        ray.shutdown()
    return 0
