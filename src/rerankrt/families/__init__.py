"""Reranker families: the one place that knows a kind of model. The registry recognises a checkpoint.

To add a family: write its module (or package) here, implementing `families.base.Family`, and add it to
FAMILIES. Nothing outside `families/` changes.
"""

from __future__ import annotations

from pathlib import Path

from rerankrt.errors import UnsupportedModelError
from rerankrt.families.base import (
    MODEL_LIMITS,
    Batch,
    Content,
    Family,
    Features,
    GraphRunner,
    PairEncoder,
    Recognition,
    Truncation,
)
from rerankrt.families.bge_gemma import BgeGemmaFamily
from rerankrt.families.colbert import ColbertFamily
from rerankrt.families.cross_encoder import CrossEncoderFamily, num_labels
from rerankrt.families.gte_new import GteNewFamily
from rerankrt.families.jina_v2 import JinaV2Family
from rerankrt.families.minicpm_layerwise import LayerwiseFamily
from rerankrt.families.mxbai_v2 import MxbaiV2Family
from rerankrt.families.qwen3_seq_cls import Qwen3SeqClsFamily
from rerankrt.families.qwen3_vl import Qwen3VLFamily
from rerankrt.families.qwen3_yes_no import Qwen3YesNoFamily
from rerankrt.model_source import read_config

FAMILIES: tuple[type[Family], ...] = (
    CrossEncoderFamily,
    Qwen3YesNoFamily,
    Qwen3VLFamily,
    BgeGemmaFamily,
    MxbaiV2Family,
    Qwen3SeqClsFamily,
    LayerwiseFamily,
    ColbertFamily,
    GteNewFamily,
    JinaV2Family,
)

# Old family names, still read wherever a family name is (manifests of artifacts exported before a rename, --family):
# old -> current. Artifacts are written with the current name.
FAMILY_ALIASES: dict[str, str] = {"decoder-yes-no": "qwen3-yes-no"}  # it was only ever Qwen3-Reranker

__all__ = [
    "FAMILIES",
    "FAMILY_ALIASES",
    "MODEL_LIMITS",
    "Batch",
    "Content",
    "Family",
    "Features",
    "GraphRunner",
    "PairEncoder",
    "Recognition",
    "Truncation",
    "canonical_family_name",
    "detect_family",
    "family_names",
    "get_family",
]


def family_names() -> list[str]:
    return [family.name for family in FAMILIES]


def canonical_family_name(name: str) -> str:
    """The current name of a family named `name` (an old name in FAMILY_ALIASES -> the current one)."""
    return FAMILY_ALIASES.get(name, name)


def get_family(name: str) -> Family:
    """The family named `name` (its current name or an old one)."""
    name = canonical_family_name(name)
    for family in FAMILIES:
        if family.name == name:
            return family()
    raise UnsupportedModelError(f"unknown family {name!r}; known families: {', '.join(family_names())}")


def detect_family(model_dir: Path, forced: str | None = None) -> tuple[Family, Recognition]:
    """The family of the checkpoint in `model_dir` and why: `forced` (--family) or the one family that claims it.

    A checkpoint that no family claims, or that two claim, is refused with the families and --family named.
    """
    if forced:
        family = get_family(forced)
        return family, Recognition(family.name, f"forced with --family {forced}")
    config = read_config(model_dir)
    claims = [(family, reason) for family in FAMILIES if (reason := family.recognise(config, Path(model_dir)))]
    if len(claims) == 1:
        family, reason = claims[0]
        return family(), Recognition(family.name, f"detected: {reason}")
    supported = "; ".join(f.describe() for f in FAMILIES)
    if claims:
        names = " and ".join(f"{family.name} ({reason})" for family, reason in claims)
        raise UnsupportedModelError(f"{model_dir}: claimed by {names}; choose one with --family")
    architectures = ", ".join(config.get("architectures") or []) or f"model_type={config.get('model_type')!r}"
    if "ForSequenceClassification" in architectures:
        architectures += f" with {num_labels(config)} labels"
    raise UnsupportedModelError(
        f"{model_dir}: no reranker family recognises {architectures}. Supported: {supported}. "
        "If it is one of these (e.g. a fine-tune under another name), give --family NAME; "
        f"families: {', '.join(family_names())}."
    )
