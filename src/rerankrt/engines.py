"""TensorRT engine planning shared by the builder (export) and the backend (runtime): profiles, names, choice.

Nothing here imports TensorRT: it is the logic that can be tested on any machine.
"""

from __future__ import annotations

from collections.abc import Sequence

from rerankrt.artifact import Engine, Profile
from rerankrt.errors import RerankrtError
from rerankrt.precision import ENGINE_PRECISIONS, Precision


def plan_profile(
    max_batch: int, max_length: int, opt_batch: int | None = None, opt_length: int | None = None
) -> Profile:
    """min [1, 1], opt (default: batch min(max, 16), length min(max, 256) — typical reranking), max as given."""
    opt = (
        min(max_batch, 16) if opt_batch is None else opt_batch,
        min(max_length, 256) if opt_length is None else opt_length,
    )
    for name, value, limit in (("batch", opt[0], max_batch), ("length", opt[1], max_length)):
        if not 1 <= value <= limit:
            raise RerankrtError(f"opt {name} {value} must be between 1 and the max {name} {limit}")
    return Profile(min=(1, 1), opt=opt, max=(max_batch, max_length))


def sm_name(compute_capability: str) -> str:
    """'9.0' -> 'sm90'."""
    major, minor = compute_capability.split(".")
    return f"sm{major}{minor}"


def trt_name(tensorrt_version: str) -> str:
    """'11.4.0.106' -> 'trt11.4' (engines are portable within a minor version only)."""
    major, minor = tensorrt_version.split(".")[:2]
    return f"trt{major}.{minor}"


def engine_file_name(graph_file: str, compute_capability: str, tensorrt_version: str) -> str:
    """model.fp16.onnx on an H100 with TensorRT 11.4 -> model.fp16.sm90.trt11.4.plan"""
    stem = graph_file.removesuffix(".onnx")
    return f"{stem}.{sm_name(compute_capability)}.{trt_name(tensorrt_version)}.plan"


def select_engine(
    engines: Sequence[Engine], compute_capability: str, tensorrt_version: str, precision: Precision | None = None
) -> Engine | None:
    """The engine built for this GPU and TensorRT minor version (of `precision`, else the fastest), or None."""
    usable = [
        e
        for e in engines
        if e.compute_capability == compute_capability and trt_name(e.tensorrt) == trt_name(tensorrt_version)
    ]
    if precision is not None:
        usable = [e for e in usable if e.precision == precision]
    usable.sort(key=lambda e: ENGINE_PRECISIONS.index(e.precision))  # fastest first
    return usable[0] if usable else None


def split_rows(rows: int, max_rows: int) -> list[slice]:
    """Row ranges of at most `max_rows` covering `rows`: a batch larger than the profile is split, never refused."""
    return [slice(start, min(start + max_rows, rows)) for start in range(0, rows, max_rows)]
