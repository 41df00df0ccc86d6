"""Exact prefix reuse (families.prefix_reuse) for Qwen3-Reranker: the shared prompt once, each document after it,
equal to the model card's code on ONNX Runtime and torch, through the engine; the switch; older artifacts."""

import asyncio
import json
import shutil

import numpy as np
import pytest

from rerankrt.artifact import Graph
from rerankrt.families import DecoderYesNoFamily
from rerankrt.families.prefix_reuse import CONTINUATION, PREFIX, PREFIX_LENGTH
from rerankrt.precision import Precision
from rerankrt.runtime import Reranker
from rerankrt.runtime.engine import ScoreRequest
from rerankrt.runtime.onnxruntime_backend import OnnxRuntimeBackend
from rerankrt.testing.reference import qwen3_card_scores, random_documents, random_text
from tests import test_plan
from tests.conftest import QWEN_ARCHS

BACKENDS = ("onnxruntime", "torch")


def _load(artifact_dirs, model_dirs, arch, backend, **options):
    path = artifact_dirs[arch] if backend == "onnxruntime" else model_dirs[arch]
    return Reranker.load(str(path), backend=backend, threads=1, **options)


def _count_calls(reranker) -> dict[str, int]:
    """Calls per graph role (ONNX Runtime) or per module (torch), counted from now on."""
    calls = {PREFIX: 0, CONTINUATION: 0, "plain": 0}

    def counted(name, run):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return run(*args, **kwargs)

        return wrapper

    backend = reranker.backend
    if backend.name == "onnxruntime":
        for role, session in backend.sessions.items():
            session.run = counted("plain" if role == "scorer" else role, session.run)
    else:
        reuse = backend.scorer.reuse
        reuse.plain = counted("plain", reuse.plain)
        reuse.prefix = counted(PREFIX, reuse.prefix)
        reuse.continuation = counted(CONTINUATION, reuse.continuation)
    return calls


def _cases(rng):
    """(query, documents, instruct, max_length) covering what prefix reuse must get right."""
    base = random_text(rng, 12, 20)
    words = base.split()
    return [
        (random_text(rng, 2, 10), random_documents(rng, 7, max_words=70), None, 1024),  # mixed lengths
        (random_text(rng, 2, 10), [random_text(rng, 5, 40)], None, 1024),  # one document
        (random_text(rng, 2, 10), [" ".join(words[:3]), base, "", " ".join(words[:8]), ""], None, 1024),
        (random_text(rng, 2, 10), random_documents(rng, 5, max_words=40), "Find the passage about bears", 1024),
        (random_text(rng, 2, 10), ["Paris is the capital of France. " * 40, *random_documents(rng, 3)], None, 160),
    ]


