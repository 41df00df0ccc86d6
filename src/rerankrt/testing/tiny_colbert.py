"""A tiny random-weight ColBERT checkpoint as PyLate saves one: a BERT body, its tokenizer with the [Q]/[D] marker
tokens added, and a sentence-transformers Dense projection (modules.json, 1_Dense/, config_sentence_transformers.json).

    python -m rerankrt.testing.tiny_colbert /tmp/tiny-colbert
"""

from __future__ import annotations

import json
import string
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from rerankrt.testing.tiny_models import CORPUS, build_bert_tokenizer

QUERY_PREFIX, DOCUMENT_PREFIX = "[Q] ", "[D] "  # PyLate's defaults, added to the vocabulary as whole tokens

PUBLISHED = {
    # PyLate's conversion of the Stanford checkpoint: BERT (uncased WordPiece) -> 96, the unused0/1 markers in its
    # vocabulary, tokenizer.json padding with [MASK] and truncating at 299, settings as PyLate 1.1 wrote them
    "answerai-colbert-small-v1": dict(
        dim=96, query_length=32, document_length=300, prefixes=("[unused0]", "[unused1]"), tokenizer_defaults=True,
        legacy_settings=True,
    ),
    # ModernBERT (byte-level BPE) -> 128, [Q] / [D] added tokens
    "GTE-ModernColBERT-v1": dict(
        dim=128, query_length=32, document_length=300, body="modernbert", legacy_settings=True,
    ),
}  # fmt: skip
"""The published checkpoints' settings (their config_sentence_transformers.json, modules.json, 1_Dense/config.json,
sentence_bert_config.json, tokenizer kind) on a tiny body: `build_colbert(out, **PUBLISHED[name])`."""


def build_modernbert_tokenizer():
    """A byte-level BPE with ModernBERT's special tokens and [CLS] $A [SEP] template (GTE-ModernColBERT's kind)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=500, initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator([line for _ in range(20) for line in CORPUS], trainer=trainer)
    specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
    tok.add_special_tokens(specials)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        mask_token="[MASK]",
        model_input_names=["input_ids", "attention_mask"],
    )


def _body(kind: str, tokenizer, shape: dict | None):
    """The encoder body's class and config: BERT, or ModernBERT with a local attention window shorter than the
    documents (global attention every other layer)."""
    from transformers import BertConfig, BertModel, ModernBertConfig, ModernBertModel

    if kind == "modernbert":
        ids = {name: tokenizer.convert_tokens_to_ids(f"[{name.upper()}]") for name in ("cls", "sep", "pad")}
        tiny = dict(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=48, num_hidden_layers=4,
            num_attention_heads=4, max_position_embeddings=512, local_attention=16, global_attn_every_n_layers=2,
            pad_token_id=ids["pad"], cls_token_id=ids["cls"], sep_token_id=ids["sep"], bos_token_id=ids["cls"],
            eos_token_id=ids["sep"], initializer_range=0.2,
        )  # fmt: skip
        return ModernBertModel, ModernBertConfig(**(tiny | (shape or {})))
    tiny = dict(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=512, type_vocab_size=2, pad_token_id=tokenizer.pad_token_id, initializer_range=0.2,
    )  # fmt: skip
    return BertModel, BertConfig(**(tiny | (shape or {})))


def build_colbert(
    out: Path,
    seed: int = 0,
    dim: int = 16,
    query_length: int = 12,
    document_length: int = 48,
    expansion: bool = True,
    attend_to_expansion: bool = False,
    bias: bool = False,
    weights: bool = True,
    shape: dict | None = None,
    body: str = "bert",
    prefixes: tuple[str, str] = (QUERY_PREFIX, DOCUMENT_PREFIX),
    lower_case: bool = False,
    tokenizer_defaults: bool = False,
    legacy_settings: bool = False,
) -> Path:
    """A small BertModel (`body="modernbert"`: ModernBertModel) with a Dense projection to `dim`, saved the way
    PyLate's ColBERT.save writes it (without `weights`: the configs and the tokenizer only, enough to recognise and
    encode). `shape`: config arguments that replace the tiny sizes (benchmarks build answerai-colbert-small-v1's).
    `prefixes`: the query and document markers, added to the vocabulary; `lower_case`: sentence_bert_config.json's
    do_lower_case; `tokenizer_defaults`: tokenizer.json pads with [MASK] and truncates at document_length - 1;
    `legacy_settings`: config_sentence_transformers.json without model_type and do_query_expansion."""
    out = Path(out)
    tokenizer = build_modernbert_tokenizer() if body == "modernbert" else build_bert_tokenizer()
    tokenizer.add_tokens([prefix for prefix in prefixes if prefix])
    if tokenizer_defaults:
        tokenizer.backend_tokenizer.enable_padding(pad_id=tokenizer.mask_token_id, pad_token=tokenizer.mask_token)
        tokenizer.backend_tokenizer.enable_truncation(max_length=document_length - 1)
    model_class, config = _body(body, tokenizer, shape)
    torch.manual_seed(seed)
    if weights:
        model_class(config).save_pretrained(out)
    else:
        config.architectures = [model_class.__name__]
        config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Dense", "type": "pylate.models.Dense.Dense"},
    ]
    (out / "modules.json").write_text(json.dumps(modules, indent=2))
    transformer = {"max_seq_length": document_length - 1, "do_lower_case": lower_case}
    (out / "sentence_bert_config.json").write_text(json.dumps(transformer))
    settings = {
        "model_type": "ColBERT",
        "similarity_fn_name": "MaxSim",
        "query_prefix": prefixes[0],
        "document_prefix": prefixes[1],
        "query_length": query_length,
        "document_length": document_length,
        "attend_to_expansion_tokens": attend_to_expansion,
        "skiplist_words": list(string.punctuation),
        "do_query_expansion": expansion,
    }
    if legacy_settings:
        settings = {k: v for k, v in settings.items() if k not in ("model_type", "do_query_expansion")}
    (out / "config_sentence_transformers.json").write_text(json.dumps(settings, indent=2))
    dense = out / "1_Dense"
    dense.mkdir(exist_ok=True)
    linear = torch.nn.Linear(config.hidden_size, dim, bias=bias)
    (dense / "config.json").write_text(
        json.dumps(
            {
                "in_features": config.hidden_size,
                "out_features": dim,
                "bias": bias,
                "activation_function": "torch.nn.modules.linear.Identity",
                "use_residual": False,
            }
        )
    )
    if weights:
        state = {f"linear.{k}": v.detach().contiguous() for k, v in linear.state_dict().items()}
        save_file(state, dense / "model.safetensors")
    return out


if __name__ == "__main__":
    print(build_colbert(Path(sys.argv[1])))
