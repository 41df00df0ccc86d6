"""A tiny random-weight bge-reranker-v2-minicpm-layerwise look-alike, built offline, without its remote code.

The checkpoint has the published one's form: config.json with `architectures: [LayerWiseMiniCPMForCausalLM]`,
`model_type: minicpm`, the MiniCPM scalings (`scale_emb`, `scale_depth`, `dim_model_base`) and the layerwise
fields (`start_layer`, `head_multi`, `head_type: simple`), an `auto_map` naming the remote code files (not
written: nothing here runs them), and safetensors weights under the remote code's names (`model.layers.N...`,
`lm_head.J.linear_head.weight`, one one-logit head per layer from `start_layer` up). Smaller: 6 layers with heads
from layer 2, grouped-query attention. The tokenizer is a BPE trained here with MiniCPM's (Llama's) special
tokens (`<unk>` 0, `<s>` 1, `</s>` 2; `<unk>` pads). A `README.md` card names the model, as a fine-tune's does.

    python -m rerankrt.testing.tiny_minicpm /tmp/tiny-minicpm
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from rerankrt.testing.tiny_gemma import CORPUS
from rerankrt.testing.tiny_models import model_card

BASE_MODEL = "BAAI/bge-reranker-v2-minicpm-layerwise"
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]
LAYERS, START_LAYER = 6, 2


def build_minicpm_tokenizer(vocab_size: int = 500):
    """A `LlamaTokenizerFast` over a BPE trained offline (bos added by its post-processor, `<unk>` pads)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False)
    tok.train_from_iterator(CORPUS * 20 + ["Yes No yes no 'Yes' 'No'"] * 200, trainer=trainer)
    tokenizer = LlamaTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<unk>",
        add_bos_token=True, add_eos_token=False, model_max_length=2048,
    )  # fmt: skip
    ids = [tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS]
    assert ids == [0, 1, 2], ids
    return tokenizer


def minicpm_config(vocab_size: int, **overrides) -> dict:
    """config.json of the tiny checkpoint (the published config's fields, small sizes)."""
    config = {
        "architectures": ["LayerWiseMiniCPMForCausalLM"],
        "auto_map": {
            "AutoConfig": "configuration_minicpm_reranker.LayerWiseMiniCPMConfig",
            "AutoModel": "modeling_minicpm_reranker.LayerWiseMiniCPMModel",
            "AutoModelForCausalLM": "modeling_minicpm_reranker.LayerWiseMiniCPMForCausalLM",
        },
        "model_type": "minicpm",
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "hidden_act": "silu",
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-05,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.1,
        "pretraining_tp": 1,
        "scale_emb": 12,
        "scale_depth": 1.4,
        "dim_model_base": 256,
        "start_layer": START_LAYER,
        "head_multi": True,
        "head_type": "simple",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "tie_word_embeddings": False,
        "use_cache": False,
        "torch_dtype": "float32",
    }
    return {**config, **overrides}


def random_weights(config: dict, seed: int) -> dict[str, torch.Tensor]:
    """Weights under the remote code's names, seeded; norms around 1 so they matter."""
    generator = torch.Generator().manual_seed(seed)
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    head_dim = hidden // config["num_attention_heads"]
    kv = config["num_key_value_heads"] * head_dim

    def normal(*shape, std=config["initializer_range"], mean=0.0):
        return torch.randn(*shape, generator=generator) * std + mean

    weights = {
        "model.embed_tokens.weight": normal(config["vocab_size"], hidden),
        "model.norm.weight": normal(hidden, mean=1),
    }
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        weights |= {
            p + "self_attn.q_proj.weight": normal(hidden, hidden), p + "self_attn.k_proj.weight": normal(kv, hidden),
            p + "self_attn.v_proj.weight": normal(kv, hidden), p + "self_attn.o_proj.weight": normal(hidden, hidden),
            p + "mlp.gate_proj.weight": normal(inter, hidden), p + "mlp.up_proj.weight": normal(inter, hidden),
            p + "mlp.down_proj.weight": normal(hidden, inter), p + "input_layernorm.weight": normal(hidden, mean=1),
            p + "post_attention_layernorm.weight": normal(hidden, mean=1),
        }  # fmt: skip
    heads = config["num_hidden_layers"] - config["start_layer"] + 1 if config["head_multi"] else 1
    for j in range(heads):
        key = f"lm_head.{j}.linear_head.weight" if config["head_multi"] else "lm_head.linear_head.weight"
        weights[key] = normal(1, hidden, std=1.0)
    return weights


def build_tiny_minicpm(out: Path, seed: int = 0, named: bool = True, weights: bool = True, **config_overrides) -> Path:
    """The tiny checkpoint in `out`: config.json, model.safetensors (unless `weights=False`: detection and encoders
    need none), tokenizer, model card (unless `named=False`)."""
    from safetensors.torch import save_file

    tokenizer = build_minicpm_tokenizer()
    config = minicpm_config(len(tokenizer), **config_overrides)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if weights:
        tensors = {k: v.contiguous() for k, v in random_weights(config, seed).items()}
        save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(out)
    if named:
        model_card(out, BASE_MODEL)
    return out


if __name__ == "__main__":
    print(build_tiny_minicpm(Path(sys.argv[1] if len(sys.argv) > 1 else "tiny-minicpm")))