@pytest.mark.parametrize("arch", QWEN_ARCHS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_prefix_reuse_equals_the_model_card(artifact_dirs, model_dirs, arch, backend):
    rng = np.random.default_rng(11)
    rerankers = {}
    for query, docs, instruct, max_length in _cases(rng):
        if max_length not in rerankers:
            rerankers[max_length] = _load(artifact_dirs, model_dirs, arch, backend, max_length=max_length)
        reranker = rerankers[max_length]
        reranker.model.backend.scorer.reuse.cache.clear() if backend == "torch" else None
        calls = _count_calls(reranker)
        _, logit = qwen3_card_scores(model_dirs[arch], query, docs, instruct, max_length)
        np.testing.assert_allclose(reranker.score(query, docs, instruct), logit, atol=1e-4, rtol=0)
        if len(docs) > 1:
            assert calls[CONTINUATION] >= 1, f"{backend}: the documents did not continue from a shared prefix"
    for reranker in rerankers.values():
        reranker.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_requests_with_different_prefixes_in_one_batch(artifact_dirs, model_dirs, backend):
    """Rows of three requests (one of them a single document) in one batch, left-padded: each continues from its
    own prefix, a lone row runs whole, and a prefix seen before is taken from the cache."""
    rng = np.random.default_rng(5)
    family = DecoderYesNoFamily()
    encoder = family.load_encoder(model_dirs["qwen3"])
    requests = [
        (random_text(rng, 2, 6), random_documents(rng, 4, max_words=50), None),
        (random_text(rng, 8, 14), random_documents(rng, 1, max_words=50), None),
        (random_text(rng, 2, 6), random_documents(rng, 3, max_words=50), "Rank passages about cities"),
    ]
    pairs = [pair for query, docs, instruct in requests for pair in encoder.encode(query, docs, instruct)]
    order = rng.permutation(len(pairs))
    batch = encoder.collate([pairs[i] for i in order])
    assert (batch["attention_mask"][:, 0] == 0).any()  # left padding
    expected = np.concatenate([qwen3_card_scores(model_dirs["qwen3"], q, d, i)[1] for q, d, i in requests])[order]
    reranker = _load(artifact_dirs, model_dirs, "qwen3", backend)
    calls = _count_calls(reranker)
    np.testing.assert_allclose(reranker.backend.run(batch), expected, atol=1e-4, rtol=0)
    assert calls == {PREFIX: 2, CONTINUATION: 1, "plain": 1}
    again = encoder.collate(pairs[:1] + pairs[4:5])  # one row each of requests 0 and 1: only the first is cached
    np.testing.assert_allclose(reranker.backend.run(again), expected[np.argsort(order)][[0, 4]], atol=1e-4, rtol=0)
    assert calls == {PREFIX: 2, CONTINUATION: 2, "plain": 2}
    reranker.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_concurrent_requests_batched_together_through_the_engine(artifact_dirs, model_dirs, backend):
    rng = np.random.default_rng(9)
    requests = [(random_text(rng, 2, 8), random_documents(rng, n, max_words=40)) for n in (5, 1, 4)]
    batches = []
    reranker = _load(
        artifact_dirs, model_dirs, "qwen3", backend, batch_wait_ms=300, max_padding_ratio=1.0, on_batch=batches.append
    )

    async def score_all():
        return await asyncio.gather(*(reranker.ascore(ScoreRequest(q, d)) for q, d in requests))

    results = asyncio.run(score_all())
    reranker.close()  # the batch statistics are reported after the results
    assert any(stats.pairs > 5 for stats in batches), batches  # rows of several requests shared a forward pass
    for (query, docs), scores in zip(requests, results, strict=True):
        np.testing.assert_allclose(scores.logits, qwen3_card_scores(model_dirs["qwen3"], query, docs)[1], atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_switch_off_runs_every_pair_whole_with_the_same_scores(artifact_dirs, model_dirs, backend):
    rng = np.random.default_rng(2)
    query, docs = random_text(rng, 2, 8), random_documents(rng, 6, max_words=50)
    on = _load(artifact_dirs, model_dirs, "qwen3", backend)
    off = _load(artifact_dirs, model_dirs, "qwen3", backend, prefix_reuse=False)
    assert not off.encoder.prefix_reuse and PREFIX_LENGTH not in off.encoder.encode(query, docs)[0]
    if backend == "onnxruntime":
        assert set(on.model.plan.graphs) == {"scorer", PREFIX, CONTINUATION}
        assert set(off.model.plan.graphs) == {"scorer"}  # the prefix graphs are not even loaded
    calls = _count_calls(off)
    np.testing.assert_allclose(off.score(query, docs), on.score(query, docs), atol=1e-4, rtol=0)
    assert calls[PREFIX] == calls[CONTINUATION] == 0
    on.close()
    off.close()


def test_an_artifact_without_the_prefix_graphs_still_serves(artifact_dirs, model_dirs, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(artifact_dirs["qwen3"], old)
    manifest = json.loads((old / "manifest.json").read_text())
    for role in (PREFIX, CONTINUATION):
        file = manifest["graphs"].pop(role)["file"]
        manifest["files"].pop(file)
        (old / file).unlink()
    (old / "manifest.json").write_text(json.dumps(manifest))
    rng = np.random.default_rng(4)
    query, docs = random_text(rng, 2, 8), random_documents(rng, 5, max_words=50)
    with Reranker.load(str(old), backend="onnxruntime") as reranker:
        assert set(reranker.model.plan.graphs) == {"scorer"}
        np.testing.assert_allclose(reranker.score(query, docs), qwen3_card_scores(model_dirs["qwen3"], query, docs)[1],
                                   atol=1e-4, rtol=0)  # fmt: skip
    plain = OnnxRuntimeBackend(DecoderYesNoFamily(), artifact_dirs["qwen3"], {"scorer": "model.onnx"})
    encoder = DecoderYesNoFamily().load_encoder(model_dirs["qwen3"])
    batch = encoder.collate(encoder.encode(query, docs))
    assert PREFIX_LENGTH in batch
    np.testing.assert_allclose(plain.run(batch), qwen3_card_scores(model_dirs["qwen3"], query, docs)[1], atol=1e-4)


def test_prefix_ends_before_the_document_and_is_the_same_for_every_document(tokenizer_dirs):
    encoder = DecoderYesNoFamily().load_encoder(tokenizer_dirs["qwen3"])
    pairs = encoder.encode("what is panda?", ["The giant panda", "", "hi", "The giant panda is a bear."])
    lengths = {int(pair[PREFIX_LENGTH][0]) for pair in pairs}
    assert len(lengths) == 1
    (length,) = lengths
    prefixes = {pair["input_ids"][:length].tobytes() for pair in pairs}
    assert len(prefixes) == 1
    assert encoder.tokenizer.decode(pairs[0]["input_ids"][:length]).rstrip().endswith("<Document>:")


@pytest.mark.parametrize(
    ("precision", "reuse", "expected"),
    [
        (None, True, {"scorer"}),  # the int8 artifact's own precision: the int8 scorer alone
        (Precision.FP32, True, {"scorer", PREFIX, CONTINUATION}),
        (Precision.FP32, False, {"scorer"}),
    ],
)
def test_plan_loads_the_prefix_graphs_beside_the_fp32_scorer_only(precision, reuse, expected):
    graphs = {
        role: Graph(file=f"{role}.onnx", inputs=["input_ids"], outputs=["logits"])
        for role in ("scorer", "scorer.int8", PREFIX, CONTINUATION)
    }
    manifest = test_plan.manifest(precision="int8", family="decoder-yes-no").model_copy(update={"graphs": graphs})
    plan = test_plan.first(manifest, test_plan.CPU, backend="onnxruntime", precision=precision, prefix_reuse=reuse)
    if precision is None:
        assert plan.precision == Precision.INT8 and set(plan.graphs) == {"scorer"}
        assert plan.graphs["scorer"] == "scorer.int8.onnx"
    else:
        assert plan.precision == Precision.FP32 and set(plan.graphs) == expected
