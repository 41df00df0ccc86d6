"""Alibaba-NLP/gte-multilingual-reranker-base (the gte-new family): the native port of the remote
`NewForSequenceClassification` against `rerankrt.testing.reference_gte` (float64, unpadded, written from the remote
code's math), on a tiny random-weight checkpoint of the real layout (`rerankrt.testing.tiny_gte`); then
export -> verify -> serve on ONNX Runtime, OpenVINO and torch. The authors' code itself is run by
tests/test_gte_new_remote_code.py (marker `remote_code`).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rerankrt.errors import UnsupportedModelError
from rerankrt.families import CrossEncoderFamily, detect_family, get_family
from rerankrt.families.base import run_torch
from rerankrt.families.gte_new import GteConfig, GteNewFamily, load_gte_new
from rerankrt.testing.reference import random_text
from rerankrt.testing.reference_gte import gte_reference_logits
from rerankrt.testing.tiny_gte import build_tiny_gte

MAX_LENGTH = 1024  # past 512; the tiny model takes 2048 positions
BACKENDS = ("onnxruntime", "openvino", "torch")


@pytest.fixture(scope="module")
def gte_dir(tmp_path_factory):
    return build_tiny_gte(tmp_path_factory.mktemp("gte") / "tiny-gte")


def pairs(seed: int) -> tuple[str, list[str]]:
    """A query and documents from one word to past max_length (padded batches, pairs past 512 tokens)."""
    rng = np.random.default_rng(seed)
    sizes = [(1, 3), (40, 60), (300, 400), (500, 600), (900, 1000), (5, 20)]
    return random_text(rng, 2, 8), [random_text(rng, lo, hi) for lo, hi in sizes]


def encoded_batch(model_dir, query, documents, max_length=MAX_LENGTH):
    encoder = GteNewFamily().load_encoder(model_dir, max_length=max_length)
    return encoder.collate(encoder.encode(query, documents))


def test_recognised_as_gte_new_not_as_a_cross_encoder(gte_dir):
    family, recognition = detect_family(gte_dir)
    assert isinstance(family, GteNewFamily) and "NewForSequenceClassification" in recognition.reason
    config = json.loads((gte_dir / "config.json").read_text())
    assert CrossEncoderFamily.recognise(config, gte_dir) is None
    assert GteNewFamily.recognise(config | {"id2label": {"0": "a", "1": "b"}}, gte_dir) is None
    assert GteNewFamily.recognise(config | {"model_type": "bert"}, gte_dir) is None


def test_the_encoder_is_the_xlmr_pair_template_padded_right(gte_dir):
    encoder = GteNewFamily().load_encoder(gte_dir)
    assert encoder.max_length == 512 and encoder.input_names == ("input_ids", "attention_mask")
    pair = encoder.encode("what is panda?", ["hi"])[0]
    tokens = encoder.tokenizer.convert_ids_to_tokens(pair["input_ids"].tolist())
    assert tokens[0] == "<s>" and tokens.count("</s>") == 3 and tokens[-1] == "</s>"
    assert encoder.padding_side == "right"
    assert GteNewFamily().load_encoder(gte_dir, max_length=2048).max_length == 2048  # the positions it has


@pytest.mark.parametrize("seed", [0, 1])
def test_port_equals_the_plain_reference_on_padded_mixed_lengths(gte_dir, seed):
    query, documents = pairs(seed)
    batch = encoded_batch(gte_dir, query, documents)
    lengths = batch["attention_mask"].sum(axis=1)
    assert lengths.min() < 64 and 512 < lengths.max() == MAX_LENGTH
    logits = run_torch(load_gte_new(gte_dir), batch)
    expected = gte_reference_logits(gte_dir, batch["input_ids"], batch["attention_mask"])
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)
    assert np.ptp(expected) > 1e-2  # the pairs score differently: the check can fail


@pytest.mark.parametrize(
    "changes",
    [
        {"pack_qkv": False},  # q_proj, k_proj, v_proj in the checkpoint
        {"rope_scaling": {"type": "ntk", "factor": 4.0, "mixed_b": 1.5}},  # mixed NTK
        {"rope_scaling": None, "rope_theta": 10000.0},  # plain RoPE
        {"type_vocab_size": 0},
    ],
)
def test_config_variants_equal_the_reference(tmp_path, changes):
    model_dir = build_tiny_gte(tmp_path / "variant", seed=3, **changes)
    query, documents = pairs(2)
    batch = encoded_batch(model_dir, query, documents, max_length=700)
    expected = gte_reference_logits(model_dir, batch["input_ids"], batch["attention_mask"])
    np.testing.assert_allclose(run_torch(load_gte_new(model_dir), batch), expected, atol=1e-4, rtol=0)


def test_ntk_scaling_replaces_every_frequency():
    """The NTK frequencies are in force (the remote code rebuilds its cache at factor x positions at load)."""
    sizes = {"hidden_size": 32, "num_attention_heads": 4, "num_labels": 1}
    scaled = GteConfig.of(sizes | {"rope_scaling": {"type": "ntk", "factor": 8}})
    plain = GteConfig.of(sizes)
    assert scaled.inv_freq()[0] < plain.inv_freq()[0] and scaled.inv_freq()[-1] < plain.inv_freq()[-1]
    torch.testing.assert_close(plain.inv_freq(), 1.0 / 10000 ** (torch.arange(0, 8, 2).float() / 8))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"position_embedding_type": "absolute"}, "position_embedding_type"),
        ({"layer_norm_type": "rms_norm"}, "layer_norm_type"),
        ({"logn_attention_scale": True}, "logn_attention_scale"),
        ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_scaling"),
        ({"num_attention_heads": 5}, "head size"),
        ({"hidden_size": "wide"}, "not a number"),
    ],
)
def test_unported_configs_are_refused_naming_the_field(tmp_path, changes, message):
    model_dir = build_tiny_gte(tmp_path / "m")
    config = json.loads((model_dir / "config.json").read_text()) | changes
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModelError, match=message):
        load_gte_new(model_dir)


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path):
    model_dir = build_tiny_gte(tmp_path / "m")
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps(config | {"intermediate_size": 40}))
    with pytest.raises(UnsupportedModelError, match="do not fit config.json"):
        load_gte_new(model_dir)
    (model_dir / "config.json").write_text(json.dumps(config | {"num_hidden_layers": 3}))
    with pytest.raises(UnsupportedModelError, match="new.encoder.layer.2"):
        load_gte_new(model_dir)


@pytest.fixture(scope="module")
def gte_artifact(gte_dir, tmp_path_factory):
    from rerankrt.export import export_model

    artifact = tmp_path_factory.mktemp("gte-artifact") / "artifact"
    export_model(str(gte_dir), artifact, max_length=MAX_LENGTH)
    return artifact


@pytest.mark.integration
def test_exported_and_verified(gte_artifact):
    manifest = json.loads((gte_artifact / "manifest.json").read_text())
    assert manifest["family"] == "gte-new" and manifest["max_length"] == MAX_LENGTH
    parity = json.loads((gte_artifact / "parity.json").read_text())
    assert parity["passed"] and parity["max_abs_diff"] <= 1e-4


@pytest.mark.integration
@pytest.mark.parametrize("backend", BACKENDS)
def test_served_logits_equal_the_reference(gte_dir, gte_artifact, backend):
    from rerankrt import Reranker

    path = gte_dir if backend == "torch" else gte_artifact
    with Reranker.load(str(path), backend=backend, max_length=MAX_LENGTH, max_batch_size=4, threads=1) as reranker:
        for seed in (4, 5):
            query, documents = pairs(seed)
            batch = encoded_batch(gte_dir, query, documents)
            expected = gte_reference_logits(gte_dir, batch["input_ids"], batch["attention_mask"])
            np.testing.assert_allclose(reranker.logits(query, documents), expected, atol=1e-4, rtol=0)


def test_forced_family_name(gte_dir):
    assert isinstance(get_family("gte-new"), GteNewFamily)
    family, recognition = detect_family(gte_dir, forced="gte-new")
    assert isinstance(family, GteNewFamily) and "forced" in recognition.reason
