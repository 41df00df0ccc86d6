"""Qwen3-Reranker family: prompt, truncation, trimmed head, padding, parity with the model card's code."""

import numpy as np
import onnx
import pytest
import torch
from fastapi.testclient import TestClient

from rerankrt.errors import InputError, UnsupportedModelError
from rerankrt.export import export_model
from rerankrt.families import Qwen3YesNoFamily, detect_family
from rerankrt.runtime import Reranker
from rerankrt.runtime.onnxruntime_backend import OnnxRuntimeBackend
from rerankrt.runtime.openvino_backend import OpenVinoBackend
from rerankrt.server import create_app
from rerankrt.server.settings import ServeSettings
from rerankrt.testing.reference import (
    QWEN3_CHINESE_EXAMPLE,
    QWEN3_DEFAULT_INSTRUCTION,
    QWEN3_PREFIX,
    QWEN3_SUFFIX,
    qwen3_card_inputs,
    qwen3_card_scores,
    random_documents,
    random_text,
)
from tests.conftest import QWEN_ARCHS

CHINESE = QWEN3_CHINESE_EXAMPLE


def card_ids(model_dir, query, docs, instruction=None, max_length=8192):
    inputs = qwen3_card_inputs(model_dir, query, docs, instruction, max_length)
    return [row[mask.bool()].tolist() for row, mask in zip(inputs["input_ids"], inputs["attention_mask"], strict=True)]


@pytest.mark.parametrize("arch", QWEN_ARCHS)
def test_detected_as_qwen3_yes_no(tokenizer_dirs, arch):
    assert isinstance(detect_family(tokenizer_dirs[arch])[0], Qwen3YesNoFamily)


def test_the_old_family_name_decoder_yes_no_is_read_as_qwen3_yes_no(tokenizer_dirs):
    """Artifacts exported before the rename say `decoder-yes-no` in their manifest, and scripts pass it to --family."""
    from rerankrt.cli import build_parser
    from rerankrt.families import get_family

    assert isinstance(get_family("decoder-yes-no"), Qwen3YesNoFamily)
    family, recognition = detect_family(tokenizer_dirs["qwen3"], forced="decoder-yes-no")
    assert family.name == "qwen3-yes-no" and "forced" in recognition.reason
    assert build_parser().parse_args(["export", "m", "--family", "decoder-yes-no"]).family == "qwen3-yes-no"


@pytest.mark.integration
def test_an_artifact_whose_manifest_says_decoder_yes_no_serves(artifact_dirs, tmp_path):
    import json
    import shutil

    old = tmp_path / "old"
    shutil.copytree(artifact_dirs["qwen3"], old)
    manifest = json.loads((old / "manifest.json").read_text())
    assert manifest["family"] == "qwen3-yes-no"
    (old / "manifest.json").write_text(json.dumps({**manifest, "family": "decoder-yes-no"}))
    with Reranker.load(str(old), backend="onnxruntime", threads=1) as reranker:
        assert reranker.describe()["family"] == "qwen3-yes-no"
        with Reranker.load(str(artifact_dirs["qwen3"]), backend="onnxruntime", threads=1) as current:
            np.testing.assert_array_equal(reranker.logits("q", ["a", "b c"]), current.logits("q", ["a", "b c"]))


def test_bundled_template_is_the_model_card_prompt(tokenizer_dirs):
    encoder = Qwen3YesNoFamily().load_encoder(tokenizer_dirs["qwen3"])
    text, _, _ = encoder.template.render("what is panda?", "hi", None)
    body = f"<Instruct>: {QWEN3_DEFAULT_INSTRUCTION}\n<Query>: what is panda?\n<Document>: hi"
    assert text == QWEN3_PREFIX + body + QWEN3_SUFFIX
    assert encoder.template.render("q", "d", "")[0] == encoder.template.render("q", "d", None)[0]
    assert "<Instruct>: Find bears\n" in encoder.template.render("q", "d", "Find bears")[0]


@pytest.mark.parametrize("instruct", [None, "Given a question, find the passage that answers it"])
def test_pairs_encode_to_the_model_card_tokens(tokenizer_dirs, instruct):
    model_dir = tokenizer_dirs["qwen3"]
    encoder = Qwen3YesNoFamily().load_encoder(model_dir)
    docs = ["hi", "The giant panda is a bear species endemic to China.", "", "法国的首都是巴黎。"]
    pairs = encoder.encode("what is panda?", docs, instruct)
    assert [p["input_ids"].tolist() for p in pairs] == card_ids(model_dir, "what is panda?", docs, instruct)
    assert all(p["attention_mask"].tolist() == [1] * len(p["input_ids"]) for p in pairs)


