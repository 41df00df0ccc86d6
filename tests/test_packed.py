"""Padding-free packed batches and multi-item scoring (families.packed), CUDA-graph buckets (runtime.cuda_graphs):
the streams' layout, the attention rule (dense and FlexAttention alike), bucket selection, padding to a bucket, the
eager fallback, one compilation per bucket, the plan; and on tiny models of every family it applies to, packed logits
against padded ones and multi-item logits against whole prompts, fp32 within 1e-4."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rerankrt.families import get_family
from rerankrt.families.base import ClassifierLogitScorer, run_torch
from rerankrt.families.packed import (
    PAD_GROUP,
    PREFIX_LENGTH,
    PackedScorer,
    additive_mask,
    allowed,
    block_mask,
    pack,
    pack_multi_item,
    pad_stream,
)
from rerankrt.runtime.cuda_graphs import GraphBuckets, bucket_sizes
from rerankrt.runtime.plan import Request, ServingPlan, plan_serving
from rerankrt.testing.reference import random_text
from tests.fakes import CPU, GPU

TOLERANCE = 1e-4


def _batch(rows: list[list[int]], left: bool = False, types: bool = False) -> dict[str, np.ndarray]:
    width = max(len(r) for r in rows)
    ids = np.zeros((len(rows), width), dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, span], mask[i, span] = row, 1
    batch = {"input_ids": ids, "attention_mask": mask}
    if types:
        batch["token_type_ids"] = (ids >= 100).astype(np.int64) * mask
    return batch


# --- layout ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("left", [False, True])
def test_pairs_pack_back_to_back_with_their_own_positions_types_and_reads(left):
    rows = [[1, 2, 3], [4, 5, 100, 101, 102], [6]]
    (stream,) = pack(_batch(rows, left, types=True), budget=100, position_offset=2)
    # longest first: row 1, row 0, row 2; positions restart per pair from the offset
    assert stream.input_ids.tolist() == [4, 5, 100, 101, 102, 1, 2, 3, 6]
    assert stream.position_ids.tolist() == [2, 3, 4, 5, 6, 2, 3, 4, 2]
    assert stream.token_type_ids.tolist() == [0, 0, 1, 1, 1, 0, 0, 0, 0]
    assert stream.group.tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 2]
    assert stream.reads.tolist() == [0, 5, 8] and stream.rows.tolist() == [1, 0, 2]  # first tokens
    (last,) = pack(_batch(rows, left), budget=100, read_last=True)
    assert last.reads.tolist() == [4, 7, 8] and last.token_type_ids is None


def test_streams_hold_at_most_the_budget_and_a_longer_pair_gets_its_own():
    rows = [list(range(1, n + 1)) for n in (9, 3, 4, 2, 12, 1)]
    streams = pack(_batch(rows), budget=8)
    assert [len(s) for s in streams] == [
        12,
        9,
        4 + 3,
        2 + 1,
    ]  # longest first, a stream closed when the next would not fit
    assert all(len(s) <= 8 for s in streams if len(s.rows) > 1)
    assert sorted(r for s in streams for r in s.rows.tolist()) == list(range(6))


def test_multi_item_groups_share_one_prefix_and_positions_continue_from_it():
    prefix = [7, 8, 9]
    rows = [prefix + [1, 2], [5, 5, 5, 5], prefix + [3], prefix + [4, 4, 4]]
    batch = _batch(rows, left=True)
    batch[PREFIX_LENGTH] = np.asarray([3, 2, 3, 3])  # row 1 has a prefix of its own: run whole
    (stream,) = pack_multi_item(batch, budget=100, min_prefix=1)
    assert stream.input_ids.tolist() == [7, 8, 9, 4, 4, 4, 1, 2, 3, 5, 5, 5, 5]
    assert stream.position_ids.tolist() == [0, 1, 2, 3, 4, 5, 3, 4, 3, 0, 1, 2, 3]
    assert stream.segment.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 3, 1, 1, 1, 1]
    assert stream.group.tolist() == [0] * 9 + [1] * 4
    assert stream.reads.tolist() == [5, 7, 8, 12] and stream.rows.tolist() == [3, 0, 2, 1]


def test_multi_item_chunks_a_long_group_repeating_its_prefix():
    prefix = [7, 8, 9, 10]
    rows = [prefix + [i] * n for i, n in zip(range(1, 6), (5, 4, 3, 2, 1), strict=True)]
    batch = _batch(rows)
    batch[PREFIX_LENGTH] = np.full(5, 4)
    streams = pack_multi_item(batch, budget=12, min_prefix=1)
    assert [len(s) for s in streams] == [4 + 5, 4 + 4 + 3, 4 + 2 + 1]  # items longest first, each chunk in budget
    assert all(s.input_ids[:4].tolist() == prefix for s in streams)
    assert sorted(r for s in streams for r in s.rows.tolist()) == list(range(5))


def test_short_shared_prefixes_run_whole():
    rows = [[7, 8, 1], [7, 8, 2]]
    batch = _batch(rows)
    batch[PREFIX_LENGTH] = np.asarray([2, 2])
    (stream,) = pack_multi_item(batch, budget=100, min_prefix=3)
    assert stream.group.tolist() == [0, 0, 0, 1, 1, 1] and stream.position_ids.tolist() == [0, 1, 2, 0, 1, 2]


# --- the attention rule ----------------------------------------------------------------------------------------------


def test_a_token_sees_its_own_item_and_its_prefix_only():
    group = torch.tensor([0, 0, 0, 0, 1, PAD_GROUP])
    segment = torch.tensor([0, 1, 2, 2, 1, 0])
    expected = [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 0, 1, 0, 0, 0],
        [1, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 0],
        [0, 0, 0, 0, 0, 1],
    ]
    assert allowed(group, segment, causal=True).int().tolist() == expected
    both_ways = allowed(group, segment, causal=False).int().tolist()
    assert both_ways[2] == [1, 0, 1, 1, 0, 0] and both_ways[0] == [1, 0, 0, 0, 0, 0]


@pytest.mark.parametrize("causal", [False, True])
def test_flex_attention_block_mask_computes_what_the_dense_mask_does(causal):
    """The CUDA path's BlockMask against the dense mask, through torch's own kernels (flex eagerly on CPU)."""
    from torch.nn.attention.flex_attention import flex_attention

    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 60, size=9)
    group = torch.from_numpy(np.repeat(np.arange(9) // 3, lengths))
    segment = torch.from_numpy(np.repeat(np.arange(9) % 3, lengths))
    group = torch.nn.functional.pad(group, (0, 512 - len(group)), value=PAD_GROUP)
    segment = torch.nn.functional.pad(segment, (0, 512 - len(segment)), value=0)
    q, k, v = (torch.randn(1, 2, 512, 8, generator=torch.Generator().manual_seed(i)) for i in range(3))
    dense = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=additive_mask(group, segment, causal, torch.float32)
    )
    flex = flex_attention(q, k, v, block_mask=block_mask(group, segment, causal))
    assert (flex - dense).abs().max() < 1e-5


# --- buckets ----------------------------------------------------------------------------------------------------------


class _Mixer(torch.nn.Module):
    """A stand-in packed module: each token's value is a sum over the keys it may see (padding must not leak)."""

    causal = True

    def forward(self, input_ids, position_ids, group, segment, token_type_ids=None):
        seen = allowed(group, segment, self.causal).float()
        return seen @ (input_ids[0].float() * 10 + position_ids[0].float())


