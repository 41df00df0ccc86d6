"""bge-reranker-v2-minicpm-layerwise against FlagEmbedding itself: its `LayerWiseFlagLLMReranker.compute_score`
and the checkpoint's remote modeling code it ships (`LayerWiseMiniCPMForCausalLM`), on the tiny checkpoint.

FlagEmbedding is not in the dev extra (its dependencies are heavy), so this module skips without it; run it in a
venv that has it (docs/development.md, "FlagEmbedding's own scoring"). The CI tier proves the same numbers against
`rerankrt.testing.reference_minicpm`, which this module also checks against FlagEmbedding.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

flag_embedding = pytest.importorskip(
    "FlagEmbedding", reason="FlagEmbedding is not installed (docs/development.md: FlagEmbedding's own scoring)"
)

from rerankrt import Reranker  # noqa: E402
from rerankrt.export import export_model  # noqa: E402
from rerankrt.families.base import run_torch  # noqa: E402
from rerankrt.families.minicpm_layerwise import LayerwiseFamily  # noqa: E402
from rerankrt.testing.reference_minicpm import LayerwiseReference  # noqa: E402
from rerankrt.testing.tiny_gemma import CORPUS  # noqa: E402
from rerankrt.testing.tiny_minicpm import LAYERS, START_LAYER, build_tiny_minicpm  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.flagembedding]

WORDS = sorted({w for line in CORPUS for w in line.replace("\n", " ").split()}) + ["Yes", "No", "熊猫", "zebra"]
CUT = 4


def pairs(seed: int, count: int = 9) -> list[tuple[str, str]]:
    rng = np.random.default_rng(seed)

    def text(low, high):
        return " ".join(rng.choice(WORDS, size=int(rng.integers(low, high + 1))))

    query = text(18, 30)
    return [(query if i % 3 else text(1, 10), text(0, int(rng.choice([10, 80, 400])))) for i in range(count)]


@pytest.fixture(scope="module")
def minicpm_dir(tmp_path_factory):
    return build_tiny_minicpm(tmp_path_factory.mktemp("models") / "tiny-minicpm-card")


@pytest.fixture(scope="module")
def flag_reranker(minicpm_dir):
    from FlagEmbedding import LayerWiseFlagLLMReranker

    return LayerWiseFlagLLMReranker(str(minicpm_dir), use_fp16=False, devices=["cpu"], batch_size=4)


@pytest.fixture(scope="module")
def cut_artifact(minicpm_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("artifacts") / "minicpm-cut"
    export_model(str(minicpm_dir), out, family_options={"cutoff_layer": str(CUT)})
    return out


@pytest.mark.parametrize("cutoff", [START_LAYER, CUT, LAYERS])
@pytest.mark.parametrize("side", ["left", "right"])
def test_native_equals_the_remote_modeling_code(minicpm_dir, cutoff, side):
    """FlagEmbedding's copy of modeling_minicpm_reranker.py (`outputs.logits[0]` at the last real token) and the
    native folded Llama on the same padded batch."""
    from FlagEmbedding.inference.reranker.decoder_only.layerwise import last_logit_pool_layerwise
    from FlagEmbedding.inference.reranker.decoder_only.models.modeling_minicpm_reranker import (
        LayerWiseMiniCPMForCausalLM,
    )

    remote = LayerWiseMiniCPMForCausalLM.from_pretrained(minicpm_dir, dtype=torch.float32).eval()
    family = LayerwiseFamily()
    family.configure({"cutoff_layer": str(cutoff)}, minicpm_dir)
    encoder = family.load_encoder(minicpm_dir)
    encoder.padding_side = side
    batch = encoder.collate([encoder.encode(q, [d])[0] for q, d in pairs(cutoff)])
    batch.pop("prefix_length", None)
    with torch.no_grad():
        inputs = {k: torch.from_numpy(v) for k, v in batch.items()}
        logits = remote(**inputs, output_hidden_states=True, cutoff_layers=[cutoff]).logits[0]
        expected = last_logit_pool_layerwise(logits, inputs["attention_mask"]).numpy()
    np.testing.assert_allclose(run_torch(family.load_scorer(minicpm_dir), batch), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("cutoff", [START_LAYER, LAYERS])
def test_the_test_reference_equals_compute_score(minicpm_dir, flag_reranker, cutoff):
    """What the CI tier compares with (`reference_minicpm`) is FlagEmbedding's compute_score."""
    batch = pairs(10 + cutoff)
    expected = np.asarray(flag_reranker.compute_score(batch, cutoff_layers=[cutoff], max_length=64))
    ours = LayerwiseReference(minicpm_dir).logits(batch, cutoff, max_length=64, batch_size=4)
    np.testing.assert_allclose(ours, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "torch"])
def test_served_equals_compute_score(cut_artifact, flag_reranker, backend):
    """The cut-off artifact served (prefix reuse on) against `compute_score(pairs, cutoff_layers=[CUT])`."""
    batch = pairs(3)
    expected = np.asarray(flag_reranker.compute_score(batch, cutoff_layers=[CUT]))
    worst = 0.0
    with Reranker.load(str(cut_artifact), backend=backend) as reranker:
        for query in dict.fromkeys(q for q, _ in batch):
            rows = [i for i, (q, _) in enumerate(batch) if q == query]
            logits = reranker.logits(query, [batch[i][1] for i in rows])
            worst = max(worst, float(np.abs(logits - expected[rows]).max()))
    print(f"{backend}: max |Δlogit| vs LayerWiseFlagLLMReranker.compute_score(cutoff_layers=[{CUT}]) {worst:.2e}")
    assert worst <= 1e-4
