"""ModernBERT cross-encoders (Alibaba-NLP/gte-reranker-modernbert-base): a member of the cross-encoder family.

A tiny random-weight `ModernBertForSequenceClassification` of the real architecture (`rerankrt.testing.tiny_modernbert`:
alternating global and 128-token sliding-window attention, rotary positions up to 8192, mean or CLS pooling) is
exported -> verified -> served on ONNX Runtime, OpenVINO and torch, and compared with transformers' own class and
with sentence-transformers' `CrossEncoder` on padded batches whose pairs run from a few tokens to past the sliding
window and past 512 tokens.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rerankrt import Reranker
from rerankrt.export import export_model
from rerankrt.families import CrossEncoderFamily, detect_family
from rerankrt.testing.reference import random_text
from rerankrt.testing.tiny_modernbert import LOCAL_ATTENTION, build_tiny_modernbert

pytestmark = pytest.mark.integration

MAX_LENGTH = 1024  # past 512 and eight sliding windows; the tiny model takes 8192 positions
POOLINGS = ("mean", "cls")
BACKENDS = ("onnxruntime", "openvino", "torch")


@pytest.fixture(scope="module")
def modernbert(tmp_path_factory) -> dict[str, tuple]:
    """pooling -> (model folder, artifact folder exported with max_length 1024)."""
    root = tmp_path_factory.mktemp("modernbert")
    built = {}
    for pooling in POOLINGS:
        model = build_tiny_modernbert(root / f"model-{pooling}", pooling=pooling)
        export_model(str(model), root / f"artifact-{pooling}", max_length=MAX_LENGTH)
        built[pooling] = (model, root / f"artifact-{pooling}")
    return built


def pairs(seed: int) -> tuple[str, list[str]]:
    """A query and documents from one word to far past max_length (pairs under the window, over it, over 512)."""
    rng = np.random.default_rng(seed)
    sizes = [(1, 3), (40, 60), (100, 140), (300, 400), (500, 600), (900, 1000), (5, 20)]
    return random_text(rng, 2, 8), [random_text(rng, lo, hi) for lo, hi in sizes]


def transformers_logits(model_dir, query: str, documents: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """transformers' own ModernBertForSequenceClassification on the tokenizer's padded pairs (cut only_second, as
    the gte-reranker card's snippet does); (logits, each pair's length)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    inputs = tokenizer(
        [query] * len(documents), documents, padding=True, truncation="only_second", max_length=MAX_LENGTH,
        return_tensors="pt",
    )  # fmt: skip
    with torch.no_grad():
        logits = model(**inputs).logits.view(-1).numpy()
    return logits, inputs["attention_mask"].sum(dim=1).numpy()


def test_the_tiny_model_has_the_real_layout(modernbert):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model_dir = modernbert["mean"][0]
    config = json.loads((model_dir / "config.json").read_text())
    assert config["architectures"] == ["ModernBertForSequenceClassification"] and config["id2label"] == {"0": "LABEL_0"}
    assert config["max_position_embeddings"] == 8192 and config["local_attention"] == LOCAL_ATTENTION
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    windows = [layer.attn.local_attention for layer in model.model.layers]
    assert windows == [(-1, -1), (64, 64), (64, 64), (-1, -1)]  # global every 3rd layer, a 128-token window between
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    encoded = tokenizer("what is panda?", "hi")
    assert set(encoded) == {"input_ids", "attention_mask"}
    tokens = tokenizer.convert_ids_to_tokens(encoded["input_ids"])
    assert tokens[0] == "[CLS]" and tokens.count("[SEP]") == 2 and tokens[-1] == "[SEP]"


@pytest.mark.parametrize("pooling", POOLINGS)
def test_detected_as_a_cross_encoder_and_verified_at_export(modernbert, pooling):
    model_dir, artifact = modernbert[pooling]
    family, recognition = detect_family(model_dir)
    assert isinstance(family, CrossEncoderFamily) and "ModernBertForSequenceClassification" in recognition.reason
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["family"] == "cross-encoder" and manifest["max_length"] == MAX_LENGTH
    parity = json.loads((artifact / "parity.json").read_text())
    assert parity["passed"] and parity["max_abs_diff"] <= 1e-4


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_served_logits_equal_transformers(modernbert, pooling, backend):
    """Padded mixed-length batches, pairs from a few tokens to past the window, past 512 and cut at 1024."""
    model_dir, artifact = modernbert[pooling]
    path = model_dir if backend == "torch" else artifact
    with Reranker.load(str(path), backend=backend, max_length=MAX_LENGTH, max_batch_size=4, threads=1) as reranker:
        for seed in (0, 1):
            query, documents = pairs(seed)
            expected, lengths = transformers_logits(model_dir, query, documents)
            assert lengths.min() < LOCAL_ATTENTION < 512 < lengths.max() == MAX_LENGTH
            np.testing.assert_allclose(reranker.logits(query, documents), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("pooling", POOLINGS)
def test_scores_equal_sentence_transformers_cross_encoder(modernbert, pooling):
    """The sentence-transformers CrossEncoder (bench extra) on the same pairs: its sigmoid scores are ours."""
    pytest.importorskip("sentence_transformers", reason="sentence-transformers (the bench extra) is not installed")
    from sentence_transformers import CrossEncoder

    model_dir, artifact = modernbert[pooling]
    query, documents = pairs(2)
    cross_encoder = CrossEncoder(str(model_dir), max_length=MAX_LENGTH, device="cpu")
    expected = cross_encoder.predict([(query, doc) for doc in documents], batch_size=3)
    logits = cross_encoder.predict([(query, doc) for doc in documents], batch_size=3, activation_fn=torch.nn.Identity())
    with Reranker.load(str(artifact), backend="onnxruntime", threads=1) as reranker:
        np.testing.assert_allclose(reranker.logits(query, documents), logits, atol=1e-4, rtol=0)
        scores = {result.index: result.score for result in reranker.rerank(query, documents)}
    np.testing.assert_allclose([scores[i] for i in range(len(documents))], expected, atol=1e-5, rtol=0)