def _stream(tokens: int, seed: int) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.choice(np.arange(1, tokens), size=min(3, tokens - 1), replace=False))
    group = np.zeros(tokens, dtype=np.int64)
    for c in cuts:
        group[c:] += 1
    return {"input_ids": torch.from_numpy(rng.integers(1, 50, size=(1, tokens))),
            "position_ids": torch.arange(tokens)[None], "group": torch.from_numpy(group)[None],
            "segment": torch.ones((1, tokens), dtype=torch.long)}  # fmt: skip


def test_bucket_sizes_cover_the_budget():
    assert bucket_sizes(16384) == (256, 512, 1024, 2048, 4096, 8192, 16384)
    assert bucket_sizes(1000) == (256, 512, 1024) and bucket_sizes(10) == (256,)


def test_streams_run_padded_to_their_bucket_compiled_once_each_and_longer_ones_eagerly():
    module, compiled_shapes = _Mixer(), []

    def fake_compile(m):
        def run(**tensors):
            compiled_shapes.append(tensors["input_ids"].shape[1])
            return m(**tensors)

        return run

    runner = GraphBuckets(module, (8, 16, 32), compile=fake_compile)
    assert [runner.bucket(n) for n in (1, 8, 9, 32, 33)] == [8, 8, 16, 32, None]
    for seed, tokens in enumerate([5, 12, 7, 16, 30, 11, 40, 3]):
        tensors = _stream(tokens, seed)
        got = runner(tensors)
        assert got.shape == (tokens,) and torch.equal(got, module(**tensors))  # padding never reaches a real token
    assert compiled_shapes == [8, 16, 8, 16, 32, 16, 8]  # every call in its bucket's shape; 40 ran eagerly
    assert dict(runner.compile_requests) == {8: 1, 16: 1, 32: 1} and runner.eager_runs == 1


