"""The artifact folder written by `rerankrt export` and read by the runtime.

`manifest.json` records what the folder holds and how it was made, including a
sha256 for every file; `load_manifest` refuses a folder whose manifest, files,
hashes, versions or parity check do not hold, naming the file at fault.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydantic import BaseModel, ValidationError, field_validator

from rerankrt.errors import ArtifactError
from rerankrt.precision import ENGINE_PRECISIONS, Precision

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
PARITY_NAME = "parity.json"
FIDELITY_NAME = "fidelity.json"  # the reduced-precision variant's report (artifacts exported with --precision)


class SourceModel(BaseModel):
    ref: str  # Hub id or path the export was given
    revision: str | None = None  # Hub commit hash
    path: str | None = None  # local folder the weights were read from (the torch backend can reuse it)
    architecture: str


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


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def hash_files(folder: Path, names: list[str]) -> dict[str, str]:
    return {name: sha256_file(folder / name) for name in sorted(set(names))}


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
    listed = set(manifest.files)
    for built in [*manifest.graphs.values(), *manifest.engines]:
        if built.file not in listed:
            raise ArtifactError(f"{path}: {built.file} is not listed with a hash")
    if PARITY_NAME not in listed:
        raise ArtifactError(f"{path}: {PARITY_NAME} is not listed; the export was not verified")
    if manifest.precision != "fp32" and FIDELITY_NAME not in listed:
        raise ArtifactError(f"{path}: precision {manifest.precision} without {FIDELITY_NAME}: the variant is unchecked")
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
