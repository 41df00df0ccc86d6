"""Server settings: one object, from flags (see cli.py) or RERANKRT_* environment variables."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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
