"""What a Reranker is loaded with: one settings object for the server, the CLI and Python users.

`server.settings.ServeSettings` extends it with the HTTP server's settings, and every field there and here is a
`rerankrt serve` flag and a RERANKRT_* environment variable, documented by its description.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from rerankrt.precision import Precision
from rerankrt.runtime.plan import AUTO_ORDER, BACKEND_CHOICES, auto_order

_AUTO = ", ".join(f"{backend} ({device})" for backend, device in AUTO_ORDER)
_AUTO_BF16 = ", ".join(f"{backend} ({device})" for backend, device in auto_order(Precision.BF16) if device == "cpu")


def tune_default(environ: Mapping[str, str]) -> bool:
    """Plans chosen by measurement unless RERANKRT_TUNE says 0/false/no/off (as the server reads it, so a process
    sets it once for both; the test suite does, so that no test depends on which runtime is faster on its CPU)."""
    return environ.get("RERANKRT_TUNE", "1").strip().lower() not in ("0", "false", "no", "off")


class RerankerSettings(BaseModel):
    """A Reranker's options: `Reranker.load(path, **fields)` takes them as keywords."""

    model_config = {"protected_namespaces": ()}

    model_path: str = Field(
        description="artifact folder written by `rerankrt export` (served by its ONNX graphs or TensorRT engines), "
        "or a model folder / Hub id (served with torch, no export)"
    )
    backend: Literal[BACKEND_CHOICES] = Field(  # one per row of runtime.plan.BACKEND_TABLE, and auto
        "auto",
        description=f"inference backend; auto tries {_AUTO} (a bf16 artifact on CPU: {_AUTO_BF16})",
    )
    served_model_name: str | None = Field(
        None, description="name reported by /v1/models and in responses (default: the artifact folder's name)"
    )
    revision: str | None = Field(None, description="Hub revision when --model-path is a Hub id")
    max_length: int | None = Field(
        None,
        ge=4,
        description="tokens per pair, truncating the document first (default: the artifact's, or the family's)",
    )
    chat_template: Path | None = Field(
        None,
        description="Jinja prompt template for prompt-based rerankers, replacing the artifact's or the bundled one; "
        "variables: messages[0].content = query, messages[1].content = document, instruct (rendered sandboxed)",
    )
    precision: Precision | None = Field(
        None, description="fp32, or the variant the artifact was exported with (default: that variant)"
    )
    threads: int | None = Field(
        None,
        ge=1,
        description="intra-op threads for ONNX Runtime, OpenVINO and torch on CPU (default: the physical cores)",
    )
    onnxruntime_tensorrt_ep: bool = Field(
        False,
        description="on a GPU, run the ONNX Runtime backend through ONNX Runtime's TensorRT execution provider "
        "(engines cached beside the artifact) ahead of its CUDA provider",
    )
    prefix_reuse: bool = Field(
        True,
        description="decoder rerankers (Qwen3-Reranker): run the prompt that pairs share (instruction, query) once and "
        "each document after it, exact; --no-prefix-reuse runs every pair whole (for comparison)",
    )
    packed_batches: bool | None = Field(
        None,
        description="torch backend: padding-free packed batches (pairs back to back in one sequence, attention kept "
        "within each pair; decoder rerankers with prefix reuse score a query's documents as items after one shared "
        "prefix), each forward pass at most max_batch_tokens real tokens; exact (default: on for CUDA, off on CPU, "
        "where it is not measured faster)",
    )
    cuda_graphs: bool = Field(
        True,
        description="torch on CUDA with packed batches: CUDA graphs (torch.compile reduce-overhead) for bucketed token "
        "counts, warmed at start within a time bound; a longer stream runs eagerly; --no-cuda-graphs runs all eagerly",
    )
    self_check: bool = Field(
        True,
        description="before serving, score the artifact's golden set with the chosen plan on this machine and refuse "
        "a plan that misses what the export accepted (auto tries the next; a plan asked for by name is an error); "
        "--no-self-check skips it and with it the proof that this CPU computes the export's numbers (seconds at start)",
    )
    tune: bool = Field(
        default_factory=lambda: tune_default(os.environ),
        description="auto: at the first start of an artifact on a machine, time every plan that passes the self-check "
        "(on the golden set) and serve the fastest; the timings are kept per artifact, CPU, thread count and runtime "
        "versions in $RERANKRT_CACHE_DIR (default ~/.cache/rerankrt), so later starts check the recorded choice only; "
        "--no-tune serves the first plan of the fixed order that passes (--backend and --precision always do); "
        "RERANKRT_TUNE=0 turns it off for Reranker.load too",
    )
    max_batch_size: int = Field(
        32, ge=1, description="pairs per forward pass at most (packed batches: max_batch_tokens alone bounds them)"
    )
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
    scheduling: Literal["oldest-first", "interleaved"] = Field(
        "oldest-first",
        description="how batches are drawn from the queue: oldest-first finishes requests in arrival order (a batch "
        "holds the oldest request's pairs, topped up with newer requests' only to fill it); interleaved takes pairs "
        "of similar length from all queued requests, so under load they all finish together",
    )
    top_up_tokens: int | None = Field(
        None,
        ge=1,
        description="oldest-first: newer requests' pairs join the oldest request's batch only up to this many padded "
        "tokens (default: 1024 on CPU, where a full batch is no faster per token and topping up only delays the "
        "oldest request; max_batch_tokens on a GPU)",
    )
    batch_wait_ms: float = Field(
        2.0, ge=0, description="how long the batcher waits for concurrent requests to join a batch"
    )
    max_queued_pairs: int = Field(
        4096,
        ge=1,
        description="pairs waiting for inference at most; beyond, requests get 503 with Retry-After (a request "
        "that alone holds more pairs, chunks included, gets 413: it could never fit)",
    )
    document_cache_bytes: int = Field(
        256 * 1024 * 1024,
        ge=0,
        description="bytes of documents' token embeddings kept across requests, least recently used out first, for "
        "late-interaction models (ColBERT: a corpus reranked again is encoded once); 0 turns the cache off",
    )
    max_documents_per_request: int = Field(1000, ge=1, description="documents per request at most (413 beyond)")
    max_text_chars: int | None = Field(
        None,
        ge=1,
        description="characters per query, document, text part or instruct, checked before tokenizing: longer text "
        "is cut to it (truncate=true, chunking included) or refused with 413 (truncate=false); bounds tokenizer "
        "memory (default: 32 x max_length, more than max_length tokens of any real text)",
    )


EngineSettings = RerankerSettings  # the old name, kept working for Python users
