"""bge-reranker-v2-gemma family: detection, FlagEmbedding's exact token ids, export, and serving parity.

The reference (`rerankrt.testing.reference_gemma`) is FlagEmbedding's `FlagLLMReranker` scoring rewritten from
its code: the full causal LM, `Yes` logit at the last real token, its own input construction and padding.
"""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rerankrt import Reranker  # noqa: E402
from rerankrt.errors import InputError, UnsupportedModelError  # noqa: E402
from rerankrt.export import export_model  # noqa: E402
from rerankrt.families import BgeGemmaFamily, detect_family, family_names  # noqa: E402
from rerankrt.families.base import run_torch  # noqa: E402
from rerankrt.families.bge_gemma import BgeGemmaPairEncoder, prompt_overhead  # noqa: E402
from rerankrt.families.qwen3_yes_no import Qwen3YesNoFamily  # noqa: E402
from rerankrt.testing.reference_gemma import FlagGemmaReference, flag_inputs  # noqa: E402
from rerankrt.testing.tiny_gemma import CORPUS, build_tiny_gemma, build_tiny_llama  # noqa: E402

pytestmark = pytest.mark.integration

WORDS = sorted({w for line in CORPUS for w in line.replace("\n", " ").split()}) + ["Yes", "No", "熊猫", "zebra"]


def random_text(rng: np.random.Generator, low: int, high: int) -> str:
    return " ".join(rng.choice(WORDS, size=int(rng.integers(low, high + 1))))


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory):
    return build_tiny_gemma(tmp_path_factory.mktemp("models") / "tiny-gemma-card")


@pytest.fixture(scope="module")
def reference(gemma_dir):
    return FlagGemmaReference(gemma_dir)


