"""The artifact folder written by `rerankrt export` and read by the runtime.

`manifest.json` records what the folder holds and how it was made, including a
sha256 for every file; `load_manifest` refuses a folder whose manifest, files,
hashes, versions or parity check do not hold, naming the file at fault.

Every name in a manifest is a relative path that stays inside the folder (no `..`, no absolute path, no link
leading out), and every file in the folder that a loader could read is listed and hashed: an unlisted file is
refused, since tokenizer and model loaders read whatever they find. The torch backend reads the source model's
folder, so the export hashes those files too (`source.files`) and the runtime checks them before loading.
The hashes detect a changed or corrupt artifact; they do not authenticate it (whoever can write the folder can
rewrite the manifest), which is why nothing read from an artifact can run code (see docs/security.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path, PurePosixPath

from pydantic import BaseModel, ValidationError, field_validator

from rerankrt.errors import ArtifactError
from rerankrt.precision import ENGINE_PRECISIONS, Precision

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
PARITY_NAME = "parity.json"
FIDELITY_NAME = "fidelity.json"  # the reduced-precision variant's report (artifacts exported with --precision)
GOLDEN_NAME = "golden.json"  # pairs and their fp32 logits every plan must reproduce where it serves (self-check)
# Written into an artifact folder after export, by the engine builders, as caches: never listed, never read by a
# loader of the model (TensorRT reads its timing cache while building; ONNX Runtime its engine cache).
BUILD_LOCK = ".build-engine.lock"  # replicas sharing the folder build a GPU's engine once under it (flock)
UNLISTED_FILES = frozenset({MANIFEST_NAME, BUILD_LOCK})
TIMING_CACHE = re.compile(r"^tensorrt\.[\w.]+\.timing-cache$")  # one per GPU and TensorRT version (tensorrt_engines.py)
UNLISTED_FOLDERS = frozenset({"onnxruntime-tensorrt-cache"})
# Source-folder files that transformers' loaders do not read (other frameworks' weights, exports); `.bin` weights
# are not read either when safetensors ones are there.
FOREIGN_WEIGHTS = re.compile(r"\.(h5|msgpack|ot|onnx|onnx_data|gguf|tflite|mlmodel|engine|plan)$|^\.", re.IGNORECASE)


class SourceModel(BaseModel):
    ref: str  # Hub id or path the export was given
    revision: str | None = None  # Hub commit hash
    path: str | None = None  # local folder the weights were read from (the torch backend can reuse it)
    architecture: str
    # file name -> sha256 of what the torch backend reads from that folder (`source_files`); empty in artifacts
    # from before these were recorded, which the torch backend then does not serve
    files: dict[str, str] = {}


class Graph(BaseModel):
    file: str
    inputs: list[str]
    outputs: list[str]


class Profile(BaseModel):
    """A TensorRT optimization profile: [batch, sequence] at min, opt and max (every input shares it)."""

    min: tuple[int, int]
    opt: tuple[int, int]
    max: tuple[int, int]


class Engine(BaseModel):
    """A TensorRT engine in the artifact ("engine" in rerankrt always means one; the scoring object is the
    Reranker)."""

    file: str  # e.g. model.fp16.sm90.trt11.4.0.106.plan
    graph: str  # the ONNX file it was built from
    precision: Precision
    compute_capability: str  # "9.0"
    tensorrt: str  # full TensorRT version it was built with
    profile: Profile

    @field_validator("precision")
    @classmethod
    def _engine_precision(cls, value: Precision) -> Precision:
        if value not in ENGINE_PRECISIONS:
            raise ValueError(f"TensorRT engines are {', '.join(p.value for p in ENGINE_PRECISIONS)}")
        return value


class Manifest(BaseModel):
    format_version: int
    family: str
    family_reason: str | None = None  # how the family was chosen: detected from what, or forced with --family
    family_options: dict[str, str] = {}  # the family's export options, resolved (--family-option; Family.configure)
    source: SourceModel
    max_length: int
    precision: Precision = Precision.FP32  # what serves by default (checked in fidelity.json)
    opset: int
    # role -> graph: "scorer" (fp32) maps pairs to logits; "scorer.int8"/"scorer.fp16"/"scorer.bf16" are variants
    graphs: dict[str, Graph]
    engines: list[Engine] = []  # TensorRT engines built from the graphs (rerankrt build-engine)
    encoder_files: list[str]
    versions: dict[str, str]
    files: dict[str, str]  # file name -> sha256
    created_at: str

    def names(self) -> list[tuple[str, str]]:
        """(where in the manifest, name) of every file name it holds."""
        named = [(f"files[{n!r}]", n) for n in self.files] + [
            (f"encoder_files[{i}]", n) for i, n in enumerate(self.encoder_files)
        ]
        named += [(f"graphs[{role!r}].file", g.file) for role, g in self.graphs.items()]
        for i, engine in enumerate(self.engines):
            named += [(f"engines[{i}].file", engine.file), (f"engines[{i}].graph", engine.graph)]
        named += [(f"source.files[{n!r}]", n) for n in self.source.files]
        return named


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def hash_files(folder: Path, names: list[str]) -> dict[str, str]:
    return {name: sha256_file(folder / name) for name in sorted(set(names))}


def name_problem(name: str) -> str | None:
    """Why `name` cannot name a file inside an artifact folder, or None: relative, `/`-separated, no `..`."""
    if not name or "\x00" in name or "\\" in name:
        return "is not a file name"
    path = PurePosixPath(name)
    if path.is_absolute() or re.match(r"^[A-Za-z]:", name):
        return "is an absolute path"
    if ".." in path.parts or "." in name.split("/") or "" in name.split("/"):
        return "leaves the folder (.. or an empty or . component)"
    return None


def inside(folder: Path, name: str) -> bool:
    """True when folder/name, links resolved, is still inside `folder`."""
    return (folder / name).resolve().is_relative_to(folder.resolve())


def folder_files(folder: Path) -> list[str]:
    """Every file and link in `folder`, recursively (links to folders are not entered), as relative names."""
    found = []
    for root, dirs, files in os.walk(folder):
        relative = Path(root).relative_to(folder)
        if relative == Path("."):
            dirs[:] = [d for d in dirs if d not in UNLISTED_FOLDERS]
        found += [(relative / name).as_posix() for name in files]
        found += [(relative / d).as_posix() for d in dirs if (Path(root) / d).is_symlink()]
    return sorted(found)


def source_files(folder: Path) -> list[str]:
    """What loading a model (weights, config, tokenizer) from a Hugging Face model folder may read: its top-level
    files, less other frameworks' weights, and less `.bin` weights when safetensors ones are there."""
    names = sorted(p.name for p in Path(folder).iterdir() if p.is_file() and not FOREIGN_WEIGHTS.search(p.name))
    if any(n.endswith(".safetensors") for n in names):
        names = [n for n in names if not (n.endswith(".bin") or n.endswith(".bin.index.json"))]
    return names