def test_warm_up_compiles_each_bucket_once_within_its_bound(caplog):
    compiled = []
    runner = GraphBuckets(_Mixer(), (8, 16), compile=lambda m: compiled.append(m) or m)
    with caplog.at_level("INFO", logger="rerankrt.runtime.cuda_graphs"):
        assert runner.warm_up("cpu", seconds=-1) == []  # the bound spent before the first bucket
        assert runner.warm_up("cpu", seconds=600) == [8, 16]
    assert "compile on first use" in caplog.text and "buckets [8, 16] tokens warmed" in caplog.text
    runner(_stream(12, 0))
    assert len(compiled) == 2 and dict(runner.compile_requests) == {8: 1, 16: 1}


def test_padding_tokens_are_a_group_of_their_own():
    padded = pad_stream(_stream(5, 0), 8)
    assert padded["group"][0, 5:].tolist() == [PAD_GROUP] * 3 and padded["input_ids"].shape == (1, 8)


# --- the plan -------------------------------------------------------------------------------------------------------


def _torch_plan(machine, device, **request) -> ServingPlan:
    candidates = plan_serving(get_family("cross-encoder"), Request(**request), machine, model_ref="/m")
    return next(p for p in candidates if isinstance(p, ServingPlan) and p.device == device)


def test_packed_batches_are_on_for_cuda_off_on_cpu_unless_asked_and_logged_in_the_plan():
    cuda = _torch_plan(GPU, "cuda", max_batch_tokens=4096)
    assert (cuda.packed_tokens, cuda.cuda_graphs) == (4096, True)
    assert "packed streams <= 4096 tokens, CUDA graphs" in cuda.describe()
    assert _torch_plan(GPU, "cuda", cuda_graphs=False).cuda_graphs is False
    assert _torch_plan(GPU, "cuda", packed=False).packed_tokens is None
    cpu = _torch_plan(CPU, "cpu")
    assert (cpu.packed_tokens, cpu.cuda_graphs) == (None, False) and "packed" not in cpu.describe()
    asked = _torch_plan(CPU, "cpu", packed=True)
    assert (asked.packed_tokens, asked.cuda_graphs) == (16384, False)


def test_families_without_a_packed_path_say_why():
    reason = get_family("qwen3-vl-yes-no").packed_module(torch.nn.Identity())
    assert isinstance(reason, str) and "padded" in reason


# --- tiny models: exact against padded batches and whole prompts ------------------------------------------------

ENCODERS = ("xlmr", "bert")
DECODERS = ("qwen3", "qwen3-untied", "gemma", "mxbai", "minicpm")


@pytest.fixture(scope="module")
def tiny_dirs(model_dirs, tmp_path_factory):
    from rerankrt.testing.tiny_gemma import build_tiny_gemma
    from rerankrt.testing.tiny_minicpm import build_tiny_minicpm
    from rerankrt.testing.tiny_mxbai import build_tiny_mxbai

    builders = {"gemma": build_tiny_gemma, "mxbai": build_tiny_mxbai, "minicpm": build_tiny_minicpm}
    return {**model_dirs, **{arch: build(tmp_path_factory.mktemp(arch) / arch) for arch, build in builders.items()}}


def _loaded(tiny_dirs, arch):
    from rerankrt.families import detect_family

    family, _ = detect_family(tiny_dirs[arch])
    encoder = family.load_encoder(tiny_dirs[arch])
    scorer = family.load_scorer(tiny_dirs[arch])
    return family, encoder, scorer


def _pairs(encoder, rng, queries: int = 3):
    pairs = []
    for _ in range(queries):
        documents = [random_text(rng, 1, int(rng.integers(2, 90))) for _ in range(int(rng.integers(1, 7)))]
        pairs += encoder.encode(random_text(rng, 2, 15), [*documents, ""])
    order = rng.permutation(len(pairs))  # rows of several queries interleaved, as the scheduler may batch them
    return [pairs[i] for i in order]


