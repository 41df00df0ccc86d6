"""gte-new against the authors' own modeling code: Alibaba-NLP/new-impl's `NewForSequenceClassification`
(modeling.py and configuration.py, the remote code gte-multilingual-reranker-base's config.json maps to) run on the
tiny checkpoint, against the native port, the served ONNX artifact and the CI reference.

The remote code is not part of rerankrt and cannot be downloaded here: the module skips unless
RERANKRT_GTE_NEW_IMPL names a folder holding the two files (docs/development.md, "Remote modeling code"). The CI tier
proves the same numbers against `rerankrt.testing.reference_gte` (tests/test_gte_new.py), which this module also
checks against the authors' code.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rerankrt.families.base import run_torch
from rerankrt.families.gte_new import GteNewFamily, load_gte_new
from rerankrt.testing.reference import random_text
from rerankrt.testing.reference_gte import gte_reference_logits
from rerankrt.testing.tiny_gte import build_tiny_gte

IMPL = os.environ.get("RERANKRT_GTE_NEW_IMPL", "")
FILES = ("modeling.py", "configuration.py")
if not IMPL or not all((Path(IMPL) / name).is_file() for name in FILES):
    pytest.skip(
        "RERANKRT_GTE_NEW_IMPL does not name a folder with Alibaba-NLP/new-impl's modeling.py and configuration.py "
        "(docs/development.md: Remote modeling code)",
        allow_module_level=True,
    )

pytestmark = [pytest.mark.integration, pytest.mark.remote_code]

MAX_LENGTH = 1024


@pytest.fixture(scope="module")
def remote_code(tmp_path_factory):
    """The authors' modeling module, imported as a package from a copy of the two files (relative imports)."""
    root = tmp_path_factory.mktemp("remote")
    package = root / "gte_new_impl"
    package.mkdir()
    for name in FILES:
        shutil.copy(Path(IMPL) / name, package / name)
    (package / "__init__.py").write_text("")
    sys.path.insert(0, str(root))
    try:
        yield importlib.import_module("gte_new_impl.modeling")
    finally:
        sys.path.remove(str(root))


def authors_model(remote_code, model_dir: Path):
    """`NewForSequenceClassification` of the folder's config.json with its model.safetensors, eval mode: eager
    attention, the one transformers gives the class (it declares no SDPA support; xformers' unpadded path is the
    same function with a block-diagonal mask, and needs CUDA)."""
    from safetensors.torch import load_file

    config = remote_code.NewConfig(**json.loads((model_dir / "config.json").read_text()))
    model = remote_code.NewForSequenceClassification(config)
    model.load_state_dict(load_file(str(model_dir / "model.safetensors")), strict=True)
    return model.eval()


def authors_logits(model, batch) -> np.ndarray:
    with torch.no_grad():
        out = model(
            input_ids=torch.from_numpy(batch["input_ids"]), attention_mask=torch.from_numpy(batch["attention_mask"])
        )
    return out.logits[:, 0].numpy()


def batches(model_dir: Path):
    encoder = GteNewFamily().load_encoder(model_dir, max_length=MAX_LENGTH)
    for seed in (0, 1, 2):
        rng = np.random.default_rng(seed)
        query = random_text(rng, 2, 12)
        documents = [random_text(rng, lo, hi) for lo, hi in [(1, 3), (40, 60), (300, 400), (500, 600), (900, 1000)]]
        yield query, documents, encoder.collate(encoder.encode(query, documents))


@pytest.mark.parametrize(
    "changes", [{}, {"pack_qkv": False}, {"rope_scaling": {"type": "ntk", "factor": 4.0, "mixed_b": 1.5}}]
)
def test_port_and_reference_equal_the_authors_code(remote_code, tmp_path, changes):
    model_dir = build_tiny_gte(tmp_path / "tiny", **changes)
    model = authors_model(remote_code, model_dir)
    port = load_gte_new(model_dir)
    for _, _, batch in batches(model_dir):
        assert 512 < batch["attention_mask"].sum(axis=1).max() == MAX_LENGTH
        expected = authors_logits(model, batch)
        np.testing.assert_allclose(run_torch(port, batch), expected, atol=1e-4, rtol=0)
        reference = gte_reference_logits(model_dir, batch["input_ids"], batch["attention_mask"])
        np.testing.assert_allclose(reference, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_served_artifact_equals_the_authors_code(remote_code, tmp_path_factory, backend):
    from rerankrt import Reranker
    from rerankrt.export import export_model

    root = tmp_path_factory.mktemp("served")
    model_dir = build_tiny_gte(root / "tiny")
    export_model(str(model_dir), root / "artifact", max_length=MAX_LENGTH)
    model = authors_model(remote_code, model_dir)
    with Reranker.load(str(root / "artifact"), backend=backend, max_batch_size=2, threads=1) as reranker:
        for query, documents, batch in batches(model_dir):
            np.testing.assert_allclose(
                reranker.logits(query, documents), authors_logits(model, batch), atol=1e-4, rtol=0
            )
