"""An independent plain-torch reference for jina-reranker-v2 (families.jina_v2), written from the math of the
checkpoint's remote code (`modeling_xlm_roberta.py` with flash-attn's `Block(prenorm=False)`, `MHA`, `Mlp` and
`XLMRobertaEmbeddings`), not from transformers' XLM-R: float64, one pair at a time without padding, reading the
checkpoint's tensors by their own names.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rerankrt.testing.reference import unpadded_float64_logits


def _pair_logit(ids: torch.Tensor, w: dict, config: dict) -> float:
    hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
    head_dim, eps, pad = hidden // heads, float(config.get("layer_norm_eps", 1e-12)), int(config["pad_token_id"])
    approximate = "tanh" if config.get("hidden_act") in ("gelu_new", "gelu_fast", "gelu_pytorch_tanh") else "none"
    positions = pad + 1 + torch.arange(len(ids))  # no padding inside a pair: XLM-R's offset positions
    x = (
        w["roberta.embeddings.word_embeddings.weight"][ids]
        + w["roberta.embeddings.position_embeddings.weight"][positions]
    )
    x = x + w["roberta.embeddings.token_type_embeddings.weight"][0]
    x = F.layer_norm(x, (hidden,), w["roberta.emb_ln.weight"], w["roberta.emb_ln.bias"], eps)
    for i in range(int(config["num_hidden_layers"])):
        p = f"roberta.encoder.layers.{i}."
        qkv = (x @ w[f"{p}mixer.Wqkv.weight"].T + w[f"{p}mixer.Wqkv.bias"]).view(len(ids), 3, heads, head_dim)
        q, k, v = qkv.unbind(1)
        probs = (torch.einsum("thd,shd->hts", q, k) / math.sqrt(head_dim)).softmax(dim=-1)
        context = torch.einsum("hts,shd->thd", probs, v).reshape(len(ids), hidden)
        x = x + context @ w[f"{p}mixer.out_proj.weight"].T + w[f"{p}mixer.out_proj.bias"]
        x = F.layer_norm(x, (hidden,), w[f"{p}norm1.weight"], w[f"{p}norm1.bias"], eps)
        inner = F.gelu(x @ w[f"{p}mlp.fc1.weight"].T + w[f"{p}mlp.fc1.bias"], approximate=approximate)
        x = x + inner @ w[f"{p}mlp.fc2.weight"].T + w[f"{p}mlp.fc2.bias"]
        x = F.layer_norm(x, (hidden,), w[f"{p}norm2.weight"], w[f"{p}norm2.bias"], eps)
    pooled = torch.tanh(x[0] @ w["classifier.dense.weight"].T + w["classifier.dense.bias"])
    return float(pooled @ w["classifier.out_proj.weight"][0] + w["classifier.out_proj.bias"][0])


def jina_v2_reference_logits(model_dir: Path, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """float64 logits of each row's unpadded tokens (the mask's ones), from the folder's model.safetensors."""
    return unpadded_float64_logits(model_dir, input_ids, attention_mask, _pair_logit)
