"""Late interaction (ColBERT): recognition, PyLate's encoding, MaxSim against an independent reference (transformers +
the Dense weights, written from PyLate's source), export -> verify -> serve on every CPU backend, the document cache,
and the score the HTTP API answers. The marked test `-m pylate` compares with PyLate itself (docs/development.md)."""

from __future__ import annotations

import json
import string
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from rerankrt.errors import InputError, UnsupportedModelError
from rerankrt.families import detect_family, get_family
from rerankrt.runtime.document_cache import DocumentCache
from rerankrt.runtime.reranker import Scores
from rerankrt.testing.tiny_colbert import PUBLISHED, build_colbert
from rerankrt.testing.tiny_models import CORPUS

TOLERANCE = 1e-4
QUERY = "what is panda? the giant panda, a bear"
QUERIES = [QUERY, "  Panda  ", "Is it a BEAR?"]  # cut to query_length; expanded with [MASK]; whitespace, case


def mixed_documents(seed: int, count: int = 9) -> list[str]:
    """Documents of mixed lengths (empty, short, over max_length), with punctuation for the skiplist, every third
    one with whitespace around it and capitals (what a byte-level BPE and do_lower_case see)."""
    rng = np.random.default_rng(seed)
    words = " ".join(CORPUS).split()
    documents = [" ".join(rng.choice(words, size=int(n))) for n in rng.integers(1, 70, size=count - 1)]
    documents = [f"  {d.title()}\n" if i % 3 == 1 else d for i, d in enumerate(documents)]
    return ["", *documents]


# --- unit tier: configs and tokenizer only -------------------------------------------------------------------


@pytest.fixture(scope="module")
def colbert_dir(tmp_path_factory) -> Path:
    return build_colbert(tmp_path_factory.mktemp("colbert") / "tiny", weights=False)


def test_a_pylate_folder_is_claimed_by_colbert_alone(colbert_dir):
    family, recognition = detect_family(colbert_dir)
    assert family.name == "colbert"
    assert "MaxSim" in recognition.reason and "Dense" in recognition.reason


