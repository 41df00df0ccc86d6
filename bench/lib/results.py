"""What a benchmark writes: log lines, bench/results/<name>.json with the machine it ran on, markdown tables."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results"


def log(message: str) -> None:
    """One line on stdout, with the time of day, flushed (long runs are followed with `tail -f`)."""
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("unknown" where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def machine() -> dict:
    """What every result records beside its figures: CPU (model and the features rerankrt's plans depend on),
    cores, torch's threads, Python and torch versions."""
    import torch

    description = {
        "cpu": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    try:
        from rerankrt.runtime.machine import Machine
    except ImportError:  # rerankrt.runtime's dependencies are missing (a bare GPU image): no features
        return description
    return description | {"cpu_features": Machine.detect().describe_cpu()}


def write_result(name: str, data: dict, folder: Path = RESULTS) -> Path:
    """`data` as `folder`/`name`.json (indented, UTF-8); the path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    return path


def folder_mb(path: Path) -> float:
    """The size of every file below `path`, in MB (10^6 bytes)."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 1e6


def markdown_row(cells) -> str:
    return "| " + " | ".join(map(str, cells)) + " |"


def markdown_table(header: list[str], rows: list) -> str:
    """A markdown table: the header, its rule, a line per row (cells formatted by the caller)."""
    return "\n".join([markdown_row(header), "|" + "---|" * len(header), *(markdown_row(row) for row in rows)])
