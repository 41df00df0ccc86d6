"""mxbai-rerank-v2 family: detection, mxbai-rerank's exact token ids, export, and serving parity.

The reference is the `mxbai-rerank` package itself (`MxbaiRerankV2`, its `prepare_inputs` and `rank`: the full
causal LM, logit("1") - logit("0") at the last position of its own left-padded batches). The tests that need it
skip where it is not installed (it is in the dev extra); the others compare with the full causal LM on the
encoder's ids, which proves the folded head and the serving but not the prompt.
"""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rerankrt import Reranker  # noqa: E402
from rerankrt.errors import InputError, UnsupportedModelError  # noqa: E402
from rerankrt.export import export_model  # noqa: E402
from rerankrt.families import MODEL_LIMITS, Truncation, detect_family, family_names  # noqa: E402
from rerankrt.families.mxbai_v2 import MxbaiPairEncoder, MxbaiV2Family, fixed_length  # noqa: E402
from rerankrt.families.qwen3_yes_no import Qwen3YesNoFamily  # noqa: E402
from rerankrt.testing.tiny_models import CORPUS, build_qwen3  # noqa: E402
from rerankrt.testing.tiny_mxbai import PROMPT_TEXT, build_tiny_mxbai  # noqa: E402

pytestmark = pytest.mark.integration

WORDS = sorted({w for line in CORPUS + PROMPT_TEXT for w in line.split()}) + ["?", "\n", "熊猫", "0", "1", "zebra"]
NEEDS_MXBAI = "mxbai-rerank (the reference: pip install mxbai-rerank==0.1.6, in the dev extra) is not installed"


def random_text(rng: np.random.Generator, low: int, high: int) -> str:
    return " ".join(rng.choice(WORDS, size=int(rng.integers(low, high + 1)))) + str(rng.choice(["", "?", " ", "\n"]))


def mxbai(path, max_length: int | None = None):
    """mxbai-rerank's own reranker on `path`, fp32 on the CPU (its `max_length` when given)."""
    module = pytest.importorskip("mxbai_rerank", reason=NEEDS_MXBAI)
    pytest.importorskip("accelerate", reason=NEEDS_MXBAI)  # mxbai-rerank loads with device_map
    extra = {} if max_length is None else {"max_length": max_length}
    return module.MxbaiRerankV2(str(path), device="cpu", torch_dtype=torch.float32, **extra)


def mxbai_scores(reference, query: str, docs: list[str], instruction: str | None = None) -> np.ndarray:
    """`rank` (its scoring call: length-bucketed batches of 3, left-padded to a multiple of 8), in input order."""
    kwargs = {} if instruction is None else {"instruction": instruction}
    ranked = reference.rank(query, docs, top_k=len(docs), sort=False, return_documents=False, batch_size=3, **kwargs)
    return np.asarray([r.score for r in sorted(ranked, key=lambda r: r.index)])


