"""Server settings: one object, from flags (see cli.py) or RERANKRT_* environment variables."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class ServeSettings(BaseSettings):
    """Every field is a `rerankrt serve` flag (--model-path, ...) and an env variable (RERANKRT_MODEL_PATH, ...)."""

    model_config = SettingsConfigDict(env_prefix="RERANKRT_", protected_namespaces=())

    model_path: str = Field(
        description="artifact folder written by `rerankrt export` (served with ONNX Runtime), "
        "or a model folder / Hub id (served with torch, no export)"
    )
    host: str = Field("127.0.0.1", description="address to listen on (0.0.0.0 for all interfaces)")
    port: int = Field(30000, ge=1, le=65535, description="port to listen on")
    backend: Literal["auto", "tensorrt", "onnxruntime", "torch"] = Field(
        "auto", description="inference backend; auto tries tensorrt, onnxruntime, torch in that order"
    )
    served_model_name: str | None = Field(
        None, description="name reported by /v1/models (default: the exported model's Hub id or path)"
    )
    revision: str | None = Field(None, description="Hub revision when --model-path is a Hub id")
    max_length: int | None = Field(
        None,
        ge=4,
        description="tokens per pair, truncating the document first (default: the artifact's, or the family's)",
    )
    chat_template: str | None = Field(
        None,
        description="Jinja prompt template for prompt-based rerankers (Qwen3), replacing the artifact's or the "
        "bundled one; variables: messages[0].content = query, messages[1].content = document, instruct",
    )
    precision: Literal["fp32", "fp16", "bf16", "int8"] | None = Field(
        None, description="fp32, or the variant the artifact was exported with (default: that variant)"
    )
    threads: int | None = Field(
        None, ge=1, description="intra-op threads for ONNX Runtime and torch on CPU (default: the physical cores)"
    )
    onnxruntime_tensorrt_ep: bool = Field(
        False,
        description="on a GPU, run the ONNX Runtime backend through ONNX Runtime's TensorRT execution provider "
        "(engines cached beside the artifact) ahead of its CUDA provider",
    )
    build_engine: bool = Field(
        True,
        description="with --backend auto|tensorrt on a GPU with TensorRT: build the engine for this GPU at start "
        "when the artifact has none (fp16; written into the artifact folder)",
    )
    max_batch_size: int = Field(32, ge=1, description="pairs per forward pass at most")
    max_batch_tokens: int = Field(
        16384, ge=1, description="padded tokens (pairs x longest pair) per forward pass at most"
    )
    max_padding_ratio: float | None = Field(
        None,
        gt=0,
        le=1,
        description="share of padded positions a batch may hold (default: 0.1 on CPU, where padding costs as much "
        "as real tokens and batching saves little, 1.0 on a GPU)",
    )
    batch_wait_ms: float = Field(
        2.0, ge=0, description="how long the batcher waits for concurrent requests to join a batch"
    )
    max_queued_pairs: int = Field(
        4096, ge=1, description="pairs waiting for inference at most; beyond, requests get 503 with Retry-After"
    )
    max_documents_per_request: int = Field(1000, ge=1, description="documents per request at most (413 beyond)")
    max_request_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="request body size at most (413 beyond)")
    request_timeout: float = Field(
        300.0, gt=0, description="seconds a request may wait for its scores before it is dropped (503)"
    )
    api_key: str | None = Field(None, description="require `Authorization: Bearer <key>` on the API (401 without it)")
    public_health: bool = Field(True, description="serve /health without the API key")
    public_metrics: bool = Field(True, description="serve /metrics without the API key")
    warmup: bool = Field(True, description="run one batch before reporting healthy")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log verbosity")
    log_format: Literal["text", "json"] = Field("text", description="log lines as text or as JSON objects")
    # --- media of multimodal requests (image_url / video_url parts); see server/media.py
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

    @field_validator("allowed_local_media_path")
    @classmethod
    def _check_media_path(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).is_dir():
            raise ValueError(f"{value} is not a directory")
        return value
