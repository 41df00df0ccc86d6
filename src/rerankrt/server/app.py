"""The FastAPI application, assembled: the Reranker, its state, the lifespan, error handlers, middleware, routers.

Each API shape is one adapter module (`sglang`, `sglang_score`, `cohere` for the {results} shape of Cohere, Jina
and vLLM, `vllm`, `tei`, `infinity`, `tokens`, `sagemaker`) with its own schemas and field names, listed in
`registry.SHAPES`; the registry's routes (`registry.ROUTERS`) include the paths several shapes share (/v1/rerank,
/rerank, /v1/score, /score, /invocations), routed by the body and `--rerank-convention`. All of them go through
`scoring.Scoring` to the one Reranker. `operations` serves /health, /v1/models and /metrics. Requests are encoded
off the event loop, batched across requests by the Reranker's scheduler, and run on its inference thread; a
multimodal request first fetches its media (server.content, server.media), within the same timeout and
disconnect watch as its scoring.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI

from rerankrt import __version__
from rerankrt.runtime import Reranker
from rerankrt.runtime.loader import LoadedModel, load_model
from rerankrt.server.errors import install_error_handlers
from rerankrt.server.media import MediaFetcher, MediaLimits
from rerankrt.server.metrics import Metrics
from rerankrt.server.middleware import install_middleware
from rerankrt.server.paths import CollapseSlashes
from rerankrt.server.registry import ROUTERS, add_request_schemas
from rerankrt.server.scoring import Scoring
from rerankrt.server.settings import ServeSettings

log = logging.getLogger(__name__)


def create_app(settings: ServeSettings, model: LoadedModel | None = None) -> FastAPI:
    """An app serving `settings.model_path`, or `model` when one is given (already loaded), with the settings'
    batching and limits."""
    metrics = Metrics()
    reranker = Reranker(model or load_model(settings), settings, on_batch=metrics.observe_batch)
    # read at each scrape, so an idle server reports 0 (an autoscaler on this gauge scales down)
    metrics.queue_pairs.set_function(lambda: reranker.scheduler.queued_pairs)
    metrics.queue_seconds.set_function(lambda: reranker.scheduler.pending_seconds)
    metrics.seconds_per_token.set_function(lambda: reranker.scheduler.seconds_per_token or 0.0)
    metrics.watch_document_cache(lambda: reranker.document_cache)
    check = reranker.model.self_check
    metrics.self_check_max_dlogit.set(check.max_logit_diff if check is not None else float("nan"))
    scoring = Scoring(reranker, settings.request_timeout, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.media = scoring.media = MediaFetcher(media_limits(settings), on_fetched=metrics.observe_media)
        if settings.warmup:
            log.info("warming up %s on %s", reranker.name, reranker.backend.name)
            await reranker.awarm_up()
        app.state.ready = True
        log.info("ready: %s on %s (%s)", reranker.name, reranker.backend.name, reranker.backend.device)
        yield
        app.state.ready = False
        await app.state.media.aclose()
        await asyncio.to_thread(reranker.close)  # in-flight requests are finished by now; drain the rest

    app = FastAPI(title="rerankrt", version=__version__, lifespan=lifespan)
    app.state.ready = False
    app.state.media = None  # the MediaFetcher, while the lifespan runs
    app.state.metrics = metrics
    app.state.scheduler = reranker.scheduler
    app.state.reranker = reranker
    app.state.scoring = scoring
    app.state.rerank_convention = settings.rerank_convention
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    install_middleware(app, settings, metrics, reranker.scheduler, route_paths(app))
    app.add_middleware(CollapseSlashes)  # outermost: the API key and metrics see the collapsed path
    add_request_schemas(app)
    return app


def route_paths(app: FastAPI) -> set[str]:
    """The paths `app` serves: its own routes (OpenAPI, docs) and the routers' (an app keeps an included router as
    one route of its own, without a path)."""
    own = {route.path for route in app.routes if hasattr(route, "path")}
    return own | {route.path for router in ROUTERS for route in router.routes}


def media_limits(settings: ServeSettings) -> MediaLimits:
    return MediaLimits(
        allowed_local_media_path=settings.allowed_local_media_path,
        allowed_networks=tuple(settings.media_allowed_networks),
        max_bytes=settings.media_max_bytes,
        max_image_pixels=settings.media_max_image_pixels,
        max_video_frames=settings.media_max_video_frames,
        video_fps=settings.media_video_fps,
        fetch_timeout=settings.media_fetch_timeout,
        max_redirects=settings.media_max_redirects,
        max_frame_pixels=settings.media_max_frame_pixels,
        max_parts=settings.media_max_parts_per_request,
        max_request_pixels=settings.media_max_request_pixels,
        max_process_pixels=settings.media_max_process_pixels,
        max_concurrent_fetches=settings.media_max_concurrent_fetches,
    )