def test_a_transformer_and_dense_without_colbert_settings_is_not_claimed(colbert_dir, tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    for file in colbert_dir.iterdir():
        if file.is_file():
            (plain / file.name).write_bytes(file.read_bytes())
    modules = json.loads((plain / "modules.json").read_text())
    modules[1]["type"] = "sentence_transformers.models.Dense"  # an ST embedding model may project tokens too
    (plain / "modules.json").write_text(json.dumps(modules))
    (plain / "config_sentence_transformers.json").write_text(json.dumps({"similarity_fn_name": "cosine"}))
    with pytest.raises(UnsupportedModelError, match="no reranker family"):
        detect_family(plain)
    pooled = [*modules, {"idx": 2, "path": "2_Pooling", "type": "sentence_transformers.models.Pooling"}]
    (plain / "modules.json").write_text(json.dumps(pooled))
    (plain / "config_sentence_transformers.json").write_text(json.dumps({"model_type": "ColBERT"}))
    assert get_family("colbert").recognise({}, plain) is None  # pooled: one vector per text, not late interaction
    assert detect_family(plain, forced="colbert")[0].name == "colbert"


@pytest.mark.parametrize("settings", ['[1, 2]', '{"query_length": "32"}', '{"skiplist_words": [1]}',
                                      '{"document_length": 2}'])  # fmt: skip
def test_settings_that_are_not_pylates_are_refused_naming_the_file(settings, colbert_dir, tmp_path):
    folder = tmp_path / "hostile"
    folder.mkdir()
    for file in colbert_dir.iterdir():
        if file.is_file():
            (folder / file.name).write_bytes(file.read_bytes())
    (folder / "config_sentence_transformers.json").write_text(settings)
    with pytest.raises(UnsupportedModelError, match="config_sentence_transformers.json"):
        get_family("colbert").load_encoder(folder)


def test_the_query_is_marked_and_expanded_with_mask_to_query_length(colbert_dir):
    encoder = get_family("colbert").load_encoder(colbert_dir)
    pair = encoder.encode("what is panda?", ["hi"])[0]
    tokenizer = encoder.tokenizer
    ids, mask = pair["query_input_ids"], pair["query_attention_mask"]
    assert len(ids) == 12 and ids[0] == tokenizer.cls_token_id and ids[1] == tokenizer.convert_tokens_to_ids("[Q] ")
    expansion = ids == tokenizer.mask_token_id
    assert expansion.sum() > 0 and not mask[expansion].any()  # not attended to...
    assert pair["query_scored"].all()  # ...but scored
    long = encoder.encode(" ".join(CORPUS), ["hi"])[0]
    assert len(long["query_input_ids"]) == 12 and long["query_input_ids"][-1] == tokenizer.sep_token_id


def test_without_expansion_the_query_scores_its_own_tokens(tmp_path):
    folder = build_colbert(tmp_path / "plain-query", weights=False, expansion=False, attend_to_expansion=True)
    pair = get_family("colbert").load_encoder(folder).encode("what is panda?", ["hi"])[0]
    assert len(pair["query_input_ids"]) < 12 and pair["query_attention_mask"].all() and pair["query_scored"].all()


def test_documents_are_marked_cut_and_skip_punctuation(colbert_dir):
    encoder = get_family("colbert").load_encoder(colbert_dir)
    tokenizer = encoder.tokenizer
    short, long = encoder.encode("q", ["panda, bear.", " ".join(CORPUS)])
    assert short["input_ids"][1] == tokenizer.convert_tokens_to_ids("[D] ")
    punctuation = np.isin(short["input_ids"], tokenizer.convert_tokens_to_ids(list(string.punctuation)))
    assert punctuation.sum() == 2 and (short["scored"] == ~punctuation).all()
    assert len(long["input_ids"]) == encoder.max_length == 48 and long["input_ids"][-1] == tokenizer.sep_token_id
    with pytest.raises(InputError) as refused:
        encoder.encode("q", ["hi", " ".join(CORPUS)], truncate=False)
    assert refused.value.field == "documents[1]"


def test_texts_are_stripped_and_lower_cased_as_sentence_transformers_tokenizes_them(tmp_path):
    """A byte-level BPE reads surrounding whitespace and case: sentence-transformers strips the text, and lower-cases
    it with sentence_bert_config.json's do_lower_case, before PyLate marks and pads it."""
    folder = build_colbert(tmp_path / "bpe", weights=False, body="modernbert", lower_case=True)
    encoder = get_family("colbert").load_encoder(folder)
    assert encoder.tokenizer(" Panda")["input_ids"] != encoder.tokenizer("panda")["input_ids"]
    spaced, plain = (
        encoder.encode("  What IS a Panda?\n", ["\t A BEAR  ", "  "]),
        encoder.encode("what is a panda?", ["a bear", ""]),
    )
    for got, expected in zip(spaced, plain, strict=True):
        assert got.keys() == expected.keys() and all(np.array_equal(got[k], expected[k]) for k in got)


def test_published_settings_encode_as_pylate_reads_them(tmp_path):
    """answerai-colbert-small-v1's: markers from the vocabulary, no do_query_expansion (PyLate's default, on), and
    a tokenizer.json that pads and truncates by itself (the encoder's own lengths win)."""
    folder = build_colbert(tmp_path / "answerai", weights=False, **PUBLISHED["answerai-colbert-small-v1"])
    assert get_family("colbert").recognise({}, folder) is not None
    encoder = get_family("colbert").load_encoder(folder)
    tokenizer = encoder.tokenizer
    pair, long = encoder.encode("panda", ["a bear", " ".join(CORPUS * 3)])
    assert pair["query_input_ids"][1] == tokenizer.convert_tokens_to_ids("[unused0]") != tokenizer.unk_token_id
    assert len(pair["query_input_ids"]) == 32 and pair["input_ids"][1] == tokenizer.convert_tokens_to_ids("[unused1]")
    assert len(pair["input_ids"]) == 5 and len(long["input_ids"]) == encoder.max_length == 300


def test_a_prefix_missing_from_the_vocabulary_is_refused(colbert_dir, tmp_path):
    folder = tmp_path / "no-marker"
    folder.mkdir()
    for file in colbert_dir.iterdir():
        if file.is_file():
            (folder / file.name).write_bytes(file.read_bytes())
    settings = json.loads((folder / "config_sentence_transformers.json").read_text())
    (folder / "config_sentence_transformers.json").write_text(json.dumps({**settings, "query_prefix": "[QUERY]"}))
    with pytest.raises(UnsupportedModelError, match=r"\[QUERY\]"):
        get_family("colbert").load_encoder(folder)


def test_documents_pad_and_queries_stack_in_a_batch(colbert_dir):
    encoder = get_family("colbert").load_encoder(colbert_dir)
    batch = encoder.collate(encoder.encode("q", ["a b c d e f g", "hi"]))
    assert batch["input_ids"].shape == batch["scored"].shape and batch["input_ids"].shape[0] == 2
    assert not batch["attention_mask"][1, 5:].any() and not batch["scored"][1, 5:].any()
    assert batch["query_input_ids"].shape == (2, 12)


def test_a_similarity_is_its_own_score_raw_or_not():
    maxsim = Scores(np.array([3.5, -1.25], dtype=np.float32), tokens=0, logit_scores=False)
    assert maxsim.values().tolist() == maxsim.values(raw=True).tolist() == [3.5, -1.25]
    assert [r.index for r in maxsim.ranked()] == [0, 1]
    logit = Scores(np.array([0.0], dtype=np.float32), tokens=0)
    assert logit.values().tolist() == [0.5] and logit.values(raw=True).tolist() == [0.0]


def test_the_cache_counts_hits_and_misses_and_evicts_least_recently_used():
    cache = DocumentCache(max_bytes=3 * 64, artifact="a")
    plan = cache.scope("onnxruntime on cpu, fp32, encoder.onnx")
    rows = {key: np.full((4, 4), i, dtype=np.float32) for i, key in enumerate([b"k0", b"k1", b"k2", b"k3"])}
    assert plan.get(b"k0") is None and (cache.hits, cache.misses) == (0, 1)
    for key in [b"k0", b"k1", b"k2"]:
        plan.put(key, rows[key])
    assert plan.get(b"k0") is not None  # k0 is now the most recently used
    plan.put(b"k3", rows[b"k3"])  # over the budget: k1, the least recently used, goes
    assert plan.get(b"k1") is None and plan.get(b"k0") is not None and plan.get(b"k3") is not None
    assert cache.bytes == 3 * 64 <= cache.max_bytes and cache.evictions == 1 and len(cache) == 3
    plan.put(b"huge", np.zeros((100, 4), dtype=np.float32))  # larger than the budget: never kept
    assert plan.get(b"huge") is None and cache.evictions == 1
    with pytest.raises(ValueError):
        plan.get(b"k0")[0, 0] = 1  # what callers share is read-only


def test_different_artifacts_and_plans_never_share_entries():
    first, second = DocumentCache(1 << 20, artifact="sha-a"), DocumentCache(1 << 20, artifact="sha-b")
    value = np.ones((2, 4), dtype=np.float32)
    first.scope("plan").put(b"document", value)
    assert first.scope("plan").get(b"document") is not None
    assert first.scope("another plan").get(b"document") is None
    shared = DocumentCache(1 << 20, artifact="sha-a")
    shared.put(first.scope("plan").namespace, b"document", value)
    assert shared.get(second.scope("plan").namespace, b"document") is None


# --- integration tier: random-weight models, exports, servers -------------------------------------------------


@pytest.fixture(scope="module")
def colbert_model(tmp_path_factory) -> Path:
    return build_colbert(tmp_path_factory.mktemp("colbert-model") / "tiny", seed=3)


@pytest.fixture(scope="module")
def colbert_artifact(colbert_model, tmp_path_factory) -> Path:
    from rerankrt.export import export_model

    out = tmp_path_factory.mktemp("colbert-artifact") / "tiny"
    export_model(str(colbert_model), out)
    return out


def reference_scores(folder: Path, query: str, documents: list[str]) -> np.ndarray:
    from rerankrt.testing.reference_colbert import ReferenceColbert

    return np.asarray(ReferenceColbert(folder).scores(query, documents), dtype=np.float32)


VARIANTS = {
    "expansion": {},
    "no-expansion": {"expansion": False},
    "attend-expansion": {"attend_to_expansion": True},
    "bias": {"bias": True, "dim": 8},
    "modernbert": {"body": "modernbert"},
    "modernbert-lower-case": {"body": "modernbert", "lower_case": True},
    **PUBLISHED,
}


@pytest.mark.integration
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_the_torch_scorer_is_maxsim_on_padded_mixed_lengths(variant, tmp_path):
    from rerankrt.families.base import run_torch

    folder = build_colbert(tmp_path / "model", seed=7, **VARIANTS[variant])
    family = get_family("colbert")
    encoder, scorer = family.load_encoder(folder), family.load_scorer(folder)
    documents = mixed_documents(1)
    for query in QUERIES:
        got = run_torch(scorer, encoder.collate(encoder.encode(query, documents)))
        assert np.abs(got - reference_scores(folder, query, documents)).max() <= TOLERANCE, query


@pytest.mark.integration
def test_the_export_checks_the_encoder_graph(colbert_artifact):
    manifest = json.loads((colbert_artifact / "manifest.json").read_text())
    assert manifest["family"] == "colbert" and list(manifest["graphs"]) == ["encoder"]
    assert manifest["graphs"]["encoder"]["outputs"] == ["token_embeddings"]
    parity = json.loads((colbert_artifact / "parity.json").read_text())
    assert parity["passed"] and parity["max_abs_diff"] <= TOLERANCE


@pytest.mark.integration
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "torch"])
def test_served_scores_equal_the_reference_cached_or_not(backend, colbert_model, colbert_artifact):
    from rerankrt import Reranker

    documents = mixed_documents(2, count=12)
    expected = reference_scores(colbert_model, QUERY, documents)
    with Reranker.load(str(colbert_artifact), backend=backend) as reranker:
        first = reranker.logits(QUERY, documents)
        cache = reranker.document_cache
        hits = cache.hits
        reranker.logits("another query, with the same documents", documents)
        again = reranker.logits(QUERY, documents)
        assert cache.hits - hits == 2 * len(documents)  # torch too: its pipeline runs the scorer's encoder
    assert np.abs(first - expected).max() <= TOLERANCE
    assert np.array_equal(first, again)
    with Reranker.load(str(colbert_artifact), backend=backend, document_cache_bytes=0) as uncached:
        assert uncached.document_cache is None
        assert np.abs(uncached.logits(QUERY, documents) - expected).max() <= TOLERANCE


