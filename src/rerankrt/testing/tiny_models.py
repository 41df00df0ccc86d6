"""Tiny random-weight cross-encoders of the real architectures, with offline-trained tokenizers.

Nothing is downloaded: the tokenizers are trained here on a small corpus and
the weights are random (seeded). `weights=False` writes a folder without weights
(config.json, tokenizer, processor files): enough for family detection and the
pair encoders. Run as a module to write the models for manual use:

    python -m rerankrt.testing.tiny_models /tmp/tiny   # -> /tmp/tiny/xlmr, bert, qwen3, qwen3-untied
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from tokenizers import (
    Regex,
    SentencePieceUnigramTokenizer,
    Tokenizer,
    decoders,
    models,
    pre_tokenizers,
    processors,
    trainers,
)
from tokenizers.implementations import BertWordPieceTokenizer

CORPUS = [
    "what is panda?",
    "hi",
    "The giant panda (Ailuropoda melanoleuca), sometimes called a panda bear or simply panda, "
    "is a bear species endemic to China.",
    "Paris is the capital and largest city of France.",
    "Berlin is the capital of Germany.",
    "The quick brown fox jumps over the lazy dog.",
    "Rerankers score a query against each document and sort the documents by relevance.",
    "Cross-encoders read the query and the document together, which is slower but more accurate.",
    "法国首都是哪里？巴黎是法国的首都。",
    "熊猫是一种生活在中国的熊。",
    "Numbers like 42, 3.14 and 2026 appear in text too.",
    "A long document keeps going with many words so that truncation has something to cut away.",
]


def _save(model_class, config, out: Path, weights: bool) -> None:
    """The random-weight model as `save_pretrained` writes it, or without weights only its config.json."""
    if weights:
        model_class(config).save_pretrained(out)
    else:
        config.architectures = [model_class.__name__]
        config.save_pretrained(out)


def _corpus(repeats: int = 20) -> list[str]:
    return [line for _ in range(repeats) for line in CORPUS]


def build_xlmr_tokenizer():
    from transformers import XLMRobertaTokenizerFast

    sp = SentencePieceUnigramTokenizer()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    sp.train_from_iterator(_corpus(), vocab_size=400, special_tokens=specials, unk_token="<unk>", show_progress=False)
    tok = sp._tokenizer
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", bos), ("</s>", eos)]
    )
    return XLMRobertaTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        model_max_length=512,
    )


def build_bert_tokenizer():
    from transformers import BertTokenizerFast

    wp = BertWordPieceTokenizer(lowercase=True)
    wp.train_from_iterator(_corpus(), vocab_size=400, show_progress=False)
    tok = wp._tokenizer
    # the [CLS] q [SEP] d [SEP] template (token type 1 for d) needs the trained ids
    tok.post_processor = processors.BertProcessing(
        ("[SEP]", tok.token_to_id("[SEP]")), ("[CLS]", tok.token_to_id("[CLS]"))
    )
    return BertTokenizerFast(tokenizer_object=tok, do_lower_case=True, model_max_length=512)


# Qwen2/Qwen3's pre-tokenizer split (the public GPT-4-style pattern), then byte-level BPE.
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
QWEN_PROMPT_TEXT = [
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided. "
    'Note that the answer can only be "yes" or "no".',
    "<Instruct>: Given a web search query, retrieve relevant passages that answer the query",
    "<Query>: what is panda?\n<Document>: yes no yes no",
    "system\nuser\nassistant\n",
]


def build_qwen3_tokenizer():
    """Byte-level BPE with Qwen's split, chat special tokens, and `yes` / `no` as single tokens."""
    from transformers import Qwen2TokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=QWEN_SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus() + QWEN_PROMPT_TEXT * 20 + ["yes", "no"] * 200, trainer=trainer)
    tokenizer = Qwen2TokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        model_max_length=131072,
    )
    tokenizer.add_tokens(["<think>", "</think>"])
    assert len(tokenizer.tokenize("yes")) == len(tokenizer.tokenize("no")) == 1
    return tokenizer


def model_card(out: Path, base_model: str) -> None:
    """A README.md naming the checkpoint it derives from, as a fine-tune's card does (families recognise it)."""
    name = base_model.split("/")[-1]
    card = f"---\nbase_model: {base_model}\nlibrary_name: transformers\n---\n\n# tiny-{name}\n\nRandom weights.\n"
    (Path(out) / "README.md").write_text(card)


