"""Qwen3-Reranker sequence-classification conversions (family qwen3-seq-cls): recognition, the card's prompt as a
pair, export, and serving parity with transformers' Qwen3ForSequenceClassification on the card's formatted pairs.

The tiny conversion (`rerankrt.testing.tiny_qwen3_seq_cls`) is made from a tiny Qwen3-Reranker as the community
conversions are (one-label head W[yes] - W[no]); the reference is the conversion card's usage, transformers only.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from rerankrt import Reranker
from rerankrt.errors import UnsupportedModelError
from rerankrt.export import export_model
from rerankrt.families import CrossEncoderFamily, Qwen3SeqClsFamily, detect_family, family_names
from rerankrt.families.cross_encoder import PROMPT_CONVERSIONS
from rerankrt.families.prefix_reuse import DECODER
from rerankrt.families.qwen3_seq_cls import ARCHITECTURE
from rerankrt.testing.reference import qwen3_card_scores, random_text
from rerankrt.testing.tiny_models import build_qwen3, model_card
from rerankrt.testing.tiny_qwen3_seq_cls import (
    build_qwen3_seq_cls,
    format_document,
    format_query,
    seq_cls_card_logits,
)

BACKENDS = ("onnxruntime", "openvino", "torch")


@pytest.fixture(scope="module")
def qwen3_files(tmp_path_factory) -> Path:
    """A tiny Qwen3-Reranker's config and tokenizer, no weights, no card (built once: training the tokenizer)."""
    return build_qwen3(tmp_path_factory.mktemp("tokenizers") / "qwen3", weights=False, named=False)


@pytest.fixture
def seq_cls_config(qwen3_files):
    """`make(out, named, labels)`: a weightless folder as a conversion's (config.json says
    Qwen3ForSequenceClassification), for recognition and the encoder."""

    def make(out: Path, named: bool = True, labels: int = 1) -> Path:
        shutil.copytree(qwen3_files, out)
        return _as_seq_cls(out, named, labels)

    return make


def _as_seq_cls(out: Path, named: bool, labels: int) -> Path:
    config = json.loads((out / "config.json").read_text())
    config["architectures"] = [ARCHITECTURE]
    config["id2label"] = {str(i): f"LABEL_{i}" for i in range(labels)}
    (out / "config.json").write_text(json.dumps(config))
    if named:
        model_card(out, "Qwen/Qwen3-Reranker-0.6B")
    return out


# --- recognition (unit) -----------------------------------------------------------------------------------------


def test_a_named_conversion_is_the_prompt_family(tmp_path, seq_cls_config):
    family, recognition = detect_family(seq_cls_config(tmp_path / "conversion"))
    assert isinstance(family, Qwen3SeqClsFamily) and recognition.family == "qwen3-seq-cls"
    assert ARCHITECTURE in recognition.reason and "Qwen/Qwen3-Reranker-0.6B" in recognition.reason
    assert "prompt applies" in recognition.reason


def test_a_folder_named_so_is_recognised_without_a_card(tmp_path, seq_cls_config):
    folder = seq_cls_config(tmp_path / "Qwen3-Reranker-0.6B-seq-cls", named=False)
    assert isinstance(detect_family(folder)[0], Qwen3SeqClsFamily)


def test_an_unnamed_one_is_refused_unless_forced(tmp_path, seq_cls_config):
    folder = seq_cls_config(tmp_path / "some-classifier", named=False)
    with pytest.raises(UnsupportedModelError) as info:
        detect_family(folder)
    message = str(info.value)
    assert f"{ARCHITECTURE} with 1 labels" in message and "--family" in message
    assert all(name in message for name in family_names())
    assert f"exactly one label, but {ARCHITECTURE}" in message and "--family cross-encoder" in message
    family, recognition = detect_family(folder, forced="qwen3-seq-cls")
    assert isinstance(family, Qwen3SeqClsFamily) and "forced" in recognition.reason
    assert isinstance(detect_family(folder, forced="cross-encoder")[0], CrossEncoderFamily)


def test_two_labels_are_no_ones(tmp_path, seq_cls_config):
    with pytest.raises(UnsupportedModelError, match="with 2 labels"):
        detect_family(seq_cls_config(tmp_path / "two", labels=2))


def test_the_cross_encoder_leaves_the_conversions_to_the_prompt_family(tmp_path, seq_cls_config):
    assert ARCHITECTURE in PROMPT_CONVERSIONS
    config = json.loads((seq_cls_config(tmp_path / "conversion") / "config.json").read_text())
    assert CrossEncoderFamily.recognise(config, tmp_path / "conversion") is None


def test_pairs_are_the_cards_formatted_pair_tokens(tmp_path, seq_cls_config):
    """The encoder's ids are the card's (format_queries(q), format_document(d)) tokenized as a pair."""
    folder = seq_cls_config(tmp_path / "conversion")
    encoder = Qwen3SeqClsFamily().load_encoder(folder)
    assert encoder.padding_side == "left" and encoder.input_names == ("input_ids", "attention_mask")
    tokenizer = encoder.tokenizer
    rng = np.random.default_rng(3)
    cases = [
        ("what is panda?", ["hi", "", "熊猫是一种生活在中国的熊。", "yes no\n\nno"], None),
        ("法国首都是哪里？", ["法国的首都是巴黎。", "  spaces  "], "Retrieve passages.\n"),
        (random_text(rng, 1, 20), [random_text(rng, 0, 80) for _ in range(4)], ""),
    ]
    for query, documents, instruct in cases:
        ours = [pair["input_ids"].tolist() for pair in encoder.encode(query, documents, instruct=instruct)]
        instruction = instruct or None  # "" is the default instruction, as for qwen3-yes-no
        theirs = tokenizer([format_query(query, instruction)] * len(documents), [format_document(d) for d in documents])
        assert ours == theirs["input_ids"]