@pytest.mark.integration
@pytest.mark.parametrize("arch", ENCODERS + DECODERS)
@pytest.mark.parametrize("budget", [10**6, 96])
def test_packed_logits_equal_padded_ones(tiny_dirs, arch, budget):
    family, encoder, scorer = _loaded(tiny_dirs, arch)
    module = family.packed_module(scorer)
    rng = np.random.default_rng(hash((arch, budget)) % 2**32)
    for side in ("left", "right") if arch in DECODERS else ("right",):  # a cross-encoder's head reads position 0
        encoder.padding_side = side
        batch = encoder.collate(_pairs(encoder, rng))
        packed = PackedScorer(module, budget)
        got = packed(batch)
        assert np.abs(got - run_torch(scorer, batch)).max() <= TOLERANCE
        if budget < 10**6:
            assert len(packed.last_streams) > 1


@pytest.mark.integration
@pytest.mark.parametrize("arch", DECODERS)
@pytest.mark.parametrize("budget", [10**6, 120])
def test_multi_item_logits_equal_whole_prompts(tiny_dirs, arch, budget):
    family, encoder, scorer = _loaded(tiny_dirs, arch)
    encoder.use_prefix_reuse(True)
    rng = np.random.default_rng(hash((arch, budget, "multi")) % 2**32)
    batch = encoder.collate(_pairs(encoder, rng))
    assert PREFIX_LENGTH in batch
    whole = ClassifierLogitScorer(scorer.classifier)
    reference = run_torch(whole, {k: v for k, v in batch.items() if k != PREFIX_LENGTH})
    packed = PackedScorer(family.packed_module(scorer), budget, multi_item=True)
    assert np.abs(packed(batch) - reference).max() <= TOLERANCE
    if budget == 10**6:  # each prefix ran once
        assert sum(packed.last_streams) < int(batch["attention_mask"].sum())
    else:  # a query's documents chunked into several sequences
        assert len(packed.last_streams) > 1


@pytest.mark.integration
@pytest.mark.parametrize("arch", ["bert", "qwen3"])
def test_graph_buckets_trace_each_bucket_once_and_stay_exact(tiny_dirs, arch):
    """torch.compile over the packed module (a counting backend: every graph dynamo makes, recompiles included)."""
    family, encoder, scorer = _loaded(tiny_dirs, arch)
    module = family.packed_module(scorer)
    graphs = []

    def counting(gm, example_inputs):
        graphs.append(example_inputs[0].shape if example_inputs else None)
        return gm.forward

    runner = GraphBuckets(module, (64, 256), compile=lambda m: torch.compile(m, backend=counting, dynamic=False))
    packed = PackedScorer(module, 256, run_stream=runner)
    rng = np.random.default_rng(3)
    for _ in range(4):
        batch = encoder.collate(_pairs(encoder, rng, queries=1))
        assert np.abs(packed(batch) - run_torch(scorer, batch)).max() <= TOLERANCE
    assert len(graphs) == len(runner.compiled) and dict(runner.compile_requests) == dict.fromkeys(runner.compiled, 1)


@pytest.mark.integration
@pytest.mark.parametrize("arch", ["xlmr", "qwen3"])
def test_the_reranker_serves_packed_batches_on_the_torch_backend(model_dirs, arch):
    from rerankrt.runtime import Reranker

    rng = np.random.default_rng(5)
    query, documents = random_text(rng, 2, 12), [random_text(rng, 1, 80) for _ in range(11)]
    packed = Reranker.load(str(model_dirs[arch]), backend="torch", threads=1, packed_batches=True)
    padded = Reranker.load(str(model_dirs[arch]), backend="torch", threads=1)
    try:
        assert "packed streams" in packed.model.plan.describe() and padded.backend.packed is None
        assert packed.scheduler.max_batch_size == packed.settings.max_batch_tokens  # tokens bound a batch, not pairs
        assert np.abs(packed.logits(query, documents) - padded.logits(query, documents)).max() <= TOLERANCE
    finally:
        packed.close()
        padded.close()


@pytest.mark.integration
@pytest.mark.parametrize("arch", ["xlmr", "qwen3"])
def test_packed_batches_pass_an_artifacts_self_check(artifact_dirs, arch):
    """The torch backend's packed path (multi-item for Qwen3: the golden set's rows carry their prefix) scores the
    artifact's golden set within what the export accepted, judged by the unchanged fidelity rule."""
    from rerankrt.runtime import Reranker

    reranker = Reranker.load(str(artifact_dirs[arch]), backend="torch", threads=1, packed_batches=True)
    try:
        assert reranker.backend.packed is not None and reranker.model.encoder.prefix_reuse == (arch == "qwen3")
        assert reranker.model.self_check is not None and reranker.model.self_check.passed
    finally:
        reranker.close()
