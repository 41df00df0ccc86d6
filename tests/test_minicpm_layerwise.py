"""bge-reranker-v2-minicpm-layerwise family: detection, the cut-off option, FlagEmbedding's token ids, the native
MiniCPM against an independent reference, export with the layers above the cut-off left out, and serving parity.

The reference here (`rerankrt.testing.reference_minicpm`) is FlagEmbedding's `LayerWiseFlagLLMReranker` scoring and
the remote code's MiniCPM forward rewritten from their code in plain torch, over the checkpoint's own tensors.
FlagEmbedding itself (its compute_score and the remote modeling code it ships) is compared in
`tests/test_minicpm_layerwise_flagembedding.py`, which needs it installed (docs/development.md).
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
from rerankrt.errors import ArtifactError, InputError, UnsupportedModelError  # noqa: E402
from rerankrt.export import export_model  # noqa: E402
from rerankrt.families import BgeGemmaFamily, detect_family, family_names  # noqa: E402
from rerankrt.families.base import run_torch  # noqa: E402
from rerankrt.families.bge_gemma import prompt_overhead  # noqa: E402
from rerankrt.families.minicpm_layerwise import LayerwiseConfig, LayerwiseFamily, LayerwisePairEncoder  # noqa: E402
from rerankrt.families.prefix_reuse import DECODER  # noqa: E402
from rerankrt.testing.reference_gemma import flag_inputs  # noqa: E402
from rerankrt.testing.reference_minicpm import LayerwiseReference  # noqa: E402
from rerankrt.testing.tiny_gemma import CORPUS  # noqa: E402
from rerankrt.testing.tiny_minicpm import LAYERS, START_LAYER, build_tiny_minicpm  # noqa: E402
from tests.support import edit_manifest, rerankrt  # noqa: E402

WORDS = sorted({w for line in CORPUS for w in line.replace("\n", " ").split()}) + ["Yes", "No", "熊猫", "zebra"]
CUT = 3  # the cut-off the second artifact is exported with (the tiny model has heads for layers 2..6)


def random_text(rng: np.random.Generator, low: int, high: int) -> str:
    return " ".join(rng.choice(WORDS, size=int(rng.integers(low, high + 1))))


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """The tiny checkpoint without weights: detection, the option and the encoder (unit tier)."""
    return build_tiny_minicpm(tmp_path_factory.mktemp("models") / "tiny-minicpm-card", weights=False)


@pytest.fixture(scope="module")
def minicpm_dir(tmp_path_factory):
    return build_tiny_minicpm(tmp_path_factory.mktemp("models") / "tiny-minicpm-card")


@pytest.fixture(scope="module")
def reference(minicpm_dir):
    return LayerwiseReference(minicpm_dir)


@pytest.fixture(scope="module")
def artifact(minicpm_dir, tmp_path_factory):
    """Exported with the default cut-off (the tiny model has no layer 28: its last, 6)."""
    out = tmp_path_factory.mktemp("artifacts") / "minicpm"
    export_model(str(minicpm_dir), out)
    return out


@pytest.fixture(scope="module")
def cut_artifact(minicpm_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("artifacts") / "minicpm-cut"
    export_model(str(minicpm_dir), out, family_options={"cutoff_layer": str(CUT)})
    return out


# --- (a) detection and the cut-off option ---------------------------------------------------------


def test_named_checkpoint_is_detected_without_flags(tokenizer_dir):
    family, recognition = detect_family(tokenizer_dir)
    assert isinstance(family, LayerwiseFamily) and recognition.family == "bge-minicpm-layerwise"
    assert "LayerWiseMiniCPMForCausalLM" in recognition.reason and "minicpm-layerwise" in recognition.reason


def test_unnamed_checkpoint_is_refused_unless_forced(tmp_path):
    path = build_tiny_minicpm(tmp_path / "some-minicpm", named=False, weights=False)
    with pytest.raises(UnsupportedModelError) as info:
        detect_family(path)
    assert "--family" in str(info.value) and all(name in str(info.value) for name in family_names())
    family, recognition = detect_family(path, forced="bge-minicpm-layerwise")
    assert isinstance(family, LayerwiseFamily) and "forced" in recognition.reason


def test_vocabulary_heads_are_not_claimed_and_refused_when_forced(tmp_path):
    """'raw'/'complex' heads project onto the vocabulary: compute_score cannot score with them."""
    path = build_tiny_minicpm(tmp_path / "bge-reranker-v2-minicpm-layerwise-raw", head_type="raw", weights=False)
    with pytest.raises(UnsupportedModelError, match="no reranker family"):
        detect_family(path)
    family, _ = detect_family(path, forced="bge-minicpm-layerwise")
    with pytest.raises(UnsupportedModelError, match="head_type 'raw'"):
        family.configure({}, path)


def test_default_cutoff_is_the_cards_28_where_there_is_a_head_for_it():
    assert LayerwiseConfig.of({"num_hidden_layers": 40, "start_layer": 8}).default_cutoff() == 28
    assert LayerwiseConfig.of({"num_hidden_layers": 24, "start_layer": 8}).default_cutoff() == 24
    assert LayerwiseConfig.of({"num_hidden_layers": 40, "start_layer": 30}).default_cutoff() == 40


def test_cutoff_option_is_checked_against_the_heads(tokenizer_dir):
    family = LayerwiseFamily()
    assert family.configure({}, tokenizer_dir) == {"cutoff_layer": str(LAYERS)}
    assert family.configure({"cutoff_layer": "2"}, tokenizer_dir) == {"cutoff_layer": "2"} and family.cutoff == 2
    for bad in ("1", "7", "0", "-3", "abc", "", "2.5"):
        with pytest.raises(UnsupportedModelError) as info:
            LayerwiseFamily().configure({"cutoff_layer": bad}, tokenizer_dir)
        assert f"cutoff_layer={bad}" in str(info.value) and f"{START_LAYER} to {LAYERS}" in str(info.value)
    with pytest.raises(UnsupportedModelError, match="no such option .*cutoff_layer"):
        LayerwiseFamily().configure({"cutoff": "3"}, tokenizer_dir)
    with pytest.raises(UnsupportedModelError, match="bge-gemma-yes family takes no such option"):
        BgeGemmaFamily().configure({"cutoff_layer": "3"}, tokenizer_dir)


def test_export_refuses_a_cutoff_without_a_head(tokenizer_dir, tmp_path):
    with pytest.raises(UnsupportedModelError, match="cutoff_layer=9"):
        export_model(str(tokenizer_dir), tmp_path / "out", family_options={"cutoff_layer": "9"})
    assert not (tmp_path / "out").exists()


# --- (b) the encoder makes FlagEmbedding's ids ------------------------------------------------------


@pytest.mark.parametrize(("flag_max_length", "side"), [(512, "right"), (64, "left"), (24, "right")])
def test_ids_equal_flagembeddings(tokenizer_dir, flag_max_length, side):
    tokenizer = LayerwiseFamily().load_encoder(tokenizer_dir).tokenizer
    tokenizer.truncation_side = side
    encoder = LayerwisePairEncoder(tokenizer, flag_max_length + prompt_overhead(tokenizer))
    assert encoder.flag_max_length == flag_max_length and encoder.head == [tokenizer.bos_token_id]
    rng = np.random.default_rng(flag_max_length)
    long_doc = "The giant panda is a bear species endemic to China. " * 80
    cases = [
        ("what is panda?", ["hi", "", long_doc, "熊猫是一种生活在中国的熊。", "Yes No 'Yes'"]),
        ("what is the giant panda and where does it live? " * 60, ["hi", long_doc, random_text(rng, 5, 40)]),
        ("", [random_text(rng, 0, 200) for _ in range(4)]),
    ]
    for query, docs in cases:
        ours = [pair["input_ids"].tolist() for pair in encoder.encode(query, docs)]
        assert ours == flag_inputs(tokenizer, [(query, d) for d in docs], flag_max_length, always_bos=True)
        assert all(len(ids) <= encoder.max_length for ids in ours)


def test_instruct_and_chat_template_are_refused(tokenizer_dir, tmp_path):
    encoder = LayerwiseFamily().load_encoder(tokenizer_dir)
    with pytest.raises(InputError, match="minicpm-layerwise") as info:
        encoder.encode("q", ["d"], instruct="Find the passage that answers")
    assert info.value.field == "instruct"
    template = tmp_path / "t.jinja"
    template.write_text("{{ messages[0]['content'] }}")
    with pytest.raises(UnsupportedModelError, match="fixed"):
        LayerwiseFamily().load_encoder(tokenizer_dir, chat_template=template)


# --- (c) the native MiniCPM equals the reference ----------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize(("cutoff", "side"), [(START_LAYER, "left"), (4, "right"), (LAYERS, "left")])
def test_native_scorer_equals_the_reference(minicpm_dir, reference, cutoff, side):
    """The folded Llama of the first `cutoff` layers (whole rows, and rows continuing from their prefix) on padded
    mixed-length batches: FlagEmbedding's logits at that layer within 1e-4."""
    family = LayerwiseFamily()
    family.configure({"cutoff_layer": str(cutoff)}, minicpm_dir)
    encoder = family.load_encoder(minicpm_dir)
    encoder.padding_side = side
    scorer = family.load_scorer(minicpm_dir)
    assert len(scorer.classifier.model.layers) == cutoff
    rng = np.random.default_rng(cutoff)
    query, docs = random_text(rng, 16, 30), [random_text(rng, 0, 120) for _ in range(6)]
    batch = encoder.collate(encoder.encode(query, docs))
    assert (batch["attention_mask"] == 0).any()
    expected = reference.score(query, docs, cutoff, batch_size=3)
    whole = {k: v for k, v in batch.items() if k != "prefix_length"}
    np.testing.assert_allclose(run_torch(scorer, whole), expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(run_torch(scorer, batch), expected, atol=1e-4, rtol=0)  # prefix reuse


# --- (d) export -------------------------------------------------------------------------------------


def _layers_in(graph_file) -> set[int]:
    model = onnx.load(str(graph_file))
    names = [n.name for n in model.graph.node] + [i.name for i in model.graph.initializer]
    return {int(name.split("layers.")[1].split("/")[0].split(".")[0]) for name in names if "layers." in name}


@pytest.mark.integration
def test_export_records_the_cutoff_and_leaves_the_layers_above_out(artifact, cut_artifact, minicpm_dir):
    for folder, cutoff in ((artifact, LAYERS), (cut_artifact, CUT)):
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["family"] == "bge-minicpm-layerwise"
        assert manifest["family_options"] == {"cutoff_layer": str(cutoff)}
        parity = json.loads((folder / "parity.json").read_text())
        assert parity["passed"] and parity["max_abs_diff"] <= 1e-4
        for graph in ("model.onnx", "decoder.onnx"):
            assert _layers_in(folder / graph) == set(range(cutoff)), graph
    assert (cut_artifact / "model.onnx").stat().st_size < (artifact / "model.onnx").stat().st_size
    vocab = len(LayerwiseFamily().load_encoder(minicpm_dir).tokenizer)
    initializers = [list(i.dims) for i in onnx.load(str(cut_artifact / "model.onnx")).graph.initializer]
    assert sum(dims == [vocab, 64] for dims in initializers) == 1  # the embedding table; no vocabulary head
    assert [1, 64] in initializers or [64, 1] in initializers  # the one-row head


@pytest.mark.integration
@pytest.mark.parametrize("side", ["left", "right"])
def test_graph_on_padded_batches_equals_the_reference(cut_artifact, reference, side):
    encoder = LayerwiseFamily().load_encoder(cut_artifact)
    encoder.padding_side = side
    rng = np.random.default_rng(11)
    query, docs = random_text(rng, 2, 30), [random_text(rng, 0, 400) for _ in range(10)]
    batch = encoder.collate(encoder.encode(query, docs))
    session = ort.InferenceSession(str(cut_artifact / "model.onnx"), providers=["CPUExecutionProvider"])
    graph = session.run(None, {name: batch[name] for name in ("input_ids", "attention_mask")})[0].reshape(-1)
    np.testing.assert_allclose(graph, reference.score(query, docs, CUT, batch_size=3), atol=1e-4, rtol=0)


@pytest.mark.integration
def test_an_artifact_with_a_cutoff_without_a_head_is_refused(cut_artifact, tmp_path):
    import shutil

    folder = tmp_path / "edited"
    shutil.copytree(cut_artifact, folder)
    edit_manifest(folder, lambda m: m.update(family_options={"cutoff_layer": "40"}))
    with pytest.raises(ArtifactError, match="cutoff_layer=40"):
        Reranker.load(str(folder), backend="onnxruntime")


# --- (e) served ------------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "torch"])
@pytest.mark.parametrize("prefix_reuse", [True, False])
def test_served_logits_equal_flagembeddings_at_the_cutoff(cut_artifact, reference, backend, prefix_reuse):
    """Served from the cut-off artifact (the torch backend reads the source weights, cut where the manifest says),
    with and without prefix reuse: FlagEmbedding's logits at layer CUT within 1e-4."""
    rng = np.random.default_rng(5)
    worst = 0.0
    with Reranker.load(str(cut_artifact), backend=backend, prefix_reuse=prefix_reuse, max_batch_size=4) as reranker:
        assert reranker.family.name == "bge-minicpm-layerwise" and reranker.family.cutoff == CUT
        if backend != "torch":
            assert (DECODER in reranker.backend.sessions) == prefix_reuse
        for docs in (
            [random_text(rng, 0, int(rng.choice([20, 150, 700]))) for _ in range(7)],
            [random_text(rng, 3, 40)],
            ["", random_text(rng, 1, 5), ""],
        ):
            query = random_text(rng, 20, 30)  # over MIN_PREFIX_TOKENS with "A: " and bos
            expected = reference.score(query, docs, CUT, batch_size=3)
            logits = reranker.logits(query, docs)
            worst = max(worst, float(np.abs(logits - expected).max()))
            np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)
    print(f"{backend} prefix_reuse={prefix_reuse}: max |Δlogit| vs the reference {worst:.2e}")