def build_qwen3(
    out: Path,
    tied: bool = True,
    seed: int = 0,
    max_positions: int = 1024,
    weights: bool = True,
    named: bool = True,
    **shape,
) -> Path:
    """A two-layer Qwen3ForCausalLM with grouped-query attention, tied or untied LM head; `named`: with a model
    card naming Qwen/Qwen3-Reranker-0.6B, so the decoder yes/no family recognises it. `shape`: Qwen3Config
    arguments that replace the tiny ones (the benchmarks build real sizes this way, bench/lib/models.py)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tokenizer = build_qwen3_tokenizer()
    tiny = dict(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=max_positions,
        tie_word_embeddings=tied, initializer_range=0.2, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=None, bos_token_id=None,
    )  # fmt: skip
    config = Qwen3Config(**(tiny | shape))
    torch.manual_seed(seed)
    _save(Qwen3ForCausalLM, config, out, weights)
    tokenizer.save_pretrained(out)
    if named:
        model_card(out, "Qwen/Qwen3-Reranker-0.6B")
    return Path(out)


def build_xlmr(
    out: Path, seed: int = 0, num_labels: int = 1, weights: bool = True, max_positions: int = 514, **shape
) -> Path:
    """A two-layer XLMRobertaForSequenceClassification; `max_positions` counts the padding offset (514 holds 512
    tokens), as config.json's max_position_embeddings does. `shape`: XLMRobertaConfig arguments that replace the
    tiny ones (the benchmarks build real sizes this way, bench/lib/models.py)."""
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    tokenizer = build_xlmr_tokenizer()
    tiny = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=max_positions,
        type_vocab_size=1,
        num_labels=num_labels,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        initializer_range=0.2,
    )
    config = XLMRobertaConfig(**(tiny | shape))
    torch.manual_seed(seed)
    _save(XLMRobertaForSequenceClassification, config, out, weights)
    tokenizer.save_pretrained(out)
    return Path(out)


def build_bert(out: Path, seed: int = 0, weights: bool = True) -> Path:
    from transformers import BertConfig, BertForSequenceClassification

    tokenizer = build_bert_tokenizer()
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=512,
        type_vocab_size=2,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.2,
    )
    torch.manual_seed(seed)
    _save(BertForSequenceClassification, config, out, weights)
    tokenizer.save_pretrained(out)
    return Path(out)


QWEN_VL_SPECIAL = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
# The Qwen-VL chat template's handling of content parts (text inline, each image / video one placeholder).
QWEN_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_qwen3_vl(out: Path, seed: int = 0, weights: bool = True) -> Path:
    """A tiny Qwen3VLForConditionalGeneration: 3-block vision tower with two DeepStack mergers, 3 text layers.

    Real Qwen3-VL geometry (patch 16, spatial merge 2, temporal patch 2, interleaved 3-D mrope) at tiny
    widths; the vision-token specials and a Qwen-VL chat template are added to the offline tokenizer, and
    the image processor config is saved beside the weights.
    """
    from transformers import Qwen2VLImageProcessor, Qwen3VLConfig, Qwen3VLForConditionalGeneration

    tokenizer = build_qwen3_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": QWEN_VL_SPECIAL})
    tokenizer.chat_template = QWEN_VL_CHAT_TEMPLATE
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN_VL_SPECIAL}
    vision = dict(
        depth=3, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=16, spatial_merge_size=2,
        temporal_patch_size=2, out_hidden_size=64, num_position_embeddings=64, deepstack_visual_indexes=[0, 1],
        initializer_range=0.2,
    )  # fmt: skip
    text = dict(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096,
        rope_theta=5_000_000.0, initializer_range=0.2,
        rope_scaling={"rope_type": "default", "mrope_section": [4, 2, 2], "mrope_interleaved": True},
    )  # fmt: skip
    config = Qwen3VLConfig(
        text_config=text, vision_config=vision, tie_word_embeddings=True,
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )  # fmt: skip
    torch.manual_seed(seed)
    _save(Qwen3VLForConditionalGeneration, config, out, weights)
    tokenizer.save_pretrained(out)
    Qwen2VLImageProcessor(
        patch_size=16, temporal_patch_size=2, merge_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3,
        min_pixels=64 * 64, max_pixels=256 * 256,
    ).save_pretrained(out)  # fmt: skip
    # rerankrt's resize bounds (the reranker's own constants by default), small so tests stay fast
    bounds = {"image_min_pixels": 64 * 64, "image_max_pixels": 160 * 160, "video_frame_min_pixels": 64 * 64,
              "video_frame_max_pixels": 96 * 96, "video_total_pixels": 4 * 96 * 96}  # fmt: skip
    (Path(out) / "media_config.json").write_text(json.dumps(bounds, indent=2))
    model_card(out, "Qwen/Qwen3-VL-Reranker-2B")
    return Path(out)


def build_causal_lm(out: Path, weights: bool = True) -> Path:
    """A model no family takes (GPT-2 LM head): for the 'unsupported architecture' error."""
    from transformers import GPT2Config, GPT2LMHeadModel

    _save(GPT2LMHeadModel, GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2, n_positions=32), out, weights)
    return Path(out)


if __name__ == "__main__":
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "tiny-models")
    print(build_xlmr(root / "xlmr"))
    print(build_bert(root / "bert"))
    print(build_qwen3(root / "qwen3"))
    print(build_qwen3(root / "qwen3-untied", tied=False))