def test_the_logit_names_no_label_tokens(tmp_path, seq_cls_config):
    family = Qwen3SeqClsFamily()
    assert family.label_tokens(family.load_encoder(seq_cls_config(tmp_path / "conversion"))) is None


# --- export and serving (integration) ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def conversion(tmp_path_factory) -> Path:
    return build_qwen3_seq_cls(tmp_path_factory.mktemp("models") / "conversion")


@pytest.fixture(scope="module")
def artifact(conversion, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("artifacts") / "qwen3-seq-cls"
    export_model(str(conversion), out)
    return out


def samples(seed: int) -> tuple[str, list[str]]:
    rng = np.random.default_rng(seed)
    return random_text(rng, 1, 25), [random_text(rng, 0, int(rng.choice([3, 40, 150]))) for _ in range(7)]


@pytest.mark.integration
def test_the_conversion_scores_as_the_original_reranker(conversion):
    """The tiny conversion's head on the card's pairs is the original's logit(yes) - logit(no) (the reference's
    own check), left and right padded alike."""
    query, documents = samples(0)
    left = seq_cls_card_logits(conversion, query, documents, padding_side="left")
    right = seq_cls_card_logits(conversion, query, documents, padding_side="right")
    _, original = qwen3_card_scores(conversion.with_name(conversion.name + ".causal"), query, documents)
    np.testing.assert_allclose(left, right, atol=1e-5, rtol=0)
    np.testing.assert_allclose(left, original, atol=1e-5, rtol=0)


@pytest.mark.integration
def test_export_verifies_both_graphs(artifact):
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["family"] == "qwen3-seq-cls"
    assert {graph["file"] for graph in manifest["graphs"].values()} >= {"model.onnx", "decoder.onnx"}
    parity = json.loads((artifact / "parity.json").read_text())
    assert parity["passed"] and parity["max_abs_diff"] <= 1e-4
    assert (artifact / "reranker_template.jinja").is_file()


@pytest.mark.integration
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reuse", [True, False], ids=["prefix-reuse", "whole"])
def test_served_logits_equal_the_card_left_and_right_padded(conversion, artifact, backend, reuse):
    path = conversion if backend == "torch" else artifact
    with Reranker.load(str(path), backend=backend, prefix_reuse=reuse, max_batch_size=4, threads=1) as reranker:
        assert reranker.family.name == "qwen3-seq-cls" and reranker.encoder.prefix_reuse == reuse
        if backend != "torch":
            assert (DECODER in reranker.model.plan.graphs) == reuse
        for seed, instruct in ((1, None), (2, "Given a question, find the passage that answers it")):
            query, documents = samples(seed)
            logits = reranker.logits(query, documents, instruct=instruct)
            for side in ("left", "right"):
                expected = seq_cls_card_logits(conversion, query, documents, instruct, padding_side=side)
                np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)


@pytest.mark.integration
def test_scores_equal_sentence_transformers_cross_encoder(conversion, artifact):
    """The card's own call: CrossEncoder.predict on the formatted pairs, its default sigmoid, equals our scores."""
    pytest.importorskip("sentence_transformers", reason="sentence-transformers (the bench extra) is not installed")
    from sentence_transformers import CrossEncoder

    query, documents = samples(4)
    cross_encoder = CrossEncoder(str(conversion), device="cpu")
    formatted = [(format_query(query), format_document(doc)) for doc in documents]
    expected = cross_encoder.predict(formatted, batch_size=3)
    logits = cross_encoder.predict(formatted, batch_size=3, activation_fn=torch.nn.Identity())
    with Reranker.load(str(artifact), backend="onnxruntime", threads=1) as reranker:
        np.testing.assert_allclose(reranker.logits(query, documents), logits, atol=1e-4, rtol=0)
        scores = {result.index: result.score for result in reranker.rerank(query, documents)}
    np.testing.assert_allclose([scores[i] for i in range(len(documents))], expected, atol=1e-5, rtol=0)


@pytest.mark.integration
def test_forced_cross_encoder_scores_the_plain_pair(tmp_path):
    """An unnamed conversion is refused; `--family cross-encoder` serves it on the plain tokenizer pair, as
    transformers' class scores that pair."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model_dir = build_qwen3_seq_cls(tmp_path / "plain", named=False)
    with pytest.raises(UnsupportedModelError, match="--family"):
        detect_family(model_dir)
    export_model(str(model_dir), tmp_path / "artifact", family="cross-encoder")
    assert json.loads((tmp_path / "artifact" / "manifest.json").read_text())["family"] == "cross-encoder"
    query, documents = samples(5)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    with torch.no_grad():
        expected = model(**tokenizer([query] * len(documents), documents, padding=True, return_tensors="pt")).logits
    with Reranker.load(str(tmp_path / "artifact"), backend="onnxruntime", threads=1) as reranker:
        np.testing.assert_allclose(reranker.logits(query, documents), expected[:, 0].numpy(), atol=1e-4, rtol=0)
