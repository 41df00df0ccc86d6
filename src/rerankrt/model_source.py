"""Resolve a model reference (local folder or Hugging Face Hub id) to a local folder."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from rerankrt.errors import UnsupportedModelError


@dataclass(frozen=True)
class ModelSource:
    """Where a model's files are, and what the user called it."""

    ref: str  # what the user passed: a Hub id or a path
    path: Path  # local folder holding config.json and the weights
    revision: str | None  # Hub commit hash, None for a local folder

    def config(self) -> dict:
        return read_config(self.path)


def resolve_model(ref: str, revision: str | None = None) -> ModelSource:
    """A local folder is used as is; anything else is fetched from (or found in the cache of) the Hub."""
    path = Path(ref).expanduser()
    if path.is_dir():
        return ModelSource(ref=ref, path=path.resolve(), revision=None)
    if path.exists() or ref.startswith((".", "/", "~")) or ref.count("/") > 1:
        raise UnsupportedModelError(f"{ref}: not a model folder and not a Hub id (owner/name)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    try:
        local = Path(snapshot_download(ref, revision=revision))
    except HFValidationError as exc:
        raise UnsupportedModelError(f"{ref}: not a valid Hub id ({exc})") from exc
    except Exception as exc:  # network, auth, offline without cache: say which and how to work around it
        raise UnsupportedModelError(
            f"{ref}: could not fetch from the Hugging Face Hub ({type(exc).__name__}: {exc}). "
            "Download the model elsewhere and pass its local folder instead."
        ) from exc
    # snapshot folders are named by the commit hash they hold
    return ModelSource(ref=ref, path=local, revision=local.name)


def read_config(model_dir: Path) -> dict:
    config_path = Path(model_dir) / "config.json"
    if not config_path.is_file():
        raise UnsupportedModelError(f"{model_dir}: no config.json; is this a Hugging Face model folder?")
    try:
        return json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise UnsupportedModelError(f"{config_path}: not valid JSON ({exc})") from exc
