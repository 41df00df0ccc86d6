"""A tiny random-weight gte-multilingual-reranker-base look-alike, built offline: the GTE "New" encoder's checkpoint.

Shaped by Alibaba-NLP/gte-multilingual-reranker-base's config.json (`NewForSequenceClassification`, model_type
"new", one label, RoPE with NTK scaling `{"type": "ntk", "factor": 8.0}`, GELU-gated MLP, post-norm, packed q/k/v,
type_vocab_size 1, its `auto_map` to Alibaba-NLP/new-impl) at tiny sizes, with an XLM-R tokenizer (the checkpoint's
kind). The weights are written under the remote code's parameter names (model.safetensors); transformers cannot load
them without that code, so nothing here runs it. Nothing is downloaded; the weights are random (seeded).

    python -m rerankrt.testing.tiny_gte /tmp/tiny-gte
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from rerankrt.testing.tiny_models import build_xlmr_tokenizer

MAX_POSITIONS = 2048  # tiny; the real checkpoint has 8192 (times the NTK factor 8 in the remote code's cache)


def tiny_gte_config(tokenizer, **changes) -> dict:
    config = {
        "architectures": ["NewForSequenceClassification"],
        "auto_map": {
            "AutoConfig": "Alibaba-NLP/new-impl--configuration.NewConfig",
            "AutoModel": "Alibaba-NLP/new-impl--modeling.NewModel",
            "AutoModelForSequenceClassification": "Alibaba-NLP/new-impl--modeling.NewForSequenceClassification",
        },
        "model_type": "new",
        "id2label": {"0": "LABEL_0"},
        "label2id": {"LABEL_0": 0},
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 48,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.0,
        "classifier_dropout": 0.0,
        "max_position_embeddings": MAX_POSITIONS,
        "type_vocab_size": 1,
        "layer_norm_type": "layer_norm",
        "layer_norm_eps": 1e-12,
        "position_embedding_type": "rope",
        "rope_theta": 160000,
        "rope_scaling": {"type": "ntk", "factor": 8.0},
        "pack_qkv": True,
        "unpad_inputs": False,
        "use_memory_efficient_attention": False,
        "logn_attention_scale": False,
        "logn_attention_clip1": False,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "torch_dtype": "float32",
    }
    return config | changes


def build_tiny_gte(out: Path, seed: int = 0, **changes) -> Path:
    """The checkpoint folder: config.json (tiny sizes; `changes` replace keys), model.safetensors, XLM-R tokenizer."""
    from safetensors.torch import save_file

    from rerankrt.families.gte_new import GteConfig, GteNewScorer

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_xlmr_tokenizer()
    tokenizer.model_max_length = MAX_POSITIONS
    config = tiny_gte_config(tokenizer, **changes)
    native = GteConfig.of(config)
    torch.manual_seed(seed)
    scorer = GteNewScorer(native)
    state = {}
    for name, tensor in scorer.state_dict().items():
        if name.endswith("LayerNorm.weight") or name.endswith("_ln.weight"):
            value = 1 + 0.1 * torch.randn_like(tensor)
        else:
            value = 0.2 * torch.randn_like(tensor)
        if ".qkv_proj." in name and not native.pack_qkv:
            for part, chunk in zip("qkv", value.chunk(3), strict=True):
                state[name.replace(".qkv_proj.", f".{part}_proj.")] = chunk.contiguous()
        else:
            state[name] = value.contiguous()
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer.save_pretrained(out)
    return out


if __name__ == "__main__":
    print(build_tiny_gte(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/tiny-gte")))
