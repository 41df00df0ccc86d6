"""A tiny random-weight mxbai-rerank-v2 look-alike, built offline: a `Qwen2ForCausalLM` and a Qwen2-style tokenizer.

Nothing is downloaded. The tokenizer is a byte-level BPE trained here with Qwen's pre-tokenizer split and chat
special tokens (`<|endoftext|>` as pad, `<|im_start|>`, `<|im_end|>` as eos), on a corpus that holds mxbai's prompt
text, so the digits `0` and `1` (the answer tokens) are single tokens as in the real vocabulary. The model has the
real architecture's features at tiny widths: grouped-query attention, q/k/v biases (set non-zero here, as trained
ones are), a tied LM head. A `README.md` model card names `mixedbread-ai/mxbai-rerank-base-v2` as the base model,
as a fine-tune's card would, so the family recognises the folder; `named=False` leaves the card out.

    python -m rerankrt.testing.tiny_mxbai /tmp/tiny-mxbai
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from rerankrt.testing.tiny_models import CORPUS as BASE_CORPUS
from rerankrt.testing.tiny_models import QWEN_SPECIAL, QWEN_SPLIT, model_card

BASE_MODEL = "mixedbread-ai/mxbai-rerank-base-v2"
PROMPT_TEXT = [
    "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
    "You are a search relevance expert who evaluates how well documents match search queries. For each "
    "query-document pair, carefully analyze the semantic relationship between them, then provide your binary "
    "relevance judgment (0 for not relevant, 1 for relevant).\nRelevance:",
    "instruction: find the answer\nquery: what is panda?\ndocument: hi",
    "system\nuser\nassistant\n",
]


def build_mxbai_tokenizer(vocab_size: int = 600):
    """A `Qwen2TokenizerFast` over a byte-level BPE trained offline, with single-token `0` and `1`."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
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
        vocab_size=vocab_size,
        special_tokens=QWEN_SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([line for _ in range(20) for line in BASE_CORPUS + PROMPT_TEXT], trainer=trainer)
    tokenizer = Qwen2TokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        model_max_length=131072,
    )
    for word in ("0", "1", "\n"):
        assert len(tokenizer.encode(word, add_special_tokens=False)) == 1, word
    return tokenizer


def build_tiny_mxbai(out: Path, seed: int = 0, named: bool = True, max_positions: int = 1024, **shape) -> Path:
    """A two-layer `Qwen2ForCausalLM` (grouped-query attention, q/k/v biases, tied LM head) saved to `out`.
    `shape`: Qwen2Config arguments that replace the tiny ones."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = build_mxbai_tokenizer()
    tiny = dict(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
        rope_theta=1_000_000.0, tie_word_embeddings=True, initializer_range=0.2, use_sliding_window=False,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    config = Qwen2Config(**(tiny | shape))
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():  # biases start at zero and norms at one: make them matter, as trained ones do
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.normal_(0.0, 0.2)
            elif name.endswith("norm.weight"):
                param.normal_(1.0, 0.2)
    out = Path(out)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if named:
        model_card(out, BASE_MODEL)
    return out


if __name__ == "__main__":
    print(build_tiny_mxbai(Path(sys.argv[1] if len(sys.argv) > 1 else "tiny-mxbai")))