@pytest.mark.integration
def test_a_plain_folder_serves_the_default_cutoff(minicpm_dir, reference):
    rng = np.random.default_rng(2)
    query, docs = random_text(rng, 2, 10), [random_text(rng, 0, 60) for _ in range(5)]
    with Reranker.load(str(minicpm_dir), backend="torch") as reranker:
        np.testing.assert_allclose(
            reranker.logits(query, docs), reference.score(query, docs, LAYERS), atol=1e-4, rtol=0
        )


@pytest.mark.integration
def test_the_command_line_takes_and_checks_family_options(tokenizer_dir, tmp_path):
    result = rerankrt("export", str(tokenizer_dir), "--out", str(tmp_path / "a"), "--family-option", "cutoff_layer=9")
    assert result.returncode != 0 and "cutoff_layer=9" in result.stderr and "2 to 6" in result.stderr
    result = rerankrt("export", str(tokenizer_dir), "--out", str(tmp_path / "b"), "--family-option", "cutoff_layer")
    assert result.returncode == 2 and "expected NAME=VALUE" in result.stderr
    twice = ("--family-option", "cutoff_layer=2", "--family-option", "cutoff_layer=3")
    result = rerankrt("export", str(tokenizer_dir), "--out", str(tmp_path / "c"), *twice)
    assert result.returncode != 0 and "given twice" in result.stderr
    assert not any((tmp_path / name).exists() for name in "abc")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"num_hidden_layers": "many"}, "not a number"),
        ({"hidden_size": None}, "not a positive number"),
        ({"num_attention_heads": 0}, "not a positive number"),
        ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, "only linear scaling"),
    ],
)
def test_a_broken_config_is_refused_by_name(tmp_path, change, message):
    path = build_tiny_minicpm(tmp_path / "bge-reranker-v2-minicpm-layerwise", weights=False, **change)
    with pytest.raises(UnsupportedModelError, match=message):
        LayerwiseFamily().configure({}, path)
        LayerwiseFamily().load_export_model(path)