def unpadded(batch) -> list[list[int]]:
    """The real tokens of each row of a padded batch (mxbai-rerank's `prepare_inputs`)."""
    return [ids[mask.bool()].tolist() for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_mxbai(tmp_path_factory.mktemp("models") / "tiny-mxbai-card")


@pytest.fixture(scope="module")
def artifact(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("artifacts") / "mxbai"
    export_model(str(model_dir), out)
    return out


def causal_lm_scores(model_dir, encoder: MxbaiPairEncoder, query: str, docs: list[str]) -> np.ndarray:
    """The full causal LM's logit("1") - logit("0") at the last position of the encoder's left-padded rows."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    yes, no = MxbaiV2Family().label_tokens(encoder)
    batch = encoder.collate(encoder.encode(query, docs))
    with torch.no_grad():
        logits = model(
            input_ids=torch.from_numpy(batch["input_ids"]), attention_mask=torch.from_numpy(batch["attention_mask"])
        ).logits[:, -1]
    return (logits[:, yes] - logits[:, no]).numpy()


# --- (a) detection ------------------------------------------------------------------------------


def test_named_checkpoint_is_detected_without_flags(model_dir):
    family, recognition = detect_family(model_dir)
    assert isinstance(family, MxbaiV2Family) and recognition.family == "mxbai-rerank-v2"
    assert "mixedbread-ai/mxbai-rerank-base-v2" in recognition.reason and "Qwen2ForCausalLM" in recognition.reason


def test_a_folder_named_large_v2_is_detected(tmp_path):
    path = build_tiny_mxbai(tmp_path / "models--mixedbread-ai--mxbai-rerank-large-v2", named=False)
    assert detect_family(path)[1].family == "mxbai-rerank-v2"


def test_qwen2_without_the_name_is_refused_unless_forced(tmp_path):
    path = build_tiny_mxbai(tmp_path / "some-qwen2", named=False)
    with pytest.raises(UnsupportedModelError) as info:
        detect_family(path)
    message = str(info.value)
    assert "--family" in message and "Qwen2ForCausalLM" in message
    assert all(name in message for name in family_names())
    family, recognition = detect_family(path, forced="mxbai-rerank-v2")
    assert isinstance(family, MxbaiV2Family) and "forced" in recognition.reason


def test_other_architectures_named_mxbai_are_not_claimed(tmp_path):
    path = build_qwen3(tmp_path / "mxbai-rerank-base-v2-qwen3", named=False, weights=False)  # Qwen3, not Qwen2
    with pytest.raises(UnsupportedModelError, match="--family"):
        detect_family(path)
    assert isinstance(detect_family(path, forced="qwen3-yes-no")[0], Qwen3YesNoFamily)
    v1 = build_tiny_mxbai(tmp_path / "mxbai-rerank-base-v1", named=False)  # the name, but not v2
    with pytest.raises(UnsupportedModelError, match="--family"):
        detect_family(v1)


# --- (b) the encoder makes mxbai-rerank's ids ---------------------------------------------------


def test_default_max_length_is_mxbais_capped_by_the_positions(model_dir):
    encoder = MxbaiV2Family().load_encoder(model_dir)
    fixed = fixed_length(encoder.tokenizer)
    assert encoder.max_length == 1024 and encoder.mxbai_max_length == 1024 - fixed  # 8192 + fixed > 1024 positions
    assert encoder.query_max_length == (1024 - fixed) * 3 // 4 and encoder.padding_side == "left"
    big = build_tiny_mxbai(model_dir.parent / "tiny-mxbai-32k", max_positions=32768)
    assert MxbaiV2Family().load_encoder(big).mxbai_max_length == 8192  # mxbai-rerank's default


@pytest.mark.parametrize("mxbai_max_length", [None, 200, 40])
def test_ids_equal_mxbais(model_dir, mxbai_max_length):
    reference = mxbai(model_dir, mxbai_max_length)
    tokenizer = MxbaiV2Family().load_encoder(model_dir).tokenizer
    max_length = None if mxbai_max_length is None else mxbai_max_length + fixed_length(tokenizer)
    encoder = MxbaiV2Family().load_encoder(model_dir, max_length=max_length)
    assert encoder.mxbai_max_length == reference.max_length
    rng = np.random.default_rng(mxbai_max_length or 0)
    long_doc = "The giant panda is a bear species endemic to China. " * 120
    cases = [
        ("what is panda?", ["hi", "", long_doc, "熊猫是一种生活在中国的熊。", "?\n", "0 1"], None),
        ("what is the giant panda and where does it live? " * 60, ["hi", long_doc], "find the answer?"),
        ("", [random_text(rng, 0, 200) for _ in range(5)], ""),
        (random_text(rng, 20, 120), [random_text(rng, 0, 600) for _ in range(6)], random_text(rng, 1, 10)),
    ]
    for query, docs, instruct in cases:
        ours = [pair["input_ids"].tolist() for pair in encoder.encode(query, docs, instruct=instruct)]
        theirs = reference.prepare_inputs([query] * len(docs), docs, instruction=instruct)
        assert ours == unpadded(theirs)
    assert max(len(ids) for ids in ours) <= encoder.max_length


def test_ids_equal_mxbais_with_left_truncation(model_dir):
    reference = mxbai(model_dir, 60)
    reference.tokenizer.truncation_side = "left"
    encoder = MxbaiPairEncoder(reference.tokenizer, 60 + fixed_length(reference.tokenizer))
    query, docs = "what is the giant panda? " * 20, ["Paris is the capital of France. " * 30, "hi"]
    ours = [pair["input_ids"].tolist() for pair in encoder.encode(query, docs)]
    theirs = reference.prepare_inputs([query] * 2, docs)
    assert ours == unpadded(theirs)


def test_request_limits_cut_the_document_on_their_side(model_dir):
    encoder = MxbaiV2Family().load_encoder(model_dir)
    doc = "Paris is the capital and largest city of France. " * 10
    (whole,) = encoder.encode("q", [doc])
    (right,) = encoder.encode("q", [doc], truncation=Truncation(max_length=len(whole["input_ids"]) - 7))
    (left,) = encoder.encode("q", [doc], truncation=Truncation(max_length=len(whole["input_ids"]) - 7, side="left"))
    (first,) = encoder.encode("q", [doc], truncation=Truncation(max_tokens_per_doc=5))
    ids = whole["input_ids"].tolist()
    tail = len(encoder.tail)
    offsets = encoder.tokenizer("document: " + doc, return_offsets_mapping=True)["offset_mapping"]
    start = len(ids) - tail - sum(1 for _, end in offsets if end > len("document: "))  # the document's first token
    assert right["input_ids"].tolist() == ids[: -tail - 7] + ids[-tail:]  # its last 7 tokens go
    assert left["input_ids"].tolist() == ids[:start] + ids[start + 7 :]  # its first 7 go
    assert first["input_ids"].tolist() == ids[: start + 5] + ids[-tail:]  # its first 5 stay
    assert encoder.encode("q", [doc], truncation=MODEL_LIMITS)[0]["input_ids"].tolist() == ids


# --- (c) export ---------------------------------------------------------------------------------


def test_export_passes_parity_and_folds_the_head(artifact, model_dir):
    parity = json.loads((artifact / "parity.json").read_text())
    assert parity["passed"] and parity["max_abs_diff"] <= 1e-4
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["family"] == "mxbai-rerank-v2" and "mxbai-rerank-base-v2" in manifest["family_reason"]
    vocab = len(MxbaiV2Family().load_encoder(model_dir).tokenizer)
    for name in ("model.onnx", "decoder.onnx"):
        model = onnx.shape_inference.infer_shapes(onnx.load(str(artifact / name)))
        shapes = {
            v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]
            for v in list(model.graph.value_info) + list(model.graph.output)
        }
        projections = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm")]
        assert projections
        for node in projections:
            assert node.output[0] in shapes, f"{name}: no inferred shape for {node.name}"
            assert shapes[node.output[0]][-1] != vocab, f"{name}: {node.name} projects onto the vocabulary"
        initializers = [list(i.dims) for i in model.graph.initializer]
        assert not any(dims[-1:] == [vocab] for dims in initializers), name  # no transposed LM head


# --- (d) served ---------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "torch", "torch-plain"])
def test_served_logits_equal_the_causal_lm(artifact, model_dir, backend):
    """Without mxbai-rerank: the served logit is the full causal LM's logit("1") - logit("0") on the same ids."""
    rng = np.random.default_rng(3)
    query, docs = random_text(rng, 2, 30), [random_text(rng, 0, int(rng.choice([20, 150, 900]))) for _ in range(7)]
    path = model_dir if backend == "torch-plain" else artifact
    with Reranker.load(str(path), backend=backend.removesuffix("-plain"), max_batch_size=4) as reranker:
        expected = causal_lm_scores(model_dir, reranker.encoder, query, docs)
        np.testing.assert_allclose(reranker.logits(query, docs), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "torch", "torch-plain"])
def test_served_logits_equal_mxbais(artifact, model_dir, backend):
    """Every backend, whole rows (model.onnx: prefix reuse off), against mxbai-rerank's `rank` on fresh
    mixed-length pairs, long documents truncated."""
    reference = mxbai(model_dir)
    path = model_dir if backend == "torch-plain" else artifact
    rng = np.random.default_rng(5)
    worst = 0.0
    name = backend.removesuffix("-plain")
    with Reranker.load(str(path), backend=name, max_batch_size=4, prefix_reuse=False) as reranker:
        assert reranker.family.name == "mxbai-rerank-v2"
        if name != "torch":
            assert set(reranker.backend.sessions) == {"scorer"}
        assert reranker.encoder.mxbai_max_length == reference.max_length
        for instruct in (None, "Find the passage that answers the question?"):
            query = random_text(rng, 1, 25)
            docs = [random_text(rng, 0, int(rng.choice([20, 150, 1200]))) for _ in range(7)]
            assert any(len(p["input_ids"]) == reranker.encoder.max_length for p in reranker.encoder.encode(query, docs))
            expected = mxbai_scores(reference, query, docs, instruct)
            logits = reranker.logits(query, docs, instruct=instruct)
            worst = max(worst, float(np.abs(logits - expected).max()))
            np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)
            ranked = reranker.rerank(query, docs, instruct=instruct, raw_scores=True)
            assert [r.index for r in ranked] == np.argsort(-expected, kind="stable").tolist()
    print(f"{backend}: max |Δlogit| vs mxbai-rerank {worst:.2e}")


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "torch"])
def test_prefix_reuse_equals_mxbais(artifact, model_dir, backend):
    """The shared part (system turn, query, "\\n") once per request, each document after it, through the one
    decoder graph (or module): mxbai-rerank's logits within 1e-4, for one document, empty ones, truncated ones."""
    from rerankrt.families.prefix_reuse import DECODER

    reference = mxbai(model_dir)
    rng = np.random.default_rng(8)
    worst = 0.0
    path = model_dir if backend == "torch" else artifact
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
            [random_text(rng, 0, int(rng.choice([20, 150, 1200]))) for _ in range(6)],
            [random_text(rng, 3, 40)],
            ["", random_text(rng, 1, 5), ""],
        ):
            query = random_text(rng, 5, 30)
            logits, expected = reranker.logits(query, docs), mxbai_scores(reference, query, docs)
            worst = max(worst, float(np.abs(logits - expected).max()))
            np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)
        assert any(continued), "no document continued from its query's keys and values"
    print(f"{backend} with prefix reuse: max |Δlogit| vs mxbai-rerank {worst:.2e}")


