"""jinaai/jina-reranker-v2-base-multilingual (the jina-reranker-v2 family): Jina's flash-attention XLM-R remote code
run natively as transformers' `XLMRobertaForSequenceClassification` with renamed weights, against
`rerankrt.testing.reference_jina_v2` (float64, unpadded, written from the remote code's math) on a tiny
random-weight checkpoint of the real layout (`rerankrt.testing.tiny_jina_v2`); then export -> verify -> serve on
ONNX Runtime, OpenVINO and torch. The authors' code itself is run by tests/test_jina_v2_remote_code.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from rerankrt.errors import UnsupportedModelError
from rerankrt.families import CrossEncoderFamily, detect_family
from rerankrt.families.base import run_torch
from rerankrt.families.jina_v2 import JinaV2Family, load_jina_v2
from rerankrt.testing.reference import random_text
from rerankrt.testing.reference_jina_v2 import jina_v2_reference_logits
from rerankrt.testing.tiny_jina_v2 import build_tiny_jina_v2

BACKENDS = ("onnxruntime", "openvino", "torch")


@pytest.fixture(scope="module")
def jina_dir(tmp_path_factory):
    return build_tiny_jina_v2(tmp_path_factory.mktemp("jina") / "tiny-jina-v2")


def pairs(seed: int) -> tuple[str, list[str]]:
    """A query and documents from one word to past the model's 1024 tokens (padded batches, pairs past 512)."""
    rng = np.random.default_rng(seed)
    sizes = [(1, 3), (40, 60), (300, 400), (500, 600), (900, 1000), (5, 20)]
    return random_text(rng, 2, 8), [random_text(rng, lo, hi) for lo, hi in sizes]


def encoded_batch(model_dir, query, documents, max_length=None):
    encoder = JinaV2Family().load_encoder(model_dir, max_length=max_length)
    return encoder.collate(encoder.encode(query, documents))


def test_recognised_as_jina_v2_not_as_a_plain_cross_encoder(jina_dir):
    family, recognition = detect_family(jina_dir)
    assert isinstance(family, JinaV2Family) and "flash-attention remote code" in recognition.reason
    config = json.loads((jina_dir / "config.json").read_text())
    assert CrossEncoderFamily.recognise(config, jina_dir) is None
    plain = {k: v for k, v in config.items() if k != "auto_map"}  # transformers' own XLM-R: a cross-encoder's
    assert JinaV2Family.recognise(plain, jina_dir) is None and CrossEncoderFamily.recognise(plain, jina_dir)
    hub_form = config | {"auto_map": {"AutoModelForSequenceClassification": "jinaai/x--" + config["auto_map"][
        "AutoModelForSequenceClassification"]}}  # fmt: skip
    assert JinaV2Family.recognise(hub_form, jina_dir) and CrossEncoderFamily.recognise(hub_form, jina_dir) is None
    assert JinaV2Family.recognise(config | {"id2label": {"0": "a", "1": "b"}}, jina_dir) is None


def test_the_encoder_takes_the_1024_tokens_the_positions_hold(jina_dir):
    encoder = JinaV2Family().load_encoder(jina_dir)
    assert encoder.max_length == 1024 and encoder.input_names == ("input_ids", "attention_mask")
    with pytest.raises(UnsupportedModelError, match="max_length 1025 exceeds"):
        JinaV2Family().load_encoder(jina_dir, max_length=1025)


@pytest.mark.parametrize("seed", [0, 1])
def test_native_equals_the_plain_reference_on_padded_mixed_lengths(jina_dir, seed):
    query, documents = pairs(seed)
    batch = encoded_batch(jina_dir, query, documents)
    lengths = batch["attention_mask"].sum(axis=1)
    assert lengths.min() < 64 and 512 < lengths.max() == 1024
    expected = jina_v2_reference_logits(jina_dir, batch["input_ids"], batch["attention_mask"])
    np.testing.assert_allclose(run_torch(JinaV2Family().load_scorer(jina_dir), batch), expected, atol=1e-4, rtol=0)
    assert np.ptp(expected) > 1e-2  # the pairs score differently: the check can fail


def test_tanh_gelu_variant_equals_the_reference(tmp_path):
    model_dir = build_tiny_jina_v2(tmp_path / "tanh", seed=2, hidden_act="gelu_new")
    query, documents = pairs(3)
    batch = encoded_batch(model_dir, query, documents, max_length=600)
    expected = jina_v2_reference_logits(model_dir, batch["input_ids"], batch["attention_mask"])
    np.testing.assert_allclose(run_torch(JinaV2Family().load_scorer(model_dir), batch), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"position_embedding_type": "rotary"}, "position_embedding_type"),
        ({"last_layer_subset": True}, "last_layer_subset"),
        ({"hidden_size": "wide"}, "not a number"),
        ({"intermediate_size": 40}, "do not fit config.json"),
        ({"num_hidden_layers": 3}, "roberta.encoder.layers.2"),
    ],
)
def test_unported_or_mismatched_configs_are_refused(tmp_path, changes, message):
    model_dir = build_tiny_jina_v2(tmp_path / "m")
    config = json.loads((model_dir / "config.json").read_text()) | changes
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModelError, match=message):
        load_jina_v2(model_dir)


@pytest.fixture(scope="module")
def jina_artifact(jina_dir, tmp_path_factory):
    from rerankrt.export import export_model

    artifact = tmp_path_factory.mktemp("jina-artifact") / "artifact"
    export_model(str(jina_dir), artifact)
    return artifact


@pytest.mark.integration
def test_exported_and_verified(jina_artifact):
    manifest = json.loads((jina_artifact / "manifest.json").read_text())
    assert manifest["family"] == "jina-reranker-v2" and manifest["max_length"] == 1024
    parity = json.loads((jina_artifact / "parity.json").read_text())
    assert parity["passed"] and parity["max_abs_diff"] <= 1e-4


@pytest.mark.integration
@pytest.mark.parametrize("backend", BACKENDS)
def test_served_logits_equal_the_reference(jina_dir, jina_artifact, backend):
    from rerankrt import Reranker

    path = jina_dir if backend == "torch" else jina_artifact
    with Reranker.load(str(path), backend=backend, max_batch_size=4, threads=1) as reranker:
        for seed in (4, 5):
            query, documents = pairs(seed)
            batch = encoded_batch(jina_dir, query, documents)
            expected = jina_v2_reference_logits(jina_dir, batch["input_ids"], batch["attention_mask"])
            np.testing.assert_allclose(reranker.logits(query, documents), expected, atol=1e-4, rtol=0)
