import json

import numpy as np
import pytest
from transformers import AutoTokenizer

from rerankrt.errors import UnsupportedModelError
from rerankrt.families import CrossEncoderFamily, detect_family, get_family
from rerankrt.testing import tiny_models
from tests.conftest import ARCHS


@pytest.mark.parametrize("arch", ARCHS)
def test_one_label_sequence_classifiers_are_cross_encoders(tokenizer_dirs, arch):
    assert isinstance(detect_family(tokenizer_dirs[arch])[0], CrossEncoderFamily)


def test_unsupported_architecture_is_named(tmp_path):
    model_dir = tiny_models.build_causal_lm(tmp_path / "gpt2", weights=False)
    with pytest.raises(UnsupportedModelError, match="GPT2LMHeadModel"):
        detect_family(model_dir)


def test_two_label_classifier_is_refused_with_its_label_count(tmp_path):
    model_dir = tiny_models.build_xlmr(tmp_path / "two", num_labels=2, weights=False)
    with pytest.raises(UnsupportedModelError, match="XLMRobertaForSequenceClassification with 2 labels"):
        detect_family(model_dir)


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(UnsupportedModelError, match="no config.json"):
        detect_family(tmp_path)


def test_unknown_family_name():
    with pytest.raises(UnsupportedModelError, match="unknown family 'nope'"):
        get_family("nope")


@pytest.mark.parametrize("arch", ARCHS)
def test_short_pairs_encode_exactly_like_the_tokenizer(tokenizer_dirs, arch):
    encoder = CrossEncoderFamily().load_encoder(tokenizer_dirs[arch])
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dirs[arch])
    docs = ["hi", "The giant panda is a bear species endemic to China.", ""]
    pairs = encoder.encode("what is panda?", docs)
    expected = tokenizer(["what is panda?"] * 3, docs)
    for i, pair in enumerate(pairs):
        assert set(pair) == set(encoder.input_names)
        for name in encoder.input_names:
            assert pair[name].dtype == np.int64
            assert pair[name].tolist() == expected[name][i]


@pytest.mark.parametrize("arch", ARCHS)
def test_long_document_is_cut_and_query_kept(tokenizer_dirs, arch):
    encoder = CrossEncoderFamily().load_encoder(tokenizer_dirs[arch], max_length=32)
    tokenizer = encoder.tokenizer
    query = "what is panda?"
    (pair,) = encoder.encode(query, ["Paris is the capital of France. " * 40])
    assert len(pair["input_ids"]) == 32
    query_ids = tokenizer(query, add_special_tokens=False)["input_ids"]
    assert pair["input_ids"][1 : 1 + len(query_ids)].tolist() == query_ids


@pytest.mark.parametrize("arch", ARCHS)
def test_over_long_query_is_truncated_not_an_error(tokenizer_dirs, arch):
    encoder = CrossEncoderFamily().load_encoder(tokenizer_dirs[arch], max_length=32)
    query = "The giant panda is a bear species endemic to China. " * 30
    pairs = encoder.encode(query, ["hi", "Paris is the capital of France. " * 40])
    sep = encoder.tokenizer.sep_token_id
    for pair in pairs:
        assert len(pair["input_ids"]) <= 32
        ids = pair["input_ids"].tolist()
        query_end = ids.index(sep)
        assert query_end - 1 <= encoder.max_query_tokens  # query share respected
        assert len(ids) - query_end > 2  # the document still has tokens of its own


def test_max_length_beyond_position_embeddings_is_refused(tokenizer_dirs):
    # the tiny XLM-R has 514 positions, 2 of which RoBERTa reserves
    CrossEncoderFamily().load_encoder(tokenizer_dirs["xlmr"], max_length=512)
    with pytest.raises(UnsupportedModelError, match="exceeds what the model takes \\(512"):
        CrossEncoderFamily().load_encoder(tokenizer_dirs["xlmr"], max_length=513)


def test_collate_pads_right_with_pad_id_and_zero_mask(tokenizer_dirs):
    encoder = CrossEncoderFamily().load_encoder(tokenizer_dirs["bert"])
    pairs = encoder.encode("panda", ["hi", "a much longer document about pandas in China"])
    batch = encoder.collate(pairs)
    short, long = (len(p["input_ids"]) for p in pairs)
    assert batch["input_ids"].shape == (2, long)
    assert (batch["input_ids"][0, short:] == encoder.tokenizer.pad_token_id).all()
    assert batch["attention_mask"][0].tolist() == [1] * short + [0] * (long - short)
    assert (batch["token_type_ids"][0, short:] == 0).all()


def test_collate_left_padding(tokenizer_dirs):
    encoder = CrossEncoderFamily().load_encoder(tokenizer_dirs["xlmr"])
    encoder.padding_side = "left"
    pairs = encoder.encode("panda", ["hi", "a much longer document about pandas in China"])
    batch = encoder.collate(pairs)
    short, long = (len(p["input_ids"]) for p in pairs)
    assert batch["attention_mask"][0].tolist() == [0] * (long - short) + [1] * short
    assert batch["input_ids"][0, long - short :].tolist() == pairs[0]["input_ids"].tolist()


def test_encoder_save_lists_only_written_files(tokenizer_dirs, tmp_path):
    encoder = CrossEncoderFamily().load_encoder(tokenizer_dirs["xlmr"])
    files = encoder.save(tmp_path)
    assert "tokenizer.json" in files
    assert all((tmp_path / f).is_file() for f in files)
    json.loads((tmp_path / "tokenizer.json").read_text())


@pytest.mark.parametrize("arch, family", [("qwen3", "qwen3-yes-no"), ("qwen3-vl", "qwen3-vl-yes-no")])
def test_yes_no_families_declare_their_label_tokens(tokenizer_dirs, arch, family):
    from rerankrt.families import get_family
    from rerankrt.families.yes_no import yes_no_ids

    encoder = get_family(family).load_encoder(tokenizer_dirs[arch])
    assert get_family(family).label_tokens(encoder) == yes_no_ids(AutoTokenizer.from_pretrained(tokenizer_dirs[arch]))


@pytest.mark.parametrize("arch", ARCHS)
def test_a_cross_encoder_has_no_label_tokens(tokenizer_dirs, arch):
    family = CrossEncoderFamily()
    assert family.label_tokens(family.load_encoder(tokenizer_dirs[arch])) is None
