"""Server settings: one object, from flags (see cli.py) or RERANKRT_* environment variables."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from rerankrt.runtime.settings import RerankerSettings
from rerankrt.server.registry import CONVENTIONS, convention_help


class ServeSettings(BaseSettings, RerankerSettings):
    """Every field is a `rerankrt serve` flag (--model-path, ...) and an env variable (RERANKRT_MODEL_PATH, ...).

    The Reranker's fields (model, backend, precision, batching, limits) come from `runtime.settings.RerankerSettings`.
    """

    model_config = SettingsConfigDict(env_prefix="RERANKRT_", protected_namespaces=())

    host: str = Field("127.0.0.1", description="address to listen on (0.0.0.0 for all interfaces)")
    port: int = Field(30000, ge=1, le=65535, description="port to listen on")
    build_engine: bool = Field(
        True,
        description="with --backend auto|tensorrt on a GPU with TensorRT: build the TensorRT engine for this GPU at "
        "start when the artifact has none (fp16; written into the artifact folder)",
    )
    max_request_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="request body size at most (413 beyond)")
    request_timeout: float = Field(
        600.0,
        gt=0,
        description="seconds a request may wait for its scores: media fetching and encoding stop at it (503), a "
        "request that the work queued ahead of it and its own, at the measured throughput, would not finish within "
        "it is refused at arrival (503 + Retry-After), and an admitted one runs to completion unless no forward pass "
        "ends for this long (a stuck backend: 503); also the drain time on SIGTERM. The default lets the slowest CPU "
        "measured (2-core AVX2-only, bge-reranker-base size, fp32: ~1.3 pairs/s) take a burst of 16 requests x 32 "
        "documents (~400 s) whole",
    )
    max_connections: int = Field(
        512,
        ge=1,
        description="open HTTP connections at most; past it the connection that has waited longest for its client "
        "(idle, or still sending a request) is closed, or the new one refused when all are being answered "
        "(lowered to fit the open-file limit, which the server raises towards it)",
    )
    header_timeout: float = Field(
        10.0, gt=0, description="seconds a request's headers may take to arrive (408 and closed beyond: slowloris)"
    )
    body_timeout: float = Field(
        60.0, gt=0, description="seconds a request's body may take to arrive after its headers (closed beyond)"
    )
    keep_alive_timeout: int = Field(5, ge=1, description="seconds an idle keep-alive connection stays open")
    api_key: str | None = Field(None, description="require `Authorization: Bearer <key>` on the API (401 without it)")
    public_health: bool = Field(True, description="serve /health without the API key")
    public_metrics: bool = Field(True, description="serve /metrics without the API key")
    rerank_convention: Literal[CONVENTIONS] = Field(CONVENTIONS[0], description=convention_help())
    warmup: bool = Field(True, description="run one batch before reporting healthy")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log verbosity")
    log_format: Literal["text", "json"] = Field("text", description="log lines as text or as JSON objects")
    # --- Ray Serve (`--ray`; the `ray` extra): replicas of this server behind Ray Serve's HTTP proxy, see
    # server/ray_serve.py and docs/deploy.md. --host/--port are then the proxy's.
    ray: bool = Field(
        False,
        description="serve on Ray Serve: --replicas copies of this server (one Reranker and one scheduler each) behind "
        "Ray's HTTP proxy on --host/--port, same routes (needs the `ray` extra)",
    )
    ray_address: str | None = Field(
        None, description="with --ray: the Ray cluster to join (default: RAY_ADDRESS, else start a local one)"
    )
    replicas: int = Field(1, ge=1, description="with --ray: replicas when not autoscaling")
    autoscale_min_replicas: int | None = Field(
        None, ge=0, description="with --ray: autoscale between this and --autoscale-max-replicas (both needed)"
    )
    autoscale_max_replicas: int | None = Field(None, ge=1, description="with --ray: most replicas when autoscaling")
    autoscale_target_ongoing_requests: float = Field(
        4.0, gt=0, description="with --ray: requests in flight per replica the autoscaler aims for"
    )
    max_ongoing_requests: int = Field(
        16,
        ge=1,
        description="with --ray: requests Ray sends one replica at once; with --max-documents-per-request it bounds "
        "the pairs in the replica's queue (docs/deploy.md)",
    )
    max_queued_requests: int = Field(
        64,
        ge=1,
        description="with --ray: requests each Ray proxy holds while every replica is at --max-ongoing-requests; "
        "beyond, 503 with Retry-After",
    )
    replica_cpus: float = Field(1.0, ge=0, description="with --ray: CPUs Ray reserves per replica")
    replica_gpus: float = Field(0.0, ge=0, description="with --ray: GPUs Ray reserves per replica (1 on a GPU node)")

    # --- media of multimodal requests (image_url / video_url parts); see server/media/
    allowed_local_media_path: str | None = Field(
        None,
        description="directory whose files requests may name as media (an absolute path or file:// URL); "
        "unset, local files are refused",
    )
    media_allowed_networks: Annotated[list[str], NoDecode] = Field(
        [],
        description="comma-separated networks (CIDR) media may be fetched from besides public addresses, e.g. "
        "10.0.0.0/8; private, loopback and link-local addresses are refused otherwise",
    )
    media_max_bytes: int = Field(32 * 1024 * 1024, ge=1, description="bytes per image or video, as fetched (413)")
    media_max_image_pixels: int = Field(
        50_000_000, ge=1, description="width x height per image or video frame, before any resize (413)"
    )
    media_max_video_frames: int = Field(64, ge=1, description="frames sampled per video at most")
    media_video_fps: float = Field(1.0, gt=0, description="frames sampled per second of video")
    media_fetch_timeout: float = Field(10.0, gt=0, description="seconds per http(s) media item, connect to last byte")
    media_max_redirects: int = Field(3, ge=0, description="redirects followed per media URL")
    media_max_parts_per_request: int = Field(
        64, ge=1, description="image and video parts per request, query and documents together (413 beyond)"
    )
    media_max_frame_pixels: int = Field(
        1024 * 1024,
        ge=1024,
        description="video frames larger than this (width x height) are scaled down while decoding, aspect kept",
    )
    media_max_request_pixels: int = Field(
        128_000_000,
        ge=1,
        description="decoded pixels per request (images, and video frames after scaling; 3 bytes each), reserved "
        "from each item's header before decoding (413 beyond)",
    )
    media_max_process_pixels: int = Field(
        512_000_000,
        ge=1,
        description="decoded pixels held by all requests together; a request that does not fit now gets 503 with "
        "Retry-After",
    )
    media_max_concurrent_fetches: int = Field(
        8, ge=1, description="media items one request fetches and decodes at once (the rest wait their turn)"
    )

    @model_validator(mode="after")
    def _check_pixel_budgets(self):
        if self.media_max_request_pixels > self.media_max_process_pixels:
            raise ValueError("media_max_request_pixels is over media_max_process_pixels: no such request could run")
        return self

    @field_validator("media_allowed_networks", mode="before")
    @classmethod
    def _split_networks(cls, value):
        """A flag or env value is a string: comma-separated, or a JSON list."""
        if isinstance(value, str):
            value = json.loads(value) if value.lstrip().startswith("[") else value.split(",")
            value = [n.strip() for n in value if n.strip()]
        return value

    @field_validator("media_allowed_networks")
    @classmethod
    def _check_networks(cls, value: list[str]) -> list[str]:
        for network in value:
            try:
                ipaddress.ip_network(network)
            except ValueError as exc:
                raise ValueError(f"{network!r} is not a network in CIDR notation, e.g. 10.0.0.0/8 ({exc})") from None
        return value

    @model_validator(mode="after")
    def _check_autoscaling(self):
        bounds = (self.autoscale_min_replicas, self.autoscale_max_replicas)
        if (bounds[0] is None) != (bounds[1] is None):
            raise ValueError("--autoscale-min-replicas and --autoscale-max-replicas go together")
        if bounds[0] is not None and bounds[0] > bounds[1]:
            raise ValueError(f"--autoscale-min-replicas {bounds[0]} is above --autoscale-max-replicas {bounds[1]}")
        return self

    @field_validator("allowed_local_media_path")
    @classmethod
    def _check_media_path(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).is_dir():
            raise ValueError(f"{value} is not a directory")
        return value
