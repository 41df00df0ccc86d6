"""What this machine offers for inference: CPU cores and features, CUDA, TensorRT, ONNX Runtime providers, OpenVINO.

`Machine.detect()` looks once; serving plans take a `Machine` so that planning can be tested for any machine.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})  # CPU instructions that compute bf16 natively
# the features that decide which kernels ONNX Runtime, OpenVINO and torch pick (fp32 width, int8 dot products, bf16)
CPU_FEATURES = (
    "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile",
)  # fmt: skip


def cpuinfo_field(name: str) -> str | None:
    """The first value of `name` in /proc/cpuinfo ("flags", "model name", "cpu MHz"), None where there is none."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == name:
                return value.strip()
    except OSError:
        pass
    return None


def cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux reports them (empty elsewhere)."""
    return set((cpuinfo_field("flags") or "").split())


def cpu_model() -> str:
    """The CPU's model name as Linux reports it ("" elsewhere)."""
    return cpuinfo_field("model name") or ""


def physical_cores(cpuinfo: str | None = None) -> int:
    """Distinct (physical id, core id) pairs in /proc/cpuinfo; the logical count where that is unavailable."""
    cores: set[tuple[str, str]] = set()
    package = core = ""
    try:
        text = Path("/proc/cpuinfo").read_text() if cpuinfo is None else cpuinfo
        for line in text.splitlines():
            key, _, value = line.partition(":")
            key, value = key.strip(), value.strip()
            if key == "physical id":
                package = value
            elif key == "core id":
                core = value
            elif not key and (package or core):
                cores.add((package, core))
                package = core = ""
        if package or core:
            cores.add((package, core))
    except OSError:
        pass
    return len(cores) or os.cpu_count() or 1


@dataclass(frozen=True)
class Machine:
    """The inference hardware and libraries a serving plan is made for."""

    physical_cores: int = 1
    cuda: bool = False
    compute_capability: str | None = None  # "9.0" when cuda
    tensorrt: str | None = None  # full TensorRT version when it imports
    onnxruntime_providers: tuple[str, ...] = field(default=("CPUExecutionProvider",))
    openvino: str | None = None  # OpenVINO's version when it is installed
    cpu_bf16: bool = False  # the CPU computes bf16 natively (BF16_FLAGS)
    cpu_features: tuple[str, ...] = ()  # those of CPU_FEATURES the CPU has (logged beside a self-check's figures)
    packages: tuple[tuple[str, str], ...] = ()  # (distribution, version) installed, of those backend rows need
    cpu_model: str = ""  # the CPU's model name (plan timings are kept per CPU model, runtime.tuning)

    def package(self, name: str) -> str | None:
        """The installed version of a distribution a backend row needs (`BackendRow.package`), or None."""
        return dict(self.packages).get(name)

    @classmethod
    def detect(cls, packages: Iterable[str] = ()) -> Machine:
        """This machine; `packages`: the distributions whose versions to record (the backend rows', see
        `runtime.plan.this_machine`)."""
        import torch

        cuda = torch.cuda.is_available()
        capability = ".".join(map(str, torch.cuda.get_device_capability())) if cuda else None
        try:
            import onnxruntime

            providers = tuple(onnxruntime.get_available_providers())
        except ImportError:
            providers = ()
        flags = cpu_flags()
        found = tuple((name, version) for name in sorted(set(packages)) if (version := package_version(name)))
        return cls(
            physical_cores(),
            cuda,
            capability,
            _tensorrt_version() if cuda else None,
            providers,
            openvino_version(),
            bool(BF16_FLAGS & flags),
            tuple(f for f in CPU_FEATURES if f in flags),
            found,
            cpu_model(),
        )

    def describe_cpu(self) -> str:
        """`2 cores, avx2 fma avx512f ...`: what a self-check's figures were measured on."""
        return f"{self.physical_cores} cores, {' '.join(self.cpu_features) or 'no AVX2'}"


def openvino_version() -> str | None:
    """OpenVINO's version when it is installed, found without importing it (the import loads its plugins)."""
    return package_version("openvino")


def package_version(name: str, module: str | None = None) -> str | None:
    """The version of distribution `name` when its module (default: the same name) can be imported, found without
    importing it."""
    if importlib.util.find_spec(module or name.replace("-", "_")) is None:
        return None
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _tensorrt_version() -> str | None:
    try:
        import tensorrt
    except ImportError:
        return None
    return tensorrt.__version__