@pytest.fixture(scope="module")
def artifact(gemma_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("artifacts") / "gemma"
    export_model(str(gemma_dir), out)
    return out


# --- (a) detection ------------------------------------------------------------------------------


def test_named_gemma_is_detected_without_flags(gemma_dir):
    family, recognition = detect_family(gemma_dir)
    assert isinstance(family, BgeGemmaFamily)
    assert recognition.family == "bge-gemma-yes"
    assert "BAAI/bge-reranker-v2-gemma" in recognition.reason and "GemmaForCausalLM" in recognition.reason


def test_gemma_without_the_name_is_refused_unless_forced(tmp_path):
    path = build_tiny_gemma(tmp_path / "some-gemma", named=False)
    with pytest.raises(UnsupportedModelError) as info:
        detect_family(path)
    message = str(info.value)
    assert "--family" in message and "GemmaForCausalLM" in message
    assert all(name in message for name in family_names())
    family, recognition = detect_family(path, forced="bge-gemma-yes")
    assert isinstance(family, BgeGemmaFamily) and "forced" in recognition.reason


@pytest.mark.parametrize("named", [False, True])
def test_llama_with_yes_no_tokens_is_refused_unless_forced(tmp_path, named):
    path = build_tiny_llama(tmp_path / "some-llama", named=named)  # named: a card that says bge-reranker-v2-gemma
    with pytest.raises(UnsupportedModelError, match="--family") as info:
        detect_family(path)
    assert "LlamaForCausalLM" in str(info.value)
    family, recognition = detect_family(path, forced="qwen3-yes-no")
    assert isinstance(family, Qwen3YesNoFamily) and "forced" in recognition.reason


# --- (b) the encoder makes FlagEmbedding's ids --------------------------------------------------


def test_default_max_length_is_flagembeddings_512_plus_the_prompt_twice(gemma_dir):
    encoder = BgeGemmaFamily().load_encoder(gemma_dir)
    overhead = prompt_overhead(encoder.tokenizer)
    assert encoder.flag_max_length == 512 and encoder.max_length == 512 + overhead
    assert encoder.query_max_length == 384 and encoder.padding_side == "left"
    assert encoder.input_names == ("input_ids", "attention_mask") and encoder.pad_values["input_ids"] == 0


@pytest.mark.parametrize("flag_max_length", [512, 64, 24])
def test_ids_equal_flagembeddings(gemma_dir, flag_max_length):
    tokenizer = BgeGemmaFamily().load_encoder(gemma_dir).tokenizer
    max_length = flag_max_length + prompt_overhead(tokenizer)
    encoder = BgeGemmaFamily().load_encoder(gemma_dir, max_length=max_length)
    assert encoder.flag_max_length == flag_max_length
    rng = np.random.default_rng(flag_max_length)
    long_doc = "The giant panda is a bear species endemic to China. " * 80
    long_query = "what is the giant panda and where does it live? " * 60
    cases = [
        ("what is panda?", ["hi", "", long_doc, "熊猫是一种生活在中国的熊。", "Yes No 'Yes'"]),
        (long_query, ["hi", long_doc, random_text(rng, 5, 40)]),
        ("", [random_text(rng, 0, 200) for _ in range(6)]),
        (random_text(rng, 20, 120), [random_text(rng, 0, 300) for _ in range(6)]),
    ]
    lengths = []
    for query, docs in cases:
        ours = [pair["input_ids"].tolist() for pair in encoder.encode(query, docs)]
        theirs = flag_inputs(tokenizer, [(query, d) for d in docs], flag_max_length)
        assert ours == theirs
        lengths += [len(ids) for ids in ours]
        assert all(
            pair["attention_mask"].tolist() == [1] * len(pair["input_ids"]) for pair in encoder.encode(query, docs)
        )
    assert max(lengths) <= encoder.max_length
    if flag_max_length >= 64:  # a long query beside a long passage fills the budget exactly
        assert max(lengths) == encoder.max_length


def test_ids_equal_flagembeddings_with_left_truncation(gemma_dir):
    tokenizer = BgeGemmaFamily().load_encoder(gemma_dir).tokenizer
    tokenizer.truncation_side = "left"
    encoder = BgeGemmaPairEncoder(tokenizer, 40 + prompt_overhead(tokenizer))
    query, docs = "what is the giant panda? " * 20, ["Paris is the capital of France. " * 30, "hi"]
    ours = [pair["input_ids"].tolist() for pair in encoder.encode(query, docs)]
    assert ours == flag_inputs(tokenizer, [(query, d) for d in docs], 40)


def test_batch_pads_on_the_left_with_pad(gemma_dir):
    encoder = BgeGemmaFamily().load_encoder(gemma_dir)
    batch = encoder.collate(encoder.encode("what is panda?", ["hi", "Paris is the capital of France. " * 5]))
    assert batch["input_ids"][0, 0] == 0 and batch["attention_mask"][0, 0] == 0
    assert (batch["attention_mask"][:, -1] == 1).all()


# --- (c) export ---------------------------------------------------------------------------------


def test_export_passes_parity_and_folds_the_head(artifact, gemma_dir):
    parity = json.loads((artifact / "parity.json").read_text())
    assert parity["passed"] and parity["max_abs_diff"] <= 1e-4
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["family"] == "bge-gemma-yes"
    vocab = len(BgeGemmaFamily().load_encoder(gemma_dir).tokenizer)
    model = onnx.shape_inference.infer_shapes(onnx.load(str(artifact / "model.onnx")))
    shapes = {
        v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]
        for v in list(model.graph.value_info) + list(model.graph.output)
    }
    projections = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm")]
    assert projections
    for node in projections:
        assert node.output[0] in shapes, f"no inferred shape for {node.name}"
        assert shapes[node.output[0]][-1] != vocab, f"{node.name} projects onto the vocabulary"
    initializers = [list(i.dims) for i in model.graph.initializer]
    assert sum(dims == [vocab, 64] for dims in initializers) == 1  # the embedding table, once
    assert not any(dims[-1:] == [vocab] for dims in initializers)  # no transposed LM head


# --- (d) served ---------------------------------------------------------------------------------


