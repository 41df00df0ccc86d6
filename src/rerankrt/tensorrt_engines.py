"""TensorRT engine planning shared by the builder (export) and the backend (runtime): profiles, names, choice,
what a GPU can build.

Nothing here imports TensorRT: it is the logic that can be tested on any machine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rerankrt.artifact import Engine, Profile
from rerankrt.errors import RerankrtError
from rerankrt.precision import ENGINE_PRECISIONS, Precision

GIB = 1 << 30
DEFAULT_MAX_BATCH = 64
BF16_MIN_MAJOR = 8  # bf16 tensor cores: Ampere (8.0) and later
# Profile planning (`plan_engine_profile`): the share of the GPU's memory one execution's activations and the
# weights may take; the rest is left to the builder's tactic workspace, the CUDA context, the server's input and
# output tensors and anything else on the GPU.
MEMORY_SHARE = 0.5
ATTENTION_BYTES = 12  # per attention score: half scores (2) cast to fp32 (4), fp32 softmax (4), cast back (2)
TOKEN_HIDDEN_TENSORS = 8  # residual, norm output and its fp32 temporaries, q, k, v, attention output, projection


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
    """'11.4.0.106' -> 'trt11.4.0.106': an engine loads only in the TensorRT version that built it, patch included
    (unless built version-compatible, which rerankrt does not do: see docs/operations.md)."""
    return f"trt{tensorrt_version}"


def engine_file_name(graph_file: str, compute_capability: str, tensorrt_version: str) -> str:
    """model.fp16.onnx on an H100 with TensorRT 11.4.0.106 -> model.fp16.sm90.trt11.4.0.106.plan"""
    stem = graph_file.removesuffix(".onnx")
    return f"{stem}.{sm_name(compute_capability)}.{trt_name(tensorrt_version)}.plan"


def timing_cache_name(compute_capability: str, tensorrt_version: str) -> str:
    """One timing cache per GPU and TensorRT version (TensorRT reuses one only with the version that wrote it):
    tensorrt.sm90.trt11.4.0.106.timing-cache"""
    return f"tensorrt.{sm_name(compute_capability)}.{trt_name(tensorrt_version)}.timing-cache"


def select_engine(
    engines: Sequence[Engine], compute_capability: str, tensorrt_version: str, precision: Precision | None = None
) -> Engine | None:
    """The engine built for this GPU and exactly this TensorRT version (of `precision`, else the fastest), or None."""
    usable = [e for e in engines if e.compute_capability == compute_capability and e.tensorrt == tensorrt_version]
    if precision is not None:
        usable = [e for e in usable if e.precision == precision]
    usable.sort(key=lambda e: ENGINE_PRECISIONS.index(e.precision))  # fastest first
    return usable[0] if usable else None


def precision_problem(precision: Precision | str, compute_capability: str) -> str | None:
    """Why this GPU cannot run an engine of `precision` (bf16 needs compute capability 8.0, Ampere), else None."""
    major = int(compute_capability.split(".")[0])
    if Precision(precision) == Precision.BF16 and major < BF16_MIN_MAJOR:
        return (
            f"bf16 engines need a GPU of compute capability {BF16_MIN_MAJOR}.0 or newer (Ampere); this one is "
            f"{compute_capability}: build an fp16 engine (--precision fp16)"
        )
    return None


@dataclass(frozen=True)
class ModelShape:
    """What the activation memory of a transformer scorer depends on (from config.json)."""

    hidden: int
    heads: int
    intermediate: int

    @classmethod
    def from_config(cls, sizes: Mapping) -> ModelShape:
        """From the config that holds the sizes (a nested one for multimodal checkpoints:
        `ExportHints.language_sizes`)."""
        hidden = int(sizes["hidden_size"])
        return cls(hidden, int(sizes["num_attention_heads"]), int(sizes.get("intermediate_size") or 4 * hidden))


def sequence_bytes(model: ModelShape, length: int, precision: Precision | str) -> int:
    """Peak activation memory of one sequence through one layer (TensorRT reuses it layer after layer), assuming
    attention is not fused: the [heads, length, length] scores, their fp32 softmax and its input and output casts
    (ATTENTION_BYTES per score), plus the per-token tensors (TOKEN_HIDDEN_TENSORS of hidden width, three of the
    MLP's) in the graph's precision. An upper bound when TensorRT fuses attention (then the scores never exist)."""
    element = 4 if Precision(precision) == Precision.FP32 else 2
    per_token = (TOKEN_HIDDEN_TENSORS * model.hidden + 3 * model.intermediate) * element
    return length * per_token + model.heads * length * length * ATTENTION_BYTES


def plan_engine_profile(
    model: ModelShape,
    gpu_memory: int,
    weight_bytes: int,
    max_length: int,
    precision: Precision | str,
    max_batch: int | None = None,
    opt_batch: int | None = None,
    opt_length: int | None = None,
) -> tuple[Profile, str]:
    """The profile to build and why. The max batch, unless given, is the most sequences of `max_length` whose
    activations (`sequence_bytes`) fit in MEMORY_SHARE of the GPU's memory beside the weights, at most
    DEFAULT_MAX_BATCH; the length always reaches `max_length` (what the encoder makes). Larger batches are split
    at run time (`split_rows`), so a small max batch costs speed on short pairs, never a refusal."""
    per_sequence = sequence_bytes(model, max_length, precision)
    budget = int(gpu_memory * MEMORY_SHARE) - weight_bytes
    fits = budget // per_sequence if budget > 0 else 0
    estimate = (
        f"~{per_sequence / GIB:.2f} GiB of activations per {max_length}-token sequence ({model.heads} heads, "
        f"attention assumed unfused), {max(budget, 0) / GIB:.1f} GiB budget ({MEMORY_SHARE:.0%} of "
        f"{gpu_memory / GIB:.0f} GiB less {weight_bytes / GIB:.2f} GiB of weights)"
    )
    if max_batch is not None:
        why = f"max batch {max_batch} as asked; {estimate}: {fits} would fit"
    elif fits < 1:
        raise RerankrtError(
            f"one sequence of {max_length} tokens does not fit this GPU: {estimate}; export the model with a "
            "smaller --max-length, or pass --max-batch 1 to try anyway (TensorRT may fuse attention)"
        )
    else:
        max_batch = min(DEFAULT_MAX_BATCH, fits)
        why = f"max batch {max_batch}: {estimate} fit {fits}" + (
            f", capped at {DEFAULT_MAX_BATCH}" if fits > DEFAULT_MAX_BATCH else ""
        )
    return plan_profile(max_batch, max_length, opt_batch, opt_length), why


def split_rows(rows: int, max_rows: int) -> list[slice]:
    """Row ranges of at most `max_rows` covering `rows`: a batch larger than the profile is split, never refused."""
    return [slice(start, min(start + max_rows, rows)) for start in range(0, rows, max_rows)]
