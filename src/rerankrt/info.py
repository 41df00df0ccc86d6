"""`rerankrt info`: what this machine offers for inference, and what an artifact holds."""

from __future__ import annotations

import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

from rerankrt.runtime.machine import CPU_FEATURES, Machine, cpu_flags, physical_cores
from rerankrt.runtime.plan import availability, this_machine

PACKAGES = (
    "rerankrt",
    "torch",
    "transformers",
    "tokenizers",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "openvino",
    "tensorrt",
)


def collect(artifact: Path | None = None) -> dict:
    import onnxruntime
    import torch

    flags = cpu_flags()
    info: dict = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": {
            "logical_cores": os.cpu_count(),
            "physical_cores": physical_cores(),
            "features": {name: name in flags for name in CPU_FEATURES},
            "torch_threads": torch.get_num_threads(),
        },
        "packages": {},
        "onnxruntime_providers": onnxruntime.get_available_providers(),
        "cuda": torch.cuda.is_available(),
    }
    for package in PACKAGES:
        try:
            info["packages"][package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            info["packages"][package] = None
    if info["cuda"]:
        info["gpu"] = {
            "name": torch.cuda.get_device_name(),
            "capability": ".".join(map(str, torch.cuda.get_device_capability())),
        }
    machine = this_machine()
    info["backends"] = availability(machine)  # per backend and device: "available", or why not
    info["serving_defaults"] = serving_defaults()
    if artifact is not None:
        from rerankrt.artifact import FIDELITY_NAME, GOLDEN_NAME, load_manifest
        from rerankrt.families import canonical_family_name

        manifest = load_manifest(artifact, verify_hashes=False)
        info["artifact"] = {
            "path": str(artifact),
            "family": canonical_family_name(manifest.family),  # an old name as the current one
            "family_reason": manifest.family_reason,
            "family_options": manifest.family_options,  # --family-option at export, resolved
            "source": manifest.source.ref,
            "precision": manifest.precision.value,
            "max_length": manifest.max_length,
            "graphs": {role: graph.file for role, graph in manifest.graphs.items()},
            "engines": [engine.file for engine in manifest.engines],
            "golden_set": GOLDEN_NAME in manifest.files,  # what a plan must reproduce where it serves (self-check)
        }
        info["artifact"]["plan_timings"] = plan_timings(artifact, machine)
        if (artifact / FIDELITY_NAME).is_file():
            report = json.loads((artifact / FIDELITY_NAME).read_text())
            keys = ("passed", "accepted", "max_score_diff", "top1_agreement", "top3_agreement", "swap_rate")
            info["artifact"]["fidelity"] = {key: report.get(key) for key in keys}
            if reuse := report.get("prefix_reuse"):  # the decoder graph's variant (prefix reuse), or why none
                keys = ("role", "passed", "method", "max_score_diff", "dropped", "not_checked")
                info["artifact"]["fidelity"]["prefix_reuse"] = {
                    k: reuse[k] for k in keys if reuse.get(k) not in ("", None)
                }
            info["artifact"]["fidelity"]["method"] = report.get("method")
            if search := report.get("search"):  # the int8 search: what it kept fp32 and why
                info["artifact"]["fidelity"]["search"] = {
                    key: search.get(key) for key in ("recipe", "products", "kept_fp32", "stopped", "seconds")
                }
    return info


def plan_timings(artifact: Path, machine: Machine | None = None, threads: int | None = None) -> dict:
    """What `auto` measured for this artifact on `machine` (default: this one) (runtime.tuning), at `threads`
    (default: as serve)."""
    from rerankrt.artifact import MANIFEST_NAME
    from rerankrt.runtime.tuning import TimingCache, TimingKey

    machine = machine or this_machine()
    cache = TimingCache(TimingKey.of(artifact / MANIFEST_NAME, machine, threads or machine.physical_cores))
    recorded = cache.read()
    if recorded is None:
        return {"file": str(cache.path), "measured": False, "note": "measured at the first start with auto"}
    return {"file": str(cache.path), "measured": True, **recorded.to_dict()}


def serving_defaults() -> dict:
    """The CPU knobs `rerankrt serve` uses unless told otherwise (--threads), and what torch can do with bf16."""
    import torch

    from rerankrt.precision import Precision
    from rerankrt.runtime.machine import BF16_FLAGS
    from rerankrt.runtime.onnxruntime_backend import SESSION_SETTINGS
    from rerankrt.runtime.openvino_backend import compile_config

    threads = physical_cores()
    bf16 = Precision.BF16 if BF16_FLAGS & cpu_flags() else Precision.FP32
    return {
        "threads": threads,
        "onnxruntime_session": {**SESSION_SETTINGS, "intra_op_num_threads": threads},
        "openvino_compile": {"fp32": compile_config(threads, Precision.FP32), "bf16": compile_config(threads, bf16)},
        "torch": {
            "num_threads": threads,
            "mkldnn": torch.backends.mkldnn.is_available(),
            "mkldnn_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        },
    }
