"""jina-reranker-v2 against the authors' own modeling code: the checkpoint repository's flash-attention XLM-R
(`modeling_xlm_roberta.py` with `configuration_xlm_roberta.py`, `embedding.py`, `mha.py`, `mlp.py`, `block.py`,
`xlm_padding.py`, `stochastic_depth.py`) run on the tiny checkpoint (CPU: its PyTorch attention), against the native
port, the served ONNX artifact and the CI reference.

The remote code is not part of rerankrt and needs einops, which the dev extra lacks: the module skips unless
RERANKRT_JINA_V2_IMPL names a folder holding those files and einops imports (docs/development.md, "Remote modeling
code"). The CI tier proves the same numbers against `rerankrt.testing.reference_jina_v2` (tests/test_jina_v2.py).
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
from rerankrt.families.jina_v2 import JinaV2Family
from rerankrt.testing.reference import random_text
from rerankrt.testing.reference_jina_v2 import jina_v2_reference_logits
from rerankrt.testing.tiny_jina_v2 import build_tiny_jina_v2

IMPL = os.environ.get("RERANKRT_JINA_V2_IMPL", "")
FILES = ("modeling_xlm_roberta.py", "configuration_xlm_roberta.py", "embedding.py", "mha.py", "mlp.py", "block.py",
         "xlm_padding.py", "stochastic_depth.py")  # fmt: skip
if not IMPL or not all((Path(IMPL) / name).is_file() for name in FILES):
    pytest.skip(
        "RERANKRT_JINA_V2_IMPL does not name a folder with jina-reranker-v2's remote code (docs/development.md: "
        "Remote modeling code)",
        allow_module_level=True,
    )
pytest.importorskip("einops", reason="einops (which Jina's remote code imports) is not installed")

pytestmark = [pytest.mark.integration, pytest.mark.remote_code]


@pytest.fixture(scope="module")
def remote_code(tmp_path_factory):
    """The authors' modules, imported as a package from a copy of the files (relative imports)."""
    root = tmp_path_factory.mktemp("remote")
    package = root / "jina_v2_impl"
    package.mkdir()
    for name in FILES:
        shutil.copy(Path(IMPL) / name, package / name)
    (package / "__init__.py").write_text("")
    sys.path.insert(0, str(root))
    try:
        yield (
            importlib.import_module("jina_v2_impl.modeling_xlm_roberta"),
            importlib.import_module("jina_v2_impl.configuration_xlm_roberta"),
        )
    finally:
        sys.path.remove(str(root))


def authors_model(remote_code, model_dir: Path):
    from safetensors.torch import load_file

    modeling, configuration = remote_code
    config = configuration.XLMRobertaFlashConfig(**json.loads((model_dir / "config.json").read_text()))
    model = modeling.XLMRobertaForSequenceClassification(config)
    model.load_state_dict(load_file(str(model_dir / "model.safetensors")), strict=True)
    return model.eval()


def authors_logits(model, batch) -> np.ndarray:
    with torch.no_grad():
        inputs = {name: torch.from_numpy(batch[name]) for name in ("input_ids", "attention_mask")}
        return model(**inputs).logits[:, 0].numpy()


def batches(model_dir: Path):
    encoder = JinaV2Family().load_encoder(model_dir)
    for seed in (0, 1, 2):
        rng = np.random.default_rng(seed)
        query = random_text(rng, 2, 12)
        documents = [random_text(rng, lo, hi) for lo, hi in [(1, 3), (40, 60), (300, 400), (500, 600), (900, 1000)]]
        yield query, documents, encoder.collate(encoder.encode(query, documents))


@pytest.mark.parametrize("changes", [{}, {"hidden_act": "gelu_new"}])
def test_native_and_reference_equal_the_authors_code(remote_code, tmp_path, changes):
    model_dir = build_tiny_jina_v2(tmp_path / "tiny", **changes)
    model, native = authors_model(remote_code, model_dir), JinaV2Family().load_scorer(model_dir)
    for _, _, batch in batches(model_dir):
        assert 512 < batch["attention_mask"].sum(axis=1).max() == 1024
        expected = authors_logits(model, batch)
        np.testing.assert_allclose(run_torch(native, batch), expected, atol=1e-4, rtol=0)
        reference = jina_v2_reference_logits(model_dir, batch["input_ids"], batch["attention_mask"])
        np.testing.assert_allclose(reference, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_served_artifact_equals_the_authors_code(remote_code, tmp_path_factory, backend):
    from rerankrt import Reranker
    from rerankrt.export import export_model

    root = tmp_path_factory.mktemp("served")
    model_dir = build_tiny_jina_v2(root / "tiny")
    export_model(str(model_dir), root / "artifact")
    model = authors_model(remote_code, model_dir)
    with Reranker.load(str(root / "artifact"), backend=backend, max_batch_size=2, threads=1) as reranker:
        for query, documents, batch in batches(model_dir):
            np.testing.assert_allclose(
                reranker.logits(query, documents), authors_logits(model, batch), atol=1e-4, rtol=0
            )