@pytest.mark.integration
def test_a_modernbert_colbert_serves_on_every_backend(tmp_path):
    """GTE-ModernColBERT's kind: ModernBERT (no token types, local attention shorter than the documents), BPE."""
    from rerankrt import Reranker
    from rerankrt.export import export_model

    model = build_colbert(tmp_path / "model", seed=5, body="modernbert")
    export_model(str(model), tmp_path / "artifact")
    documents = mixed_documents(3)
    expected = reference_scores(model, QUERY, documents)
    for backend in ("onnxruntime", "openvino", "torch"):
        with Reranker.load(str(tmp_path / "artifact"), backend=backend) as reranker:
            assert "token_type_ids" not in reranker.encoder.input_names
            assert np.abs(reranker.logits(QUERY, documents) - expected).max() <= TOLERANCE, backend


@pytest.mark.integration
def test_a_small_budget_evicts_and_scores_stay_the_same(colbert_model, colbert_artifact):
    from rerankrt import Reranker

    documents = mixed_documents(4, count=20)
    expected = reference_scores(colbert_model, QUERY, documents)
    budget = 16 * 4 * 60  # about two documents' embeddings (16 dims, float32)
    with Reranker.load(str(colbert_artifact), backend="onnxruntime", document_cache_bytes=budget) as reranker:
        for _ in range(2):
            assert np.abs(reranker.logits(QUERY, documents) - expected).max() <= TOLERANCE
        cache = reranker.document_cache
        assert cache.evictions > 0 and cache.bytes <= budget


