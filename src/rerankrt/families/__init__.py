"""Reranker families: one module each, found from a checkpoint's config.json."""

from __future__ import annotations

from pathlib import Path

from rerankrt.errors import UnsupportedModelError
from rerankrt.families.base import Batch, Content, Family, Features, PairEncoder
from rerankrt.families.cross_encoder import CrossEncoderFamily, num_labels
from rerankrt.families.decoder_yes_no import DecoderYesNoFamily
from rerankrt.families.qwen3_vl import Qwen3VLFamily
from rerankrt.model_source import read_config

# Most specific first: the first family whose `matches` accepts a config wins.
FAMILIES: tuple[type[Family], ...] = (CrossEncoderFamily, DecoderYesNoFamily, Qwen3VLFamily)

__all__ = [
    "Batch",
    "Content",
    "CrossEncoderFamily",
    "DecoderYesNoFamily",
    "FAMILIES",
    "Family",
    "Features",
    "PairEncoder",
    "Qwen3VLFamily",
    "detect_family",
    "get_family",
]


def get_family(name: str) -> Family:
    for family in FAMILIES:
        if family.name == name:
            return family()
    known = ", ".join(f.name for f in FAMILIES)
    raise UnsupportedModelError(f"unknown family {name!r}; known families: {known}")


def detect_family(model_dir: Path) -> Family:
    """The family of the checkpoint in `model_dir`, or an error naming its architecture."""
    config = read_config(model_dir)
    for family in FAMILIES:
        if family.matches(config, Path(model_dir)):
            return family()
    architectures = ", ".join(config.get("architectures") or []) or f"model_type={config.get('model_type')!r}"
    if "ForSequenceClassification" in architectures:
        architectures += f" with {num_labels(config)} labels"
    supported = "; ".join(f.describe() for f in FAMILIES)
    raise UnsupportedModelError(f"{model_dir}: unsupported architecture {architectures}. Supported: {supported}.")
