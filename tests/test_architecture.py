"""docs/architecture.md's rules, checked on the code with `ast`: which package may import which, that only
`families/` names a family or a model type, where the heavy optional libraries are imported, that the map names
every module, and that no test module imports another."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

from tests.support import find_cycle

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "rerankrt"
TESTS = ROOT / "tests"

# What each part of the package may import from the rest of it: a top-level module or subpackage of rerankrt ->
# the ones it may import ("rerankrt": names from the root package, which re-exports the runtime's). cli, the
# command line, may import anything.
ALLOWED: dict[str, set[str]] = {
    "precision": set(),
    "errors": set(),
    "logs": set(),
    "templates": set(),  # the prompt templates the families bundle (package data)
    "model_source": {"errors"},
    "artifact": {"errors", "precision"},
    "tensorrt_engines": {"artifact", "errors", "precision"},
    "families": {"errors", "model_source", "precision"},
    "testing": {"families"},
    "runtime": {"families", "artifact", "tensorrt_engines", "precision", "errors", "model_source"},
    "export": {"families", "runtime", "artifact", "tensorrt_engines", "precision", "errors", "model_source"},
    "server": {"runtime", "families", "artifact", "errors", "logs", "precision"},
    "info": {"runtime", "families", "artifact", "precision"},
    "__init__": {"runtime"},
}
# the one edge that goes up, and the one module that takes it: a Ray replica builds its GPU's TensorRT engine
# before it serves, as `cli` does for `rerankrt serve`
UPWARD = {("server", "export"): {"server/ray_serve.py"}}

# Third-party packages only these modules (paths under src/rerankrt, or a folder/) may import.
CONFINED = {
    "ray": ("server/ray_serve.py",),
    "fastapi": ("server/",),
    "starlette": ("server/",),
    "uvicorn": ("server/",),
}
# model types of the families' checkpoints, besides the architectures and fusion keys read from families/
MODEL_TYPES = {"bert", "roberta", "xlm-roberta", "camembert", "qwen3", "qwen3_vl", "gemma"}
# where model types may be named: the families, and the tiny-model builders and model-card references that make them
NAMING_MODELS = ("families/", "testing/")
# modules tests share; test modules (test_*.py) are never imported
TEST_HELPERS = {"support", "fakes", "fake_server", "fake_tensorrt"}


def modules(folder: Path) -> Iterator[Path]:
    yield from sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


@cache
def tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def imports(path: Path) -> Iterator[tuple[str, int]]:
    """Every module `path` imports (absolute dotted names, function-level imports included) and its line; `from
    package import name` yields `package.name` too, since the name may be a submodule."""
    package = path.relative_to(ROOT / "src").with_suffix("").parts[:-1] if SRC in path.parents else ()
    for node in ast.walk(tree(path)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's own package
                base = ".".join([*package[: len(package) - node.level + 1], *filter(None, [node.module])])
            yield base, node.lineno
            for alias in node.names:
                yield f"{base}.{alias.name}", node.lineno


def unit(path: Path) -> str:
    """The part of rerankrt a module belongs to: its top-level module or subpackage (`__init__` for the root)."""
    return path.relative_to(SRC).parts[0].removesuffix(".py")


def target_unit(name: str) -> str | None:
    """The part of rerankrt an imported name is in, None outside rerankrt (and for the root's __version__)."""
    parts = name.split(".")
    if parts[0] != "rerankrt":
        return None
    if len(parts) == 1:
        return None
    if (SRC / parts[1]).is_dir() or (SRC / f"{parts[1]}.py").is_file():
        return parts[1]
    return None if parts[1] == "__version__" else "runtime"  # the root re-exports the runtime's names


def rel(path: Path) -> str:
    return path.relative_to(SRC).as_posix()


def test_every_part_of_the_package_is_in_the_table():
    parts = {unit(p) for p in modules(SRC)} - {"cli"}
    assert parts == set(ALLOWED), "a new module or subpackage: add its line to ALLOWED (and docs/architecture.md)"


def test_each_part_imports_only_what_the_dependency_direction_allows():
    wrong = []
    for path in modules(SRC):
        source = unit(path)
        if source == "cli":
            continue
        for name, line in imports(path):
            target = target_unit(name)
            if target in (None, source) or target in ALLOWED[source] or rel(path) in UPWARD.get((source, target), ()):
                continue
            wrong.append(f"{rel(path)}:{line} imports {name} ({source} -> {target})")
    assert not wrong, "\n".join(wrong)


def module_of(name: str) -> str | None:
    """The module of rerankrt an imported dotted name is (or is in), None outside rerankrt."""
    while name.startswith("rerankrt"):
        path = ROOT / "src" / name.replace(".", "/")
        if path.with_suffix(".py").is_file() or (path / "__init__.py").is_file():
            return name
        name = name.rpartition(".")[0]
    return None


def test_no_import_cycle():
    """No module of rerankrt imports itself through others (function-level and TYPE_CHECKING imports count)."""
    graph: dict[str, set[str]] = {}
    for path in modules(SRC):
        parts = path.relative_to(ROOT / "src").with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        # a module's own packages do not count: Python runs them before it, and their importing it is no circle
        graph[name] = {
            m for imported, _ in imports(path) if (m := module_of(imported)) and not (name + ".").startswith(m + ".")
        }
    assert find_cycle(graph) is None


@pytest.mark.parametrize(
    "source, target",
    [("runtime", "export"), ("families", "runtime"), ("families", "export"), ("families", "server")],
)
def test_named_rules_hold(source, target):
    """The rules the docs state in words, each on its own (the table above implies them)."""
    found = [
        f"{rel(path)}:{line} imports {name}"
        for path in modules(SRC / source)
        for name, line in imports(path)
        if target_unit(name) == target
    ]
    assert not found, "\n".join(found)


def test_nothing_but_cli_imports_the_server():
    found = [
        f"{rel(path)}:{line} imports {name}"
        for path in modules(SRC)
        if unit(path) not in ("cli", "server")
        for name, line in imports(path)
        if target_unit(name) == "server"
    ]
    assert not found, "\n".join(found)


def test_outside_families_only_the_registry_and_the_contract_are_imported():
    """A family's own module (`families.qwen3_yes_no`, `families.qwen3_vl.media`, ...) stays inside families/."""
    open_names = {"rerankrt.families", "rerankrt.families.base", "rerankrt.families.packed"}  # packed: no one family's
    found = []
    for path in modules(SRC):
        if rel(path).startswith(NAMING_MODELS):
            continue
        for name, line in imports(path):
            if not name.startswith("rerankrt.families.") or name in open_names:
                continue
            owner = name.rsplit(".", 1)[0]  # `from rerankrt.families import X` yields rerankrt.families.X
            if owner in open_names and not _is_module(name):
                continue
            found.append(f"{rel(path)}:{line} imports {name}")
    assert not found, "\n".join(found)


def _is_module(name: str) -> bool:
    path = SRC.parent.joinpath(*name.split("."))
    return path.is_dir() or path.with_suffix(".py").is_file()


def model_names() -> set[str]:
    """Family names (current and old), the architectures the families recognise, and checkpoint model types."""
    from rerankrt.families import FAMILIES, FAMILY_ALIASES

    names = {family.name for family in FAMILIES} | set(FAMILY_ALIASES) | set(FAMILY_ALIASES.values()) | MODEL_TYPES
    names |= {key for family in FAMILIES for key in family.export_hints.fusion}
    architecture = re.compile(r"^[A-Z][A-Za-z0-9]*For(CausalLM|SequenceClassification|ConditionalGeneration)$")
    for path in modules(SRC / "families"):
        names |= {
            node.value
            for node in ast.walk(tree(path))
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and architecture.match(node.value)
        }
    return names


def test_model_names_are_found():
    names = model_names()
    assert {"qwen3-yes-no", "decoder-yes-no", "cross-encoder", "Qwen3ForCausalLM", "xlm-roberta"} <= names


def test_no_family_or_model_type_is_named_outside_families():
    """Code outside families/ never branches on a kind of model: no string literal there is a family name, an
    architecture or a model type (docstrings may mention models; they are text, not literals compared)."""
    names = model_names()
    found = []
    for path in modules(SRC):
        if rel(path).startswith(NAMING_MODELS):
            continue
        for node in ast.walk(tree(path)):
            if isinstance(node, ast.Constant) and node.value in names:
                found.append(f"{rel(path)}:{node.lineno} {node.value!r}")
    assert not found, "\n".join(found)


def test_no_model_family_is_named_in_the_server():
    """Stricter for the server than the literal check: not even a comment names a model or a family's feature."""
    pattern = re.compile(r"qwen|vision|gemma|yes_no|deepstack", re.IGNORECASE)
    named = [
        f"{path.name}: {m.group()}"
        for path in (SRC / "server").rglob("*.py")
        for m in pattern.finditer(path.read_text())
    ]
    assert not named


@pytest.mark.parametrize("package", sorted(CONFINED))
def test_optional_libraries_are_imported_only_where_the_docs_say(package):
    allowed = CONFINED[package]
    found = [
        f"{rel(path)}:{line} imports {name}"
        for path in modules(SRC)
        if not rel(path).startswith(allowed)
        for name, line in imports(path)
        if name.split(".")[0] == package
    ]
    assert not found, "\n".join(found)


def test_tensorrt_engines_imports_no_tensorrt():
    """Engine planning runs (and is tested) on machines without TensorRT."""
    path = SRC / "tensorrt_engines.py"
    assert not [name for name, _ in imports(path) if name.split(".")[0] == "tensorrt"]


def test_the_map_names_every_module():
    doc = (ROOT / "docs" / "architecture.md").read_text()
    the_map = doc.split("## Map", 1)[1].split("## Dependencies", 1)[0]
    missing = [
        rel(path)
        for path in modules(SRC)
        if path.name != "__init__.py" and not re.search(rf"(?<![\w/]){re.escape(path.name)}", the_map)
    ]
    assert not missing, f"docs/architecture.md's map does not name: {', '.join(missing)}"


def test_no_test_module_imports_another():
    """Tests share helpers (tests/support.py, tests/fakes.py, the fake server and TensorRT), never test modules."""
    test_modules = {p.stem for p in modules(TESTS) if p.stem.startswith("test_")}
    found = []
    for path in modules(TESTS):
        for name, line in imports(path):
            parts = name.split(".")
            if parts[0] == "tests" and len(parts) > 1 and parts[-1] in test_modules:
                found.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert not found, "\n".join(found)


def test_helpers_are_not_named_like_tests():
    helpers = {p.stem for p in modules(TESTS) if not p.stem.startswith(("test_", "conftest", "__init__"))}
    assert helpers <= TEST_HELPERS, f"a new shared test module: add it to TEST_HELPERS ({helpers - TEST_HELPERS})"