@pytest.mark.integration
def test_two_artifacts_are_cached_apart(colbert_artifact, tmp_path):
    from rerankrt import Reranker
    from rerankrt.export import export_model

    other = build_colbert(tmp_path / "other", seed=11)
    export_model(str(other), tmp_path / "other-artifact")
    documents = ["the same document for both", "and another"]
    with (
        Reranker.load(str(colbert_artifact), backend="onnxruntime") as first,
        Reranker.load(str(tmp_path / "other-artifact"), backend="onnxruntime") as second,
    ):
        assert first.document_cache.artifact != second.document_cache.artifact
        assert not np.allclose(first.logits(QUERY, documents), second.logits(QUERY, documents))
        assert np.abs(second.logits(QUERY, documents) - reference_scores(other, QUERY, documents)).max() <= TOLERANCE


@pytest.mark.integration
def test_the_api_answers_maxsim_and_the_metrics_count_the_cache(colbert_model, colbert_artifact):
    from fastapi.testclient import TestClient

    from rerankrt.server.app import create_app
    from rerankrt.server.settings import ServeSettings

    documents = mixed_documents(5, count=5)
    expected = reference_scores(colbert_model, QUERY, documents)
    with TestClient(create_app(ServeSettings(model_path=str(colbert_artifact)))) as client:
        body = {"query": QUERY, "documents": documents}
        plain = client.post("/v1/rerank", json=body).json()
        raw = client.post("/v1/rerank", json={**body, "raw_scores": True}).json()
        cohere = client.post("/v2/rerank", json=body).json()["results"]
        metrics = client.get("/metrics").text
    assert [r["index"] for r in plain] == list(np.argsort(-expected, kind="stable"))
    for result in plain:
        assert abs(result["score"] - expected[result["index"]]) <= TOLERANCE  # MaxSim itself, not a sigmoid
    assert plain == raw
    assert {r["index"]: r["relevance_score"] for r in cohere} == {r["index"]: r["score"] for r in plain}
    counted = dict(line.split() for line in metrics.splitlines() if line.startswith("rerankrt_doc_cache_"))
    assert float(counted["rerankrt_doc_cache_hits_total"]) >= len(documents)
    assert float(counted["rerankrt_doc_cache_misses_total"]) >= len(documents)
    assert float(counted["rerankrt_doc_cache_bytes"]) > 0


