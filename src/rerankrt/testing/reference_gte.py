"""An independent plain-torch reference for the GTE "New" reranker (families.gte_new), written from the remote
code's math (Alibaba-NLP/new-impl modeling.py, `NewForSequenceClassification`), not from the port.

It reads config.json and the checkpoint's tensors by their own names, computes in float64, one pair at a time
without padding (the remote code's unpadded xformers path: each pair attends to itself alone), rotates each head's
two halves explicitly, and builds the NTK frequencies from their formula (kexue.fm/archives/9706, eqs. 6, 10-13).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rerankrt.testing.reference import unpadded_float64_logits


def _frequencies(config: dict, head_dim: int) -> torch.Tensor:
    base = float(config.get("rope_theta", 10000.0))
    half = torch.arange(head_dim // 2, dtype=torch.float64)
    scaling = config.get("rope_scaling")
    positions = int(config.get("max_position_embeddings", 2048))
    if not scaling or not positions * float(scaling["factor"]) > positions:
        return base ** (-2 * half / head_dim)
    factor = float(scaling["factor"])
    if scaling.get("mixed_b") is None:  # fixed NTK: base * factor, then every frequency over factor^(2/d)
        return (base * factor) ** (-2 * half / head_dim) * factor ** (-2 / head_dim)
    b = float(scaling["mixed_b"])
    a = math.log(factor) / (head_dim / 2) ** b
    return base ** (-2 * half / head_dim) * torch.exp(-a * (half + 1) ** b)


def _layer_norm(x, weights, prefix, eps):
    return F.layer_norm(x, x.shape[-1:], weights[f"{prefix}.weight"], weights[f"{prefix}.bias"], eps)


def _pair_logit(ids: torch.Tensor, weights: dict, config: dict) -> float:
    hidden_size, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
    head_dim, eps = hidden_size // heads, float(config.get("layer_norm_eps", 1e-12))
    inter = int(config["intermediate_size"])
    x = weights["new.embeddings.word_embeddings.weight"][ids]
    if int(config.get("type_vocab_size", 1)) > 0:
        x = x + weights["new.embeddings.token_type_embeddings.weight"][0]
    x = _layer_norm(x, weights, "new.embeddings.LayerNorm", eps)
    angle = torch.arange(len(ids), dtype=torch.float64)[:, None] * _frequencies(config, head_dim)[None, :]
    cos, sin = angle.cos()[:, None, :], angle.sin()[:, None, :]  # [length, 1, head_dim / 2]

    def rotate(t):  # t: [length, heads, head_dim]; the pair (t_i, t_(i + d/2)) turns by angle_i
        first, second = t[..., : head_dim // 2], t[..., head_dim // 2 :]
        return torch.cat((first * cos - second * sin, second * cos + first * sin), dim=-1)

    for i in range(int(config["num_hidden_layers"])):
        p = f"new.encoder.layer.{i}"
        if f"{p}.attention.qkv_proj.weight" in weights:
            qkv = x @ weights[f"{p}.attention.qkv_proj.weight"].T + weights[f"{p}.attention.qkv_proj.bias"]
            q, k, v = qkv.split(hidden_size, dim=-1)
        else:
            q, k, v = (x @ weights[f"{p}.attention.{n}_proj.weight"].T + weights[f"{p}.attention.{n}_proj.bias"]
                       for n in "qkv")  # fmt: skip
        q, k, v = (t.reshape(len(ids), heads, head_dim) for t in (q, k, v))
        q, k = rotate(q), rotate(k)
        probs = torch.einsum("qhd,khd->hqk", q, k).div(math.sqrt(head_dim)).softmax(dim=-1)
        context = torch.einsum("hqk,khd->qhd", probs, v).reshape(len(ids), hidden_size)
        x = x + context @ weights[f"{p}.attention.o_proj.weight"].T + weights[f"{p}.attention.o_proj.bias"]
        x = _layer_norm(x, weights, f"{p}.attn_ln", eps)
        up_gate = x @ weights[f"{p}.mlp.up_gate_proj.weight"].T
        up, gate = up_gate[:, :inter], up_gate[:, inter:]
        act = F.gelu(gate) if config.get("hidden_act", "gelu") == "gelu" else None
        if act is None:
            raise ValueError(f"the reference computes gelu only, not {config.get('hidden_act')!r}")
        x = x + (act * up) @ weights[f"{p}.mlp.down_proj.weight"].T + weights[f"{p}.mlp.down_proj.bias"]
        x = _layer_norm(x, weights, f"{p}.mlp_ln", eps)
    pooled = torch.tanh(x[0] @ weights["new.pooler.dense.weight"].T + weights["new.pooler.dense.bias"])
    return float(pooled @ weights["classifier.weight"][0] + weights["classifier.bias"][0])


def gte_reference_logits(model_dir: Path, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """float64 logits of each row's unpadded tokens (the mask's ones), from the folder's model.safetensors."""
    return unpadded_float64_logits(model_dir, input_ids, attention_mask, _pair_logit)
