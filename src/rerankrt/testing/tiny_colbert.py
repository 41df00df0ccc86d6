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

from rerankrt.testing.tiny_models import build_bert_tokenizer

QUERY_PREFIX, DOCUMENT_PREFIX = "[Q] ", "[D] "  # PyLate's defaults, added to the vocabulary as whole tokens


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
) -> Path:
    """A two-layer BertModel with a Dense projection to `dim`, saved the way PyLate's ColBERT.save writes it
    (without `weights`: the configs and the tokenizer only, enough to recognise and encode). `shape`: BertConfig
    arguments that replace the tiny sizes (benchmarks build answerai-colbert-small-v1's)."""
    from transformers import BertConfig, BertModel

    out = Path(out)
    tokenizer = build_bert_tokenizer()
    tokenizer.add_tokens([QUERY_PREFIX, DOCUMENT_PREFIX])
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=512,
        type_vocab_size=2,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.2,
        **(shape or {}),
    )
    torch.manual_seed(seed)
    if weights:
        BertModel(config).save_pretrained(out)
    else:
        config.architectures = [BertModel.__name__]
        config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Dense", "type": "pylate.models.Dense.Dense"},
    ]
    (out / "modules.json").write_text(json.dumps(modules, indent=2))
    (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 511, "do_lower_case": False}))
    (out / "config_sentence_transformers.json").write_text(
        json.dumps(
            {
                "model_type": "ColBERT",
                "similarity_fn_name": "MaxSim",
                "query_prefix": QUERY_PREFIX,
                "document_prefix": DOCUMENT_PREFIX,
                "query_length": query_length,
                "document_length": document_length,
                "attend_to_expansion_tokens": attend_to_expansion,
                "skiplist_words": list(string.punctuation),
                "do_query_expansion": expansion,
            },
            indent=2,
        )
    )
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
