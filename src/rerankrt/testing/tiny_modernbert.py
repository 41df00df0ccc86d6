"""A tiny random-weight gte-reranker-modernbert-base look-alike, built offline: `ModernBertForSequenceClassification`.

Shaped by Alibaba-NLP/gte-reranker-modernbert-base's config.json and tokenizer files: one label, `classifier_pooling`
"mean" (or "cls"), alternating attention (`global_attn_every_n_layers` 3: layers 0 and 3 global, the others a
sliding window of `local_attention` 128 tokens), rotary positions up to 8192. The tokenizer is ModernBERT's kind: a
byte-level BPE (OLMo's / GPT-NeoX's pre-tokenizer), trained here on a small corpus, with the special tokens after the
vocabulary as the real one has them ([UNK], [CLS], [SEP], [PAD], [MASK]) and the `[CLS] a [SEP] b [SEP]`
post-processor (type ids 0 then 1), loaded as a `PreTrainedTokenizerFast` that gives `input_ids` and
`attention_mask` only. Nothing is downloaded; the weights are random (seeded).

    python -m rerankrt.testing.tiny_modernbert /tmp/tiny-modernbert
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from rerankrt.testing.tiny_models import _corpus, _save

SPECIAL_TOKENS = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]  # after the BPE vocabulary, as in ModernBERT's
LOCAL_ATTENTION = 128
MAX_POSITIONS = 8192


def build_modernbert_tokenizer(vocab_size: int = 500):
    """Byte-level BPE with ModernBERT's special tokens and pair template, as a `PreTrainedTokenizerFast`."""
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    tok.add_special_tokens(SPECIAL_TOKENS)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0",
        pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        mask_token="[MASK]",
        model_input_names=["input_ids", "attention_mask"],
        model_max_length=MAX_POSITIONS,
        clean_up_tokenization_spaces=True,
    )


def build_tiny_modernbert(out: Path, seed: int = 0, pooling: str = "mean", weights: bool = True) -> Path:
    """A four-layer one-label `ModernBertForSequenceClassification` (global attention at layers 0 and 3, a 128-token
    sliding window at 1 and 2), `classifier_pooling` `pooling`, saved to `out` with its tokenizer."""
    from transformers import ModernBertConfig, ModernBertForSequenceClassification

    tokenizer = build_modernbert_tokenizer()
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in [
        ("pad", "[PAD]"), ("cls", "[CLS]"), ("sep", "[SEP]")]}  # fmt: skip
    config = ModernBertConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4,
        max_position_embeddings=MAX_POSITIONS, local_attention=LOCAL_ATTENTION, global_attn_every_n_layers=3,
        global_rope_theta=160000.0, local_rope_theta=10000.0, classifier_pooling=pooling, num_labels=1,
        pad_token_id=ids["pad"], cls_token_id=ids["cls"], sep_token_id=ids["sep"], bos_token_id=ids["cls"],
        eos_token_id=ids["sep"], initializer_range=0.2,
    )  # fmt: skip
    torch.manual_seed(seed)
    _save(ModernBertForSequenceClassification, config, out, weights)
    tokenizer.save_pretrained(out)
    return Path(out)


if __name__ == "__main__":
    print(build_tiny_modernbert(Path(sys.argv[1] if len(sys.argv) > 1 else "tiny-modernbert")))