def test_padded_batches_equal_the_reference(artifact, gemma_dir, reference):
    """The graph and the torch scorer on left-padded mixed-length batches, against FlagEmbedding's scoring."""
    family = BgeGemmaFamily()
    encoder = family.load_encoder(artifact)
    rng = np.random.default_rng(11)
    query, docs = random_text(rng, 2, 30), [random_text(rng, 0, 400) for _ in range(10)]
    batch = encoder.collate(encoder.encode(query, docs))
    assert (batch["attention_mask"] == 0).any()
    session = ort.InferenceSession(str(artifact / "model.onnx"), providers=["CPUExecutionProvider"])
    graph = session.run(None, {name: batch[name] for name in ("input_ids", "attention_mask")})[0].reshape(-1)
    scorer = family.load_scorer(gemma_dir)
    expected = reference.score(query, docs, max_length=encoder.flag_max_length, batch_size=3)
    np.testing.assert_allclose(graph, expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(run_torch(scorer, batch), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("backend", ["onnxruntime", "torch", "torch-plain"])
def test_served_logits_equal_flagembeddings(artifact, gemma_dir, reference, backend):
    path = gemma_dir if backend == "torch-plain" else artifact
    rng = np.random.default_rng(5)
    worst = 0.0
    with Reranker.load(str(path), backend=backend.removesuffix("-plain"), max_batch_size=4) as reranker:
        assert reranker.family.name == "bge-gemma-yes" and reranker.encoder.flag_max_length == 512
        for _ in range(3):
            query = random_text(rng, 1, 25)
            docs = [random_text(rng, 0, int(rng.choice([20, 150, 700]))) for _ in range(7)]
            expected = reference.score(query, docs, batch_size=3)
            logits = reranker.logits(query, docs)
            worst = max(worst, float(np.abs(logits - expected).max()))
            np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)
            ranked = reranker.rerank(query, docs, raw_scores=True)
            assert [r.index for r in ranked] == np.argsort(-expected, kind="stable").tolist()
            assert [r.score for r in ranked] == pytest.approx(sorted(expected, reverse=True), abs=1e-4)
    print(f"{backend}: max |Δlogit| vs FlagEmbedding {worst:.2e}")


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "torch"])
def test_prefix_reuse_equals_flagembeddings(artifact, gemma_dir, reference, backend):
    """The query part ([bos] "A: {query}" "\\n") once per request, each passage after it, through the one decoder
    graph (or module): FlagEmbedding's logits within 1e-4, for one passage, empty ones, and truncated ones."""
    from rerankrt.families.prefix_reuse import DECODER

    rng = np.random.default_rng(8)
    path = gemma_dir if backend == "torch" else artifact
    with Reranker.load(str(path), backend=backend, threads=1) as reranker:
        reuse = reranker.backend.scorer.reuse if backend == "torch" else reranker.backend.run
        if backend != "torch":
            assert set(reranker.backend.sessions) == {DECODER}
        continued = []
        decoder = reuse.decoder
        reuse.decoder = lambda feeds, k, v, present: (
            continued.append(feeds["past_mask"].any()) or decoder(feeds, k, v, present)
        )
        for docs in (
            [random_text(rng, 0, int(rng.choice([20, 150, 700]))) for _ in range(6)],
            [random_text(rng, 3, 40)],
            ["", random_text(rng, 1, 5), ""],
        ):
            query = random_text(rng, 20, 30)  # over MIN_PREFIX_TOKENS with "A: " and bos
            np.testing.assert_allclose(reranker.logits(query, docs), reference.score(query, docs, batch_size=3),
                                       atol=1e-4, rtol=0)  # fmt: skip
        assert any(continued), "no passage continued from its query's keys and values"


# --- (e) refusals -------------------------------------------------------------------------------


def test_instruct_is_refused(artifact):
    encoder = BgeGemmaFamily().load_encoder(artifact)
    with pytest.raises(InputError) as info:
        encoder.encode("q", ["d"], instruct="Find the passage that answers")
    assert info.value.field == "instruct"
    plain = encoder.encode("q", ["d"])[0]["input_ids"].tolist()
    assert encoder.encode("q", ["d"], instruct="")[0]["input_ids"].tolist() == plain  # empty: no instruction
    with Reranker.load(str(artifact)) as reranker, pytest.raises(InputError) as info:
        reranker.logits("q", ["d"], instruct="Find the passage that answers")
    assert info.value.field == "instruct"


def test_truncate_false_refuses_what_flagembedding_would_cut(gemma_dir):
    tokenizer = BgeGemmaFamily().load_encoder(gemma_dir).tokenizer
    encoder = BgeGemmaPairEncoder(tokenizer, 64 + prompt_overhead(tokenizer))
    (fits,) = encoder.encode("what is panda?", ["hi"], truncate=False)
    assert fits["input_ids"].tolist() == encoder.encode("what is panda?", ["hi"])[0]["input_ids"].tolist()
    with pytest.raises(InputError) as info:
        encoder.encode("what is panda?", ["hi", "Paris is the capital of France. " * 30], truncate=False)
    assert info.value.field == "documents[1]"
    with pytest.raises(InputError) as info:
        encoder.encode("what is the giant panda? " * 30, ["hi"], truncate=False)
    assert info.value.field == "query"


def test_chat_template_is_refused(gemma_dir, tmp_path):
    template = tmp_path / "t.jinja"
    template.write_text("{{ messages[0]['content'] }}")
    with pytest.raises(UnsupportedModelError, match="fixed"):
        BgeGemmaFamily().load_encoder(gemma_dir, chat_template=template)
