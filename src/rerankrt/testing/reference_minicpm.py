"""bge-reranker-v2-minicpm-layerwise as FlagEmbedding scores it, rewritten for tests from its code (not imported).

Sources: FlagOpen/FlagEmbedding, FlagEmbedding/inference/reranker/decoder_only/layerwise.py
(`LayerWiseLLMReranker.compute_score_single_gpu`, `last_logit_pool_layerwise`) and the checkpoint's remote code,
models/modeling_minicpm_reranker.py (`LayerWiseMiniCPMModel.forward`, `MiniCPMDecoderLayer`, `MiniCPMAttention`
(eager), `MiniCPMRMSNorm`, `MiniCPMRotaryEmbedding`, `LayerWiseMiniCPMForCausalLM.forward` with a 'simple' head).

The MiniCPM forward is plain torch over the checkpoint's own tensors (safetensors, the remote code's names): the
embedding times `scale_emb`, each residual branch times `scale_depth / sqrt(num_hidden_layers)`, the final norm of
the hidden state before layer k (after the last layer for k = num_hidden_layers), that layer's one-row head, the
last real token. Inputs are FlagEmbedding's (`flag_inputs(..., always_bos=True)`), longest pairs first, padded to a
multiple of 8 on the tokenizer's side. Nothing is shared with `rerankrt.families.minicpm_layerwise` (which folds
the scalings into a transformers Llama), so agreement between the two is evidence.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rerankrt.testing.reference_gemma import flag_inputs


def rms_norm(hidden: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    variance = hidden.pow(2).mean(dim=-1, keepdim=True)
    return hidden * torch.rsqrt(variance + eps) * weight


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class LayerwiseReference:
    """`LayerWiseFlagLLMReranker(model_dir).compute_score(pairs, cutoff_layers=[k])`, fp32, on CPU."""

    def __init__(self, model_dir: Path):
        from safetensors.torch import load_file
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.config = json.loads((Path(model_dir) / "config.json").read_text())
        self.w = {k: v.float() for k, v in load_file(str(Path(model_dir) / "model.safetensors")).items()}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, cutoff: int) -> torch.Tensor:
        """The cut-off layer's head output at every position, [batch, sequence] (`outputs.logits[0]`)."""
        c, w = self.config, self.w
        batch, length = input_ids.shape
        heads, kv_heads = c["num_attention_heads"], c["num_key_value_heads"]
        head_dim, eps = c["hidden_size"] // heads, c["rms_norm_eps"]
        branch = c["scale_depth"] / math.sqrt(c["num_hidden_layers"])
        positions = torch.arange(length)  # the remote code's default position_ids
        inv_freq = 1.0 / (c["rope_theta"] ** (torch.arange(0, head_dim, 2).float() / head_dim))
        freqs = torch.cat([torch.outer(positions.float(), inv_freq)] * 2, dim=-1)
        cos, sin = freqs.cos(), freqs.sin()
        causal = torch.ones(length, length, dtype=torch.bool).tril()
        allowed = causal[None, None] & attention_mask.bool()[:, None, None, :]
        bias = torch.zeros(batch, 1, length, length).masked_fill(~allowed, torch.finfo(torch.float32).min)
        hidden = F.embedding(input_ids, w["model.embed_tokens.weight"]) * c["scale_emb"]
        for i in range(cutoff):
            p = f"model.layers.{i}."
            x = rms_norm(hidden, w[p + "input_layernorm.weight"], eps)
            q = (x @ w[p + "self_attn.q_proj.weight"].T).view(batch, length, heads, head_dim).transpose(1, 2)
            k = (x @ w[p + "self_attn.k_proj.weight"].T).view(batch, length, kv_heads, head_dim).transpose(1, 2)
            v = (x @ w[p + "self_attn.v_proj.weight"].T).view(batch, length, kv_heads, head_dim).transpose(1, 2)
            q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
            k = k.repeat_interleave(heads // kv_heads, dim=1)
            v = v.repeat_interleave(heads // kv_heads, dim=1)
            scores = q @ k.transpose(2, 3) / math.sqrt(head_dim) + bias
            attended = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(batch, length, -1)
            hidden = hidden + (attended @ w[p + "self_attn.o_proj.weight"].T) * branch
            x = rms_norm(hidden, w[p + "post_attention_layernorm.weight"], eps)
            gate = F.silu(x @ w[p + "mlp.gate_proj.weight"].T)
            mlp = (gate * (x @ w[p + "mlp.up_proj.weight"].T)) @ w[p + "mlp.down_proj.weight"].T
            hidden = hidden + mlp * branch
        normed = rms_norm(hidden, w["model.norm.weight"], eps)
        head = (
            w[f"lm_head.{cutoff - c['start_layer']}.linear_head.weight"]
            if c.get("head_multi", True)
            else w["lm_head.linear_head.weight"]
        )
        return (normed @ head.T).reshape(batch, -1)

    def logits(
        self, pairs: Sequence[tuple[str, str]], cutoff: int, max_length: int = 512, batch_size: int = 4
    ) -> np.ndarray:
        """compute_score: pairs longest first, padded batches, the last real token, original order."""
        ids = flag_inputs(self.tokenizer, pairs, max_length, always_bos=True)
        order = np.argsort([-len(row) for row in ids], kind="stable")
        scores = np.zeros(len(ids), dtype=np.float64)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            features = [{"input_ids": ids[r], "attention_mask": [1] * len(ids[r])} for r in rows]
            batch = self.tokenizer.pad(features, padding=True, pad_to_multiple_of=8, return_tensors="pt")
            mask = batch["attention_mask"]
            with torch.no_grad():
                logits = self.forward(batch["input_ids"], mask, cutoff)
            if int(mask[:, -1].sum()) == mask.shape[0]:  # last_logit_pool_layerwise
                pooled = logits[:, -1]
            else:
                pooled = logits[torch.arange(len(rows)), mask.sum(dim=1) - 1]
            scores[rows] = pooled.numpy()
        return scores

    def score(
        self, query: str, passages: Sequence[str], cutoff: int, max_length: int = 512, batch_size: int = 4
    ) -> np.ndarray:
        return self.logits([(query, p) for p in passages], cutoff, max_length, batch_size)
