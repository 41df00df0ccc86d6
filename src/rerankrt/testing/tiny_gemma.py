"""A tiny random-weight bge-reranker-v2-gemma look-alike, built offline: a `GemmaForCausalLM` and its tokenizer.

Nothing is downloaded. The tokenizer is a BPE trained here on a small corpus, with Gemma's special tokens at
Gemma's ids (`<pad>` 0, `<eos>` 1, `<bos>` 2, `<unk>` 3), Gemma's whitespace handling (spaces become `▁`, no
prefix space) and the tokens the reranker relies on as single tokens (`Yes`, `No`, `yes`, `no`, `A`, `B`, `:`,
`\\n`). The weights are random (seeded). A `README.md` model card names `BAAI/bge-reranker-v2-gemma` as the base
model, as a fine-tune's card would, so the family recognises the folder; `named=False` leaves the card out.

    python -m rerankrt.testing.tiny_gemma /tmp/tiny-gemma
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from rerankrt.testing.tiny_models import CORPUS as BASE_CORPUS
from rerankrt.testing.tiny_models import model_card

BASE_MODEL = "BAAI/bge-reranker-v2-gemma"
SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>"]  # Gemma's ids 0-3
SINGLE_TOKENS = ["Yes", "No", "yes", "no", "A", "B", ":", "\n"]
FLAG_PROMPT = (
    "Given a query A and a passage B, determine whether the passage contains an answer to the query by "
    "providing a prediction of either 'Yes' or 'No'."
)
CORPUS = [
    *BASE_CORPUS,
    "A long passage keeps going with many words so that truncation has something to cut away.",
    "A: what is panda?\nB: hi\n" + FLAG_PROMPT,
    FLAG_PROMPT,
]


def build_gemma_tokenizer(vocab_size: int = 500):
    """A `GemmaTokenizerFast` over a BPE trained offline (left padding, bos added by its post-processor)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GemmaTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False)
    corpus = CORPUS * 20 + ["Yes No yes no 'Yes' 'No'"] * 200
    tok.train_from_iterator(corpus, trainer=trainer)
    tokenizer = GemmaTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        add_bos_token=True,
        add_eos_token=False,
        model_max_length=8192,
    )
    tokenizer.padding_side = "left"
    ids = [tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS]
    assert ids == [0, 1, 2, 3], ids
    for word in SINGLE_TOKENS:
        assert len(tokenizer.encode(word, add_special_tokens=False)) == 1, word
    return tokenizer


def build_tiny_gemma(out: Path, seed: int = 0, named: bool = True, max_positions: int = 8192) -> Path:
    """A two-layer `GemmaForCausalLM` (multi-query attention, tied LM head, as Gemma 2B) saved to `out`."""
    from transformers import GemmaConfig, GemmaForCausalLM

    tokenizer = build_gemma_tokenizer()
    config = GemmaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, head_dim=16, max_position_embeddings=max_positions,
        hidden_activation="gelu_pytorch_tanh", initializer_range=0.2, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = GemmaForCausalLM(config)
    with torch.no_grad():  # Gemma's RMSNorm scales by (1 + weight), zero at init: make the norms matter too
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.normal_(0.0, 0.2)
    out = Path(out)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if named:
        model_card(out, BASE_MODEL)
    return out


def build_tiny_llama(out: Path, seed: int = 0, named: bool = False) -> Path:
    """A two-layer `LlamaForCausalLM` with the same tokenizer (single `yes`/`no`): no family's architecture."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_gemma_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=1024,
        initializer_range=0.2, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(seed)
    out = Path(out)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    if named:
        model_card(out, BASE_MODEL)
    return out


if __name__ == "__main__":
    print(build_tiny_gemma(Path(sys.argv[1] if len(sys.argv) > 1 else "tiny-gemma")))
