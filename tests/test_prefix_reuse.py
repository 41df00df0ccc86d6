"""Exact prefix reuse (families.prefix_reuse) for Qwen3-Reranker: the shared prompt once, each document after it,
all through the one decoder graph (one copy of the weights), equal to the model card's code on ONNX Runtime,
OpenVINO and torch, through the Reranker; the switch; older artifacts; the plan."""

import asyncio
import json
import shutil

import numpy as np
import pytest
import torch

from rerankrt.artifact import Graph, load_manifest
from rerankrt.families import Qwen3YesNoFamily
from rerankrt.families.prefix_reuse import DECODER, PREFIX_LENGTH, DecoderModule, past_geometry
from rerankrt.info import collect
from rerankrt.precision import Precision
from rerankrt.runtime import Reranker
from rerankrt.runtime.onnxruntime_backend import OnnxRuntimeBackend
from rerankrt.runtime.reranker import ScoreRequest
from rerankrt.testing.reference import qwen3_card_scores, random_documents, random_text
from tests import fakes
from tests.conftest import QWEN_ARCHS

BACKENDS = ("onnxruntime", "openvino", "torch")
PREFIX, CONTINUATION, PLAIN = "prefix", "continuation", "plain"


def _load(artifact_dirs, model_dirs, arch, backend, **options):
    path = model_dirs[arch] if backend == "torch" else artifact_dirs[arch]
    return Reranker.load(str(path), backend=backend, threads=1, **options)


def _reuse(reranker):
    """The reranker's `PrefixReuse` (the graph backends' pipeline, or the torch scorer's)."""
    backend = reranker.backend
    return backend.scorer.reuse if backend.name == "torch" else backend.run


def _count_calls(reranker) -> dict[str, int]:
    """Decoder calls (each one graph run, or one module call on torch) from now on, by kind: prefixes (present
    keys/values wanted), continuations (a real past), rows run whole (the masked dummy past)."""
    calls = {PREFIX: 0, CONTINUATION: 0, PLAIN: 0}
    reuse = _reuse(reranker)
    decoder = reuse.decoder

    def counted(feeds, keys, values, present):
        kind = PREFIX if present else CONTINUATION if feeds["past_mask"].any() else PLAIN
        calls[kind] += 1
        return decoder(feeds, keys, values, present)

    reuse.decoder = counted
    if reranker.backend.name != "torch":
        assert set(reranker.backend.sessions) == {DECODER}  # one graph, one copy of the weights
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