def test_long_document_is_cut_exactly_as_the_model_card_does(tokenizer_dirs):
    model_dir = tokenizer_dirs["qwen3"]
    encoder = Qwen3YesNoFamily().load_encoder(model_dir, max_length=120)
    docs = ["Paris is the capital of France. " * 60, "hi"]
    pairs = encoder.encode("what is panda?", docs)
    assert len(pairs[0]["input_ids"]) == 120
    assert [p["input_ids"].tolist() for p in pairs] == card_ids(model_dir, "what is panda?", docs, None, 120)


def test_long_query_is_cut_after_the_document_keeping_prefix_and_suffix(tokenizer_dirs):
    encoder = Qwen3YesNoFamily().load_encoder(tokenizer_dirs["qwen3"], max_length=120)
    tokenizer = encoder.tokenizer
    prefix = tokenizer.encode(QWEN3_PREFIX, add_special_tokens=False)
    suffix = tokenizer.encode(QWEN3_SUFFIX, add_special_tokens=False)
    (pair,) = encoder.encode("what is the giant panda? " * 80, ["The giant panda is a bear. " * 80])
    ids = pair["input_ids"].tolist()
    assert len(ids) == 120
    assert ids[: len(prefix)] == prefix and ids[-len(suffix) :] == suffix
    text = tokenizer.decode(ids)
    assert "<Document>: <|im_end|>" in text  # the document went first, entirely
    assert "<Query>: what is the giant panda?" in text  # then the query's tail


def test_prompt_past_the_model_limit_is_truncated_not_refused(tokenizer_dirs):
    encoder = Qwen3YesNoFamily().load_encoder(tokenizer_dirs["qwen3"])
    assert encoder.max_length == 1024  # 8192 by default, capped by the tiny model's 1024 positions
    (pair,) = encoder.encode("panda", ["bears and pandas " * 3000])
    assert len(pair["input_ids"]) == 1024


def test_an_instruction_that_leaves_no_room_is_a_client_error(tokenizer_dirs):
    encoder = Qwen3YesNoFamily().load_encoder(tokenizer_dirs["qwen3"], max_length=120)
    with pytest.raises(InputError) as info:
        encoder.encode("q", ["d"], instruct="be precise " * 200)
    assert info.value.field == "instruct"


def test_sglang_style_template_from_a_file(tokenizer_dirs, tmp_path):
    template = tmp_path / "t.jinja"
    template.write_text(
        "<|im_start|>user\n{{ instruct | default('Judge relevance') }}\nQ: {{ messages[0]['content'] }}\n"
        "D: {{ messages[1]['content'] }}<|im_end|>\n<|im_start|>assistant\n"
    )
    encoder = Qwen3YesNoFamily().load_encoder(tokenizer_dirs["qwen3"], chat_template=template)
    (pair,) = encoder.encode("panda", ["bear"])
    assert encoder.tokenizer.decode(pair["input_ids"]).startswith(
        "<|im_start|>user\nJudge relevance\nQ: panda\nD: bear"
    )


@pytest.mark.parametrize(
    "source",
    [
        "{{ messages[0]['content'] }} only the query",
        "{{ messages[0]['content'] | upper }} {{ messages[1]['content'] }}",
    ],
)
def test_template_that_drops_or_changes_the_inputs_is_refused(tokenizer_dirs, tmp_path, source):
    template = tmp_path / "bad.jinja"
    template.write_text(source)
    with pytest.raises(UnsupportedModelError, match="bad.jinja"):
        Qwen3YesNoFamily().load_encoder(tokenizer_dirs["qwen3"], chat_template=template)


@pytest.mark.integration
@pytest.mark.parametrize("arch", QWEN_ARCHS)
def test_graph_has_no_vocabulary_sized_projection(artifact_dirs, model_dirs, arch):
    vocab = Qwen3YesNoFamily().load_encoder(model_dirs[arch]).tokenizer.__len__()
    model = onnx.shape_inference.infer_shapes(onnx.load(str(artifact_dirs[arch] / "model.onnx")))
    shapes = {
        v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]
        for v in list(model.graph.value_info) + list(model.graph.output)
    }
    projections = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm")]
    assert projections, "expected the decoder's own projections"
    for node in projections:
        assert node.output[0] in shapes, f"no inferred shape for {node.name}"
        assert shapes[node.output[0]][-1] != vocab, f"{node.name} projects onto the vocabulary"
    initializers = {i.name: list(i.dims) for i in model.graph.initializer}
    assert sum(dims == [vocab, 64] for dims in initializers.values()) == 1  # the embedding table, once
    assert not any(dims[-1:] == [vocab] for dims in initializers.values())  # no transposed LM head


