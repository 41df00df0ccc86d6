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
        None, ge=4, description="tokens per pair, truncating the document first (default: the artifact's, or 512)"
    )
    chat_template: str | None = Field(
        None,
        description="Jinja prompt template for prompt-based rerankers (Qwen3), replacing the artifact's or the "
        "bundled one; variables: messages[0].content = query, messages[1].content = document, instruct",
    )
    max_batch_size: int = Field(32, ge=1, description="pairs per forward pass at most")
    max_batch_tokens: int = Field(
        16384, ge=1, description="padded tokens (pairs x longest pair) per forward pass at most"
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log verbosity")