# --- (e) refusals -------------------------------------------------------------------------------


def test_truncate_false_refuses_what_mxbai_would_cut(model_dir):
    tokenizer = MxbaiV2Family().load_encoder(model_dir).tokenizer
    encoder = MxbaiPairEncoder(tokenizer, 64 + fixed_length(tokenizer))
    (fits,) = encoder.encode("what is panda?", ["hi"], truncate=False)
    assert fits["input_ids"].tolist() == encoder.encode("what is panda?", ["hi"])[0]["input_ids"].tolist()
    with pytest.raises(InputError) as info:
        encoder.encode("what is panda?", ["hi", "Paris is the capital of France. " * 30], truncate=False)
    assert info.value.field == "documents[1]"
    with pytest.raises(InputError) as info:
        encoder.encode("what is the giant panda? " * 30, ["hi"], truncate=False)
    assert info.value.field == "query"
    with pytest.raises(InputError) as info:
        encoder.encode("panda?", ["hi"], instruct="find the answer " * 30, truncate=False)
    assert info.value.field == "instruct"


def test_empty_instruct_is_no_instruction_and_chat_template_is_refused(model_dir, tmp_path):
    encoder = MxbaiV2Family().load_encoder(model_dir)
    plain = encoder.encode("q", ["d"])[0]["input_ids"].tolist()
    assert encoder.encode("q", ["d"], instruct="")[0]["input_ids"].tolist() == plain
    assert encoder.encode("q", ["d"], instruct="x")[0]["input_ids"].tolist() != plain
    template = tmp_path / "t.jinja"
    template.write_text("{{ messages[0]['content'] }}")
    with pytest.raises(UnsupportedModelError, match="fixed"):
        MxbaiV2Family().load_encoder(model_dir, chat_template=template)
    with pytest.raises(UnsupportedModelError, match="fixed prompt takes"):
        MxbaiV2Family().load_encoder(model_dir, max_length=fixed_length(encoder.tokenizer) + 3)