@pytest.mark.integration
@pytest.mark.parametrize("form", ["safetensors-shards", "bin", "bin-shards"])
def test_sharded_and_pytorch_weights_load_the_same(minicpm_dir, tmp_path, form):
    """The weight reader takes an index of shards and PyTorch .bin files, as a Hub checkpoint may have them."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "bge-reranker-v2-minicpm-layerwise"
    shutil.copytree(minicpm_dir, folder)
    tensors = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    names = sorted(tensors)
    shards = [names[::2], names[1::2]] if form.endswith("shards") else [names]
    suffix = "bin" if form.startswith("bin") else "safetensors"
    stem = "pytorch_model" if suffix == "bin" else "model"
    weight_map = {}
    for i, keys in enumerate(shards):
        file = f"{stem}-{i + 1:05d}-of-{len(shards):05d}.{suffix}" if len(shards) > 1 else f"{stem}.{suffix}"
        part = {key: tensors[key] for key in keys}
        if suffix == "bin":
            torch.save(part, folder / file)
        else:
            save_file(part, str(folder / file))
        weight_map |= dict.fromkeys(keys, file)
    if len(shards) > 1:
        (folder / f"{stem}.{suffix}.index.json").write_text(json.dumps({"weight_map": weight_map}))
    family = LayerwiseFamily()
    encoder = family.load_encoder(folder)
    batch = encoder.collate(encoder.encode("what is panda?", ["hi", "The giant panda is a bear species."]))
    batch.pop("prefix_length", None)
    expected = run_torch(LayerwiseFamily().load_scorer(minicpm_dir), batch)
    np.testing.assert_array_equal(run_torch(family.load_scorer(folder), batch), expected)