def pylate_problem() -> str | None:
    """Why PyLate cannot run here, or None (1.6.0 pins the sentence-transformers it works with)."""
    try:
        pinned = next(r for r in metadata.requires("pylate") or [] if r.startswith("sentence-transformers"))
    except (metadata.PackageNotFoundError, StopIteration):
        return "pylate is not installed (docs/development.md: the PyLate parity test)"
    wanted, installed = pinned.split("==")[-1].strip(), metadata.version("sentence-transformers")
    if "==" in pinned and installed != wanted:
        return f"pylate pins sentence-transformers {wanted}, {installed} is installed (docs/development.md)"
    return None


@pytest.mark.pylate
@pytest.mark.integration
@pytest.mark.skipif(pylate_problem() is not None, reason=str(pylate_problem()))
@pytest.mark.parametrize("variant", ["tiny", *PUBLISHED])
def test_served_scores_equal_pylate(variant, colbert_model, colbert_artifact, tmp_path):
    """PyLate's own ColBERT.encode (its batches padded, its skiplist and expansion) and colbert_scores, for the tiny
    model and the published checkpoints' settings, on short (expanded), cut, spaced and capitalised queries."""
    import torch
    from pylate import models, scores

    from rerankrt import Reranker
    from rerankrt.export import export_model

    model_dir, artifact = colbert_model, colbert_artifact
    if variant != "tiny":
        model_dir, artifact = build_colbert(tmp_path / "model", seed=9, **PUBLISHED[variant]), tmp_path / "artifact"
        export_model(str(model_dir), artifact)
    documents = mixed_documents(6, count=10)
    model = models.ColBERT(str(model_dir), device="cpu")
    embedded = [torch.as_tensor(d)[None] for d in model.encode(documents, is_query=False)]
    expected = {}
    for query in QUERIES:
        encoded = torch.as_tensor(model.encode([query], is_query=True)[0])[None]
        expected[query] = np.asarray([float(scores.colbert_scores(encoded, d)[0, 0]) for d in embedded])
    for backend in ("onnxruntime", "openvino", "torch"):
        with Reranker.load(str(artifact), backend=backend) as reranker:
            worst = max(float(np.abs(reranker.logits(q, documents) - expected[q]).max()) for q in QUERIES)
        print(f"PyLate parity, {variant}, {backend}: max |score - PyLate's| = {worst:.2e}")
        assert worst <= TOLERANCE, backend