@pytest.mark.integration
@pytest.mark.parametrize("arch", QWEN_ARCHS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_prefix_reuse_equals_the_model_card(artifact_dirs, model_dirs, arch, backend):
    rng = np.random.default_rng(11)
    rerankers = {}
    for query, docs, instruct, max_length in _cases(rng):
        if max_length not in rerankers:
            rerankers[max_length] = _load(artifact_dirs, model_dirs, arch, backend, max_length=max_length)
        reranker = rerankers[max_length]
        _reuse(reranker).cache.clear()
        calls = _count_calls(reranker)
        _, logit = qwen3_card_scores(model_dirs[arch], query, docs, instruct, max_length)
        np.testing.assert_allclose(reranker.logits(query, docs, instruct), logit, atol=1e-4, rtol=0)
        if len(docs) > 1:
            assert calls[CONTINUATION] >= 1, f"{backend}: the documents did not continue from a shared prefix"
    for reranker in rerankers.values():
        reranker.close()


@pytest.mark.integration
@pytest.mark.parametrize("backend", BACKENDS)
def test_requests_with_different_prefixes_in_one_batch(artifact_dirs, model_dirs, backend):
    """Rows of three requests (one of them a single document) in one batch, left-padded: the two prefixes run in
    one call, each row continues from its own, a lone row runs whole, and a prefix seen before is taken from the
    cache."""
    rng = np.random.default_rng(5)
    family = Qwen3YesNoFamily()
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
    _reuse(reranker).cache.clear()  # the self-check's prefixes: this test counts its own
    calls = _count_calls(reranker)
    np.testing.assert_allclose(reranker.backend.run(batch), expected, atol=1e-4, rtol=0)
    assert calls == {PREFIX: 1, CONTINUATION: 1, PLAIN: 1}
    assert len(_reuse(reranker).cache) == 2
    again = encoder.collate(pairs[:1] + pairs[4:5])  # one row each of requests 0 and 1: only the first is cached
    np.testing.assert_allclose(reranker.backend.run(again), expected[np.argsort(order)][[0, 4]], atol=1e-4, rtol=0)
    assert calls == {PREFIX: 1, CONTINUATION: 2, PLAIN: 2}
    reranker.close()


@pytest.mark.integration
@pytest.mark.parametrize("backend", BACKENDS)
def test_concurrent_requests_batched_together_through_the_reranker(artifact_dirs, model_dirs, backend):
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


@pytest.mark.integration
@pytest.mark.parametrize("backend", BACKENDS)
def test_switch_off_runs_every_pair_whole_with_the_same_scores(artifact_dirs, model_dirs, backend):
    rng = np.random.default_rng(2)
    query, docs = random_text(rng, 2, 8), random_documents(rng, 6, max_words=50)
    on = _load(artifact_dirs, model_dirs, "qwen3", backend)
    off = _load(artifact_dirs, model_dirs, "qwen3", backend, prefix_reuse=False)
    assert not off.encoder.prefix_reuse and PREFIX_LENGTH not in off.encoder.encode(query, docs)[0]
    if backend != "torch":
        assert on.model.plan.graphs == {DECODER: "decoder.onnx"}  # one graph for every row
        assert off.model.plan.graphs == {"scorer": "model.onnx"}  # the decoder graph is not even loaded
        assert set(off.backend.sessions) == {"scorer"}
    calls = _count_calls(on)
    np.testing.assert_allclose(off.logits(query, docs), on.logits(query, docs), atol=1e-4, rtol=0)
    assert calls[PREFIX] == 1 and calls[CONTINUATION] >= 1  # the prompt once, whatever batches the Reranker makes
    on.close()
    off.close()


@pytest.mark.integration
def test_an_artifact_without_the_decoder_graph_still_serves(artifact_dirs, model_dirs, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(artifact_dirs["qwen3"], old)
    manifest = json.loads((old / "manifest.json").read_text())
    file = manifest["graphs"].pop(DECODER)["file"]
    manifest["files"].pop(file)
    (old / file).unlink()
    (old / "manifest.json").write_text(json.dumps(manifest))
    rng = np.random.default_rng(4)
    query, docs = random_text(rng, 2, 8), random_documents(rng, 5, max_words=50)
    with Reranker.load(str(old), backend="onnxruntime") as reranker:
        assert set(reranker.model.plan.graphs) == {"scorer"}
        np.testing.assert_allclose(reranker.logits(query, docs), qwen3_card_scores(model_dirs["qwen3"], query, docs)[1],
                                   atol=1e-4, rtol=0)  # fmt: skip
    plain = OnnxRuntimeBackend(Qwen3YesNoFamily(), artifact_dirs["qwen3"], {"scorer": "model.onnx"})
    encoder = Qwen3YesNoFamily().load_encoder(model_dirs["qwen3"])
    batch = encoder.collate(encoder.encode(query, docs))
    assert PREFIX_LENGTH in batch
    np.testing.assert_allclose(plain.run(batch), qwen3_card_scores(model_dirs["qwen3"], query, docs)[1], atol=1e-4)


def test_prefix_ends_before_the_document_and_is_the_same_for_every_document(tokenizer_dirs):
    encoder = Qwen3YesNoFamily().load_encoder(tokenizer_dirs["qwen3"])
    pairs = encoder.encode("what is panda?", ["The giant panda", "", "hi", "The giant panda is a bear."])
    lengths = {int(pair[PREFIX_LENGTH][0]) for pair in pairs}
    assert len(lengths) == 1
    (length,) = lengths
    prefixes = {pair["input_ids"][:length].tobytes() for pair in pairs}
    assert len(prefixes) == 1
    assert encoder.tokenizer.decode(pairs[0]["input_ids"][:length]).rstrip().endswith("<Document>:")


@pytest.mark.integration
def test_the_masked_dummy_past_gets_exactly_zero_weight(model_dirs):
    """Rows without a past see a one-position past that is masked out: whatever it holds, the logits and present
    keys/values of the real tokens are bit-identical (every real query also sees its own key, so the masked one
    weighs exactly 0)."""
    module = DecoderModule(Qwen3YesNoFamily().load_export_model(model_dirs["qwen3"])).eval()
    layers, heads, head_dim = past_geometry(module.body.config)
    torch.manual_seed(0)
    ids = torch.randint(3, 100, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    shape = (layers, 2, heads, 1, head_dim)
    with torch.inference_mode():
        zero = module(ids, mask, positions, torch.zeros(2, 1, dtype=torch.long), torch.zeros(shape), torch.zeros(shape))
        noise = module(ids, mask, positions, torch.zeros(2, 1, dtype=torch.long), 1e3 * torch.randn(shape),
                       1e3 * torch.randn(shape))  # fmt: skip
    assert torch.equal(zero[0], noise[0])
    real = mask.bool()  # padded positions see nothing real, so they average every key: masked anyway
    for a, b in zip(zero[1:], noise[1:], strict=True):
        assert torch.equal(a.permute(1, 3, 0, 2, 4)[real], b.permute(1, 3, 0, 2, 4)[real])


@pytest.mark.integration
def test_export_verifies_both_serving_sets(artifact_dirs):
    manifest = load_manifest(artifact_dirs["qwen3"])
    assert {role: g.file for role, g in manifest.graphs.items()} == {"scorer": "model.onnx", DECODER: "decoder.onnx"}
    parity = json.loads((artifact_dirs["qwen3"] / "parity.json").read_text())
    assert parity["passed"] and "(model.onnx)" in parity["candidate"] and "(decoder.onnx)" in parity["candidate"]


@pytest.mark.integration
def test_openvino_bf16_hint_with_prefix_reuse_passes_the_fidelity_gate(artifact_dirs, model_dirs):
    from rerankrt.export.parity import check_fidelity
    from rerankrt.runtime.machine import Machine
    from rerankrt.runtime.openvino_backend import OpenVinoBackend, import_openvino

    openvino = import_openvino()  # without its telemetry

    family = Qwen3YesNoFamily()
    backend = OpenVinoBackend(family, artifact_dirs["qwen3"], {DECODER: "decoder.onnx"}, 2, Precision.BF16)
    encoder = family.load_encoder(artifact_dirs["qwen3"])
    calls = {"continuation": 0}
    decoder = backend.run.decoder

    def counted(feeds, keys, values, present):
        calls["continuation"] += bool(feeds["past_mask"].any())
        return decoder(feeds, keys, values, present)

    backend.run.decoder = counted
    report = check_fidelity(encoder, family.load_scorer(model_dirs["qwen3"]), backend.run, "openvino bf16", "bf16")
    assert report.passed, report.failures
    assert calls["continuation"] > 0  # the documents continued from their prefixes
    if Machine.detect().cpu_bf16:  # really computed in bf16 (fp32 matches within 1e-4)
        assert backend.sessions[DECODER].compiled.get_property("INFERENCE_PRECISION_HINT") == openvino.Type.bf16


FILES = {
    "scorer": "model.onnx",
    "scorer.int8": "model.int8.onnx",
    DECODER: "decoder.onnx",
    f"{DECODER}.int8": "decoder.int8.onnx",
}


@pytest.mark.parametrize(
    ("machine", "artifact", "precision", "reuse", "expected"),
    [
        # ONNX Runtime: the decoder graph only where its scorer would be the fp32 graph
        (fakes.CPU, "int8", None, True, ("int8", {"scorer": "model.int8.onnx"})),  # an artifact without decoder.int8
        (fakes.CPU, "int8+", None, True, ("int8", {DECODER: "decoder.int8.onnx"})),
        (fakes.CPU, "int8+", None, False, ("int8", {"scorer": "model.int8.onnx"})),
        (fakes.OPENVINO_BF16, "int8+", None, True, ("int8", {DECODER: "decoder.int8.onnx"})),
        (fakes.CPU, "int8", Precision.FP32, True, ("fp32", {DECODER: "decoder.onnx"})),
        (fakes.CPU, "int8", Precision.FP32, False, ("fp32", {"scorer": "model.onnx"})),
        (fakes.CPU, "bf16", None, True, ("fp32", {DECODER: "decoder.onnx"})),  # ONNX Runtime runs fp32 graphs
        # OpenVINO always runs fp32 graphs (bf16 is a compile hint): the decoder graph for bf16 too
        (fakes.OPENVINO_BF16, "bf16", None, True, ("bf16", {DECODER: "decoder.onnx"})),
        (fakes.OPENVINO_BF16, "bf16", None, False, ("bf16", {"scorer": "model.onnx"})),
        (fakes.OPENVINO_NO_BF16, "fp32", None, True, ("fp32", {DECODER: "decoder.onnx"})),
    ],
)
def test_plan_loads_the_decoder_graph_alone_with_reuse_and_the_scorer_alone_without(
    machine, artifact, precision, reuse, expected
):
    roles = {  # "int8+": an int8 artifact with the decoder's int8 variant too
        "int8": ["scorer", "scorer.int8", DECODER],
        "int8+": list(FILES),
    }.get(artifact, ["scorer", DECODER])
    graphs = {role: Graph(file=FILES[role], inputs=["input_ids"], outputs=["logits"]) for role in roles}
    manifest = fakes.manifest(precision=artifact.rstrip("+"), family="qwen3-yes-no").model_copy(
        update={"graphs": graphs}
    )
    backend = "openvino" if machine.openvino else "onnxruntime"
    plan = fakes.first(manifest, machine, backend=backend, precision=precision, prefix_reuse=reuse)
    assert (plan.precision.value, dict(plan.graphs)) == expected


def test_plan_without_the_decoder_graph_serves_the_scorer_alone_with_reuse_on():
    manifest = fakes.manifest(family="qwen3-yes-no", roles=("scorer",))
    assert fakes.first(manifest, fakes.OPENVINO_BF16, backend="openvino").graphs == {"scorer": "model.onnx"}
    assert fakes.first(manifest, fakes.CPU, backend="onnxruntime").graphs == {"scorer": "model.onnx"}


@pytest.fixture(scope="module")
def int8_artifact(model_dirs, tmp_path_factory):
    from rerankrt.export import export_model

    out = tmp_path_factory.mktemp("int8") / "qwen3"
    export_model(str(model_dirs["qwen3"]), out, precision="int8", accept_fidelity_loss=True)
    return out


@pytest.mark.integration
def test_int8_artifact_has_a_gated_decoder_variant_that_serves_with_reuse(int8_artifact, model_dirs):
    """The decoder graph gets the int8 variant the scorer's passed with, gated as served (prefix reuse on); an int8
    serving then reuses prefixes on it, within the gate's rank thresholds of the fp32 card."""
    manifest = load_manifest(int8_artifact)
    assert {"decoder.int8", "scorer.int8"} <= set(manifest.graphs)
    fidelity = json.loads((int8_artifact / "fidelity.json").read_text())
    reuse = fidelity["prefix_reuse"]
    assert reuse["role"] == DECODER and reuse["passed"] and reuse["method"] == fidelity["method"], reuse
    shown = collect(int8_artifact)["artifact"]["fidelity"]["prefix_reuse"]  # rerankrt info ARTIFACT
    assert shown["passed"] and shown["role"] == DECODER and "max_score_diff" in shown
    rng = np.random.default_rng(7)
    query, docs = random_text(rng, 3, 10), random_documents(rng, 8, max_words=60)
    card = np.asarray(qwen3_card_scores(model_dirs["qwen3"], query, docs)[0])
    for backend in ("onnxruntime", "openvino"):
        reranker = Reranker.load(str(int8_artifact), backend=backend, threads=1)
        plan = reranker.model.plan
        assert plan.graphs == {DECODER: "decoder.int8.onnx"} and plan.precision == Precision.INT8
        calls = _count_calls(reranker)
        scores = reranker.rerank(query, docs)
        assert calls[CONTINUATION] >= 1, f"{backend}: the documents did not continue from a shared prefix"
        got = np.array([s.score for s in sorted(scores, key=lambda s: s.index)])
        assert np.argmax(got) == np.argmax(card), (backend, got, card)
        assert np.max(np.abs(got - card)) < 0.1, backend  # the gate's max |Δscore|


@pytest.mark.integration
def test_a_decoder_variant_that_misses_the_gate_is_not_shipped(artifact_dirs, model_dirs, tmp_path):
    """The scorer's variant is the artifact's; a decoder variant that misses is dropped with the reason (int8
    servings then run whole prompts), its files gone."""
    from rerankrt.export.onnx_graph import describe_graph
    from rerankrt.export.parity import FidelityThresholds
    from rerankrt.export.variants import build_prefix_reuse_variant, prefix_reuse_source
    from rerankrt.runtime.self_check import GoldenSet

    family = Qwen3YesNoFamily()
    folder = tmp_path / "qwen3"
    shutil.copytree(artifact_dirs["qwen3"], folder)
    roles = list(load_manifest(folder).graphs)
    assert prefix_reuse_source(family, roles) == (DECODER, DECODER)
    impossible = FidelityThresholds(max_score_diff=0.0, min_top1_agreement=1.0, min_top3_agreement=1.0, max_swap_rate=0)
    golden = GoldenSet.read(folder / "golden.json")
    graph, report = build_prefix_reuse_variant(
        Precision.INT8, "blockwise", family, family.load_export_model(model_dirs["qwen3"]),
        family.load_encoder(folder), folder, describe_graph(folder, ["decoder.onnx"]), golden,
        role=DECODER, thresholds=impossible,
    )  # fmt: skip
    assert graph is None and report["passed"] is False and "ranks too differently" in report["dropped"]
    assert not list(folder.glob("decoder.int8*"))


@pytest.mark.integration
def test_a_bf16_export_gates_openvinos_bf16_hint_on_the_decoder_graph(model_dirs, tmp_path):
    """bf16 has no graph: what bf16 plans run with prefix reuse is OpenVINO's hint on decoder.onnx, gated where the
    CPU computes bf16 (else said not checked); the torch bf16 path is the scorer's report, not checked twice."""
    from rerankrt.export import export_model
    from rerankrt.runtime.machine import Machine

    out = tmp_path / "bf16"
    export_model(str(model_dirs["qwen3"]), out, precision="bf16", accept_fidelity_loss=True)
    reuse = json.loads((out / "fidelity.json").read_text())["prefix_reuse"]
    assert reuse["role"] == DECODER
    if Machine.detect().cpu_bf16:
        assert reuse["candidate"] == "openvino bf16 hint on decoder.onnx, cpu", reuse
        assert reuse["method"] == "openvino bf16 hint" and reuse["passed"], reuse
    else:
        assert reuse["passed"] is None and "OpenVINO computes it in fp32 here" in reuse["not_checked"]