@pytest.mark.integration
@pytest.mark.parametrize("arch", QWEN_ARCHS)
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "torch", "torch-plain"])
def test_every_backend_equals_the_model_card(artifact_dirs, model_dirs, arch, backend):
    path = model_dirs[arch] if backend == "torch-plain" else artifact_dirs[arch]
    reranker = Reranker.load(str(path), backend=backend.removesuffix("-plain"), max_batch_size=4)
    rng = np.random.default_rng(7)
    for instruct in (None, "Find the passage that answers"):
        query, docs = random_text(rng, 2, 12), random_documents(rng, 9, max_words=80)
        prob, logit = qwen3_card_scores(model_dirs[arch], query, docs, instruct)
        ours = reranker.logits(query, docs, instruct)
        np.testing.assert_allclose(ours, logit, atol=1e-4, rtol=0)
        np.testing.assert_allclose(1 / (1 + np.exp(-ours.astype(np.float64))), prob, atol=1e-4, rtol=0)


@pytest.mark.integration
@pytest.mark.parametrize("side", ["left", "right"])
def test_left_and_right_padding_score_like_a_single_pair(artifact_dirs, model_dirs, side):
    family = Qwen3YesNoFamily()
    encoder = family.load_encoder(model_dirs["qwen3"])
    encoder.padding_side = side
    rng = np.random.default_rng(3)
    pairs = encoder.encode("what is panda?", random_documents(rng, 6, max_words=70))
    scorer = family.load_scorer(model_dirs["qwen3"])
    onnx_backend = OnnxRuntimeBackend(family, artifact_dirs["qwen3"], {"scorer": "model.onnx"})
    openvino_backend = OpenVinoBackend(family, artifact_dirs["qwen3"], {"scorer": "model.onnx"})

    def torch_run(batch):
        with torch.no_grad():
            return scorer(**{k: torch.from_numpy(v) for k, v in batch.items()}).numpy()

    for run in (torch_run, onnx_backend.run, openvino_backend.run):
        single = np.array([run(encoder.collate([pair]))[0] for pair in pairs])
        batch = encoder.collate(pairs)
        assert (batch["attention_mask"] == 0).any()  # there is padding
        np.testing.assert_allclose(run(batch), single, atol=1e-4, rtol=0)


@pytest.mark.integration
@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_chinese_example_through_the_api(artifact_dirs, model_dirs, backend):
    prob, logit = qwen3_card_scores(model_dirs["qwen3"], CHINESE["query"], CHINESE["documents"], CHINESE["instruct"])
    with TestClient(create_app(ServeSettings(model_path=str(artifact_dirs["qwen3"]), backend=backend))) as client:
        results = client.post("/v1/rerank", json=CHINESE).json()
        raw = client.post("/v1/rerank", json={**CHINESE, "raw_scores": True, "top_n": 3}).json()
    best = np.argsort(-prob, kind="stable")[:2]
    assert [r["index"] for r in results] == best.tolist()
    for r in results:
        assert r["document"] == CHINESE["documents"][r["index"]]
        assert r["score"] == pytest.approx(float(prob[r["index"]]), abs=1e-4)
    for r in raw:
        assert r["score"] == pytest.approx(float(logit[r["index"]]), abs=1e-4)


@pytest.mark.integration
def test_over_long_instruction_is_a_400_naming_instruct(artifact_dirs, tmp_path):
    with TestClient(create_app(ServeSettings(model_path=str(artifact_dirs["qwen3"]), max_length=120))) as client:
        response = client.post("/v1/rerank", json={**CHINESE, "instruct": "be precise " * 200})
    assert response.status_code == 400 and response.json()["param"] == "instruct"


@pytest.mark.integration
def test_artifact_keeps_its_template_and_serve_can_override_it(model_dirs, tmp_path):
    template = tmp_path / "short.jinja"
    template.write_text("Q: {{ messages[0]['content'] }} D: {{ messages[1]['content'] }}<|im_end|>")
    out = tmp_path / "art"
    export_model(str(model_dirs["qwen3"]), out, chat_template=template)
    assert (out / "reranker_template.jinja").read_text() == template.read_text()
    exported = Reranker.load(str(out)).encoder
    assert exported.template.source == template.read_text()
    bundled = tmp_path / "card.jinja"
    bundled.write_text(Qwen3YesNoFamily().load_encoder(model_dirs["qwen3"]).template.source)
    assert Reranker.load(str(out), chat_template=bundled).encoder.template.source.startswith("<|im_start|>system")


@pytest.mark.integration
def test_forcing_the_cross_encoder_family_on_a_causal_lm_fails_clearly(model_dirs, tmp_path):
    with pytest.raises(UnsupportedModelError, match="2 labels; a cross-encoder needs 1"):
        export_model(str(model_dirs["qwen3"]), tmp_path / "art", family="cross-encoder")
