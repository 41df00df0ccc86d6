"""A tiny random-weight jina-reranker-v2-base-multilingual look-alike, built offline.

Shaped by the checkpoint's config.json (`XLMRobertaForSequenceClassification` mapped by `auto_map` to the
repository's flash-attention `modeling_xlm_roberta.py`, no `model_type`, `use_flash_attn`, one label, absolute
positions with XLM-R's padding offset, type_vocab_size 1, layer_norm_eps 1e-5) at tiny sizes, with an XLM-R tokenizer
(the checkpoint's kind), its weights under the remote code's names (`roberta.emb_ln`, `mixer.Wqkv`, `norm1`,
`mlp.fc1`, ...) in model.safetensors. Nothing is downloaded; the weights are random (seeded).

    python -m rerankrt.testing.tiny_jina_v2 /tmp/tiny-jina-v2
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from rerankrt.testing.tiny_models import build_xlmr_tokenizer

MAX_POSITIONS = 1026  # as the real one: 1024 tokens after the padding offset


def build_tiny_jina_v2(out: Path, seed: int = 0, **changes) -> Path:
    """The checkpoint folder: config.json (tiny sizes; `changes` replace keys), model.safetensors, XLM-R tokenizer."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_xlmr_tokenizer()
    tokenizer.model_max_length = MAX_POSITIONS - 2
    config = {
        "architectures": ["XLMRobertaForSequenceClassification"],
        "auto_map": {
            "AutoConfig": "configuration_xlm_roberta.XLMRobertaFlashConfig",
            "AutoModel": "modeling_xlm_roberta.XLMRobertaModel",
            "AutoModelForSequenceClassification": "modeling_xlm_roberta.XLMRobertaForSequenceClassification",
        },
        "attention_probs_dropout_prob": 0.1, "bos_token_id": tokenizer.bos_token_id, "classifier_dropout": None,
        "emb_pooler": None, "eos_token_id": tokenizer.eos_token_id, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
        "hidden_size": 32, "num_labels": 1, "id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0},
        "initializer_range": 0.02, "intermediate_size": 48, "layer_norm_eps": 1e-5,
        "max_position_embeddings": MAX_POSITIONS, "num_attention_heads": 4, "num_hidden_layers": 2,
        "output_past": True, "pad_token_id": tokenizer.pad_token_id, "position_embedding_type": "absolute",
        "torch_dtype": "float32", "type_vocab_size": 1, "use_cache": False, "use_flash_attn": True,
        "vocab_size": len(tokenizer),
    } | changes  # fmt: skip
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    shapes = {
        "roberta.embeddings.word_embeddings.weight": (config["vocab_size"], hidden),
        "roberta.embeddings.position_embeddings.weight": (config["max_position_embeddings"], hidden),
        "roberta.embeddings.token_type_embeddings.weight": (config["type_vocab_size"], hidden),
        "roberta.emb_ln.weight": (hidden,), "roberta.emb_ln.bias": (hidden,),
        "classifier.dense.weight": (hidden, hidden), "classifier.dense.bias": (hidden,),
        "classifier.out_proj.weight": (1, hidden), "classifier.out_proj.bias": (1,),
    }  # fmt: skip
    for i in range(config["num_hidden_layers"]):
        p = f"roberta.encoder.layers.{i}."
        shapes |= {
            f"{p}mixer.Wqkv.weight": (3 * hidden, hidden), f"{p}mixer.Wqkv.bias": (3 * hidden,),
            f"{p}mixer.out_proj.weight": (hidden, hidden), f"{p}mixer.out_proj.bias": (hidden,),
            f"{p}norm1.weight": (hidden,), f"{p}norm1.bias": (hidden,),
            f"{p}mlp.fc1.weight": (inter, hidden), f"{p}mlp.fc1.bias": (inter,),
            f"{p}mlp.fc2.weight": (hidden, inter), f"{p}mlp.fc2.bias": (hidden,),
            f"{p}norm2.weight": (hidden,), f"{p}norm2.bias": (hidden,),
        }  # fmt: skip
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in shapes.items():
        noise = torch.randn(shape, generator=generator)
        norm_weight = name.endswith(("emb_ln.weight", "norm1.weight", "norm2.weight"))
        state[name] = 1 + 0.1 * noise if norm_weight else 0.2 * noise
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer.save_pretrained(out)
    return out


if __name__ == "__main__":
    print(build_tiny_jina_v2(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/tiny-jina-v2")))
