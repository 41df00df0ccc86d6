"""Where a speed figure stands against the machine's limit: the CPU's peak arithmetic rate at a precision, and the
arithmetic a reranker's forward pass does (docs/benchmarks.md, "Share of the machine's peak").

    peak = physical cores x clock x operations per cycle per core at that precision
    share = (model FLOPs per pair x pairs per second) / peak

Operations per cycle per core (a multiply-add counts 2), from the CPU's features and vendor:
  fp32  AVX-512 on Intel: 2 FMA units x 16 lanes x 2 = 64; AVX-512 on AMD Zen 4 (256-bit data paths): 32;
        AVX2+FMA: 2 x 8 x 2 = 32; without FMA: 16.
  bf16  AMX: 1024; AVX512_BF16 (vdpbf16ps, 32 products per 512-bit instruction): 128 on Intel, 64 on Zen 4;
        no bf16 instructions: the fp32 figure (bf16 is computed as fp32).
  int8  AMX: 2048; AVX512_VNNI (vpdpbusd, 64 products per 512-bit instruction): 256 on Intel, 128 on Zen 4;
        AVX2 without VNNI (vpmaddubsw + vpmaddwd + vpaddd per 32 products): 2 x 32 x 2 / 3 ~ 43 per cycle, rounded
        to 2x fp32's 32 = 64 as an upper bound; weight-only int8 (dequantized to fp32) is bounded by fp32.
The clock is the highest the kernel reports (cpuinfo_max_freq), else /proc/cpuinfo's "cpu MHz" (a VM's nominal
clock); turbo and throttling move the real one, so a share is an estimate to compare rows with, not a measurement.

Model FLOPs count the matrix products of real (unpadded) tokens: an encoder of L layers, hidden h, FFN f does per
pair of s tokens L x (2 s (4 h^2 + 2 h f) + 4 s^2 h); a decoder with q heads, kv heads, head size d: L x (2 s (h q d
+ 2 h kv d + q d h + 3 h f) + 4 s^2 q d). Embeddings, norms and the one-logit head are left out (under 1%).
A sequence whose queries see only part of it (multi-item scoring: each item sees the shared prefix and itself) does
the attention term for the (query, key) pairs it computes: `decoder_flops_parts` gives both terms.

GPUs: the dense bf16 tensor-core peak from the vendor's data sheet, by the device's name (GPU_BF16_PEAK).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

FP32_PER_CYCLE = {"intel-avx512": 64, "amd-avx512": 32, "avx2": 32, "sse": 16}
BF16_PER_CYCLE = {"amx": 1024, "intel-avx512": 128, "amd-avx512": 64}
INT8_PER_CYCLE = {"amx": 2048, "intel-avx512": 256, "amd-avx512": 128, "avx2": 64}


@dataclass(frozen=True)
class Cpu:
    model: str
    flags: frozenset[str]
    cores: int
    ghz: float


def this_cpu() -> Cpu:
    from rerankrt.runtime.machine import cpu_flags, cpu_model, physical_cores

    return Cpu(cpu_model(), frozenset(cpu_flags()), physical_cores(), clock_ghz())


def clock_ghz() -> float:
    """The highest clock the kernel reports (cpufreq's maximum), else /proc/cpuinfo's first "cpu MHz"; 0 if none."""
    try:
        return int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()) / 1e6
    except (OSError, ValueError):
        pass
    from rerankrt.runtime.machine import cpuinfo_field

    try:
        return float(cpuinfo_field("cpu MHz") or 0) / 1e3
    except ValueError:
        return 0.0


def vector_kind(cpu: Cpu) -> str:
    if "avx512f" in cpu.flags:
        return "amd-avx512" if "AMD" in cpu.model else "intel-avx512"
    if {"avx2", "fma"} <= cpu.flags:
        return "avx2"
    return "sse"


def ops_per_cycle(cpu: Cpu, precision: str) -> tuple[int, str]:
    """(operations per cycle per core at `precision`, the instructions that give it)."""
    kind = vector_kind(cpu)
    fp32 = FP32_PER_CYCLE[kind]
    if precision == "bf16":
        if "amx_bf16" in cpu.flags:
            return BF16_PER_CYCLE["amx"], "AMX bf16"
        if "avx512_bf16" in cpu.flags and kind in BF16_PER_CYCLE:
            return BF16_PER_CYCLE[kind], f"AVX512_BF16 ({kind})"
        return fp32, f"no bf16 instructions: fp32 ({kind})"
    if precision == "int8":
        if "amx_int8" in cpu.flags:
            return INT8_PER_CYCLE["amx"], "AMX int8"
        if "avx512_vnni" in cpu.flags and kind in INT8_PER_CYCLE:
            return INT8_PER_CYCLE[kind], f"AVX512_VNNI ({kind})"
        if kind == "avx2":
            return INT8_PER_CYCLE["avx2"], "AVX2 int8 without VNNI (upper bound)"
        return fp32, f"fp32 ({kind})"
    return fp32, f"fp32 FMA ({kind})"


def peak(cpu: Cpu, precision: str) -> dict:
    """The machine's peak at `precision`: operations/s, and what it is made of."""
    per_cycle, basis = ops_per_cycle(cpu, precision)
    return {
        "ops_per_s": cpu.cores * cpu.ghz * 1e9 * per_cycle,
        "cores": cpu.cores,
        "ghz": cpu.ghz,
        "ops_per_cycle_per_core": per_cycle,
        "basis": basis,
    }


def encoder_flops(config: dict, tokens: int) -> float:
    """Matrix-product FLOPs of one pair of `tokens` through a BERT-like encoder `config` (config.json's fields)."""
    layers, hidden, ffn = config["num_hidden_layers"], config["hidden_size"], config["intermediate_size"]
    return layers * (2 * tokens * (4 * hidden * hidden + 2 * hidden * ffn) + 4 * tokens * tokens * hidden)


def decoder_flops(config: dict, tokens: int) -> float:
    """Matrix-product FLOPs of one pair of `tokens` through a Qwen-like decoder `config` (grouped-query attention)."""
    per_token, per_query_key = decoder_flops_parts(config)
    return per_token * tokens + per_query_key * tokens * tokens


def decoder_flops_parts(config: dict) -> tuple[float, float]:
    """(FLOPs per token of the projections, FLOPs per (query, key) pair of attention) of a Qwen-like decoder."""
    layers, hidden, ffn = config["num_hidden_layers"], config["hidden_size"], config["intermediate_size"]
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads", heads)
    head_dim = config.get("head_dim") or hidden // heads
    projections = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim + 3 * hidden * ffn
    return layers * 2 * projections, layers * 4 * heads * head_dim


# dense bf16 tensor-core operations/s by a substring of the device name, most specific first (data sheets)
GPU_BF16_PEAK = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10", 125e12),
)


def gpu_bf16_peak(name: str) -> float | None:
    """The dense bf16 peak of the GPU called `name` (torch.cuda.get_device_name), None when not in the table."""
    return next((ops for key, ops in GPU_BF16_PEAK if key in name), None)


def share_of_peak(flops_per_pair: float, pairs_per_s: float, cpu: Cpu, precision: str) -> float | None:
    """Achieved operations/s over the peak at `precision` (None when the clock is unknown)."""
    top = peak(cpu, precision)["ops_per_s"]
    return flops_per_pair * pairs_per_s / top if top else None


def row_precision(row: str) -> str:
    """The precision a benchmark row computes in, from its name ("... int8 ...", "... bf16 ..."; else fp32)."""
    words = row.replace("(", " ").split()
    return "int8" if "int8" in words else "bf16" if "bf16" in words else "fp32"
