"""bench/ is a toolkit: scripts import bench.lib (and rerankrt), never each other; bench.lib imports no script; no
import cycle; no sys.path edits (every script runs as `python -m bench.NAME` from the repository root)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support import find_cycle

BENCH = Path(__file__).resolve().parents[1] / "bench"


def bench_files() -> list[Path]:
    """bench/'s own Python files (not the peers' environments made there: bench/.venv-infinity)."""
    return [p for p in BENCH.rglob("*.py") if not any(part.startswith(".venv") for part in p.relative_to(BENCH).parts)]


def module_name(path: Path) -> str:
    parts = path.relative_to(BENCH.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def bench_imports() -> dict[str, set[str]]:
    """Every module under bench/ -> the bench modules it imports (at the top or inside a function)."""
    modules = {module_name(path): path for path in bench_files()}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        graph[name] = {m for m in imported if m in modules and m != name}
    return graph


def is_library(module: str) -> bool:
    return module == "bench.lib" or module.startswith("bench.lib.")


def test_scripts_import_only_the_library_and_nothing_imports_a_script():
    graph = bench_imports()
    scripts = {m for m in graph if not is_library(m) and m != "bench"}
    assert "bench.cpu_speed" in scripts and "bench.lib.models" in graph  # the walk found the tree
    wrong = {m: sorted(graph[m] & scripts) for m in graph if graph[m] & scripts}
    assert not wrong, f"modules importing a benchmark script (move what they share into bench/lib): {wrong}"


def test_no_import_cycle():
    assert find_cycle(bench_imports()) is None


def test_no_sys_path_edits():
    edits = [str(p.relative_to(BENCH)) for p in bench_files() if "sys.path" in p.read_text()]
    assert not edits, f"run scripts as `python -m bench.NAME` from the repository root instead: {edits}"


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