def check_source_files(folder: Path, expected: dict[str, str]) -> None:
    """The source folder holds exactly the files the export hashed, unchanged; ArtifactError naming one that is not."""
    found = set(source_files(folder))
    if unlisted := sorted(found - set(expected)):
        raise ArtifactError(
            f"{folder / unlisted[0]}: not among the source files hashed at export; the torch backend reads it, so it "
            "is refused (remove it, or re-export the model)"
        )
    for name, digest in expected.items():
        file = folder / name
        if name_problem(name) or not inside(folder, name):
            raise ArtifactError(f"{folder}: the source file name {name!r} is not a file inside that folder")
        if not file.is_file():
            raise ArtifactError(f"{file}: hashed at export but missing")
        if sha256_file(file) != digest:
            raise ArtifactError(f"{file}: sha256 does not match the export's; the source weights changed")


def write_manifest(folder: Path, manifest: Manifest) -> Path:
    path = folder / MANIFEST_NAME
    path.write_text(manifest.model_dump_json(indent=2) + "\n")
    return path


def is_artifact(folder: Path) -> bool:
    return (Path(folder) / MANIFEST_NAME).is_file()


def load_manifest(folder: Path, verify_hashes: bool = True) -> Manifest:
    """Read and check an artifact folder; raise ArtifactError naming the file that fails."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise ArtifactError(f"{folder}: no {MANIFEST_NAME}; export the model first with `rerankrt export`")
    try:
        manifest = Manifest.model_validate_json(path.read_text())
    except ValidationError as exc:
        raise ArtifactError(
            f"{path}: not a valid manifest ({exc.error_count()} problems: {_first_error(exc)})"
        ) from exc
    if manifest.format_version != FORMAT_VERSION:
        raise ArtifactError(
            f"{path}: artifact format {manifest.format_version}, this rerankrt reads format {FORMAT_VERSION}; "
            "re-export the model with this version"
        )
    _check_versions(path, manifest)
    _check_names(folder, path, manifest)
    listed = set(manifest.files)
    for name in [
        *(g.file for g in manifest.graphs.values()),
        *(e.file for e in manifest.engines),
        *manifest.encoder_files,
    ]:
        if name not in listed:
            raise ArtifactError(f"{path}: {name} is not listed with a hash")
    if PARITY_NAME not in listed:
        raise ArtifactError(f"{path}: {PARITY_NAME} is not listed; the export was not verified")
    if manifest.precision != "fp32" and FIDELITY_NAME not in listed:
        raise ArtifactError(f"{path}: precision {manifest.precision} without {FIDELITY_NAME}: the variant is unchecked")
    _check_unlisted(folder, manifest)
    for name, expected in manifest.files.items():
        file = folder / name
        if not file.is_file():
            raise ArtifactError(f"{file}: listed in {MANIFEST_NAME} but missing")
        if verify_hashes and sha256_file(file) != expected:
            raise ArtifactError(f"{file}: sha256 does not match {MANIFEST_NAME}; the file changed after export")
    parity = json.loads((folder / PARITY_NAME).read_text())
    if not parity.get("passed"):
        raise ArtifactError(f"{folder / PARITY_NAME}: the export's parity check did not pass")
    if manifest.precision != "fp32":
        fidelity = json.loads((folder / FIDELITY_NAME).read_text())
        if not (fidelity.get("passed") or fidelity.get("accepted")):
            raise ArtifactError(f"{folder / FIDELITY_NAME}: the {manifest.precision} variant failed its fidelity check")
    return manifest


def _check_names(folder: Path, path: Path, manifest: Manifest) -> None:
    """Every name relative and inside the folder (then `_check_unlisted`: every file in the folder listed)."""
    for where, name in manifest.names():
        if problem := name_problem(name):
            raise ArtifactError(f"{path}: {where} {name!r} {problem}; names must be relative, inside the folder")
        if not where.startswith("source.") and (folder / name).exists() and not inside(folder, name):
            raise ArtifactError(f"{path}: {where} {name!r} is a link leading out of the folder")


def _check_unlisted(folder: Path, manifest: Manifest) -> None:
    listed = set(manifest.files) | UNLISTED_FILES
    for name in folder_files(folder):
        if name not in listed and not TIMING_CACHE.match(name):
            raise ArtifactError(
                f"{folder / name}: not listed in {MANIFEST_NAME}; loaders read what they find, so an unlisted "
                "file is refused (remove it, or re-export)"
            )


def _check_versions(path: Path, manifest: Manifest) -> None:
    """Tokenizer files saved by transformers 5 do not load in 4.x (and vice versa): refuse a major mismatch."""
    import transformers

    made_with = manifest.versions.get("transformers")
    if made_with and made_with.split(".")[0] != transformers.__version__.split(".")[0]:
        raise ArtifactError(
            f"{path}: exported with transformers {made_with}, this environment has {transformers.__version__}; "
            "re-export the model here"
        )


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    return f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
