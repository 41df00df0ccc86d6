"""The two Qwen3-VL score modules (exported as two ONNX graphs, run as they are by the torch backend).

`VisionEncoder` is transformers' vision tower with its grid-dependent tensors
as inputs (see `qwen3_vl_geometry`) and sequences stacked on a batch axis:
patch embedding, interpolated position embedding, 2-D rotary attention within
each sequence, the final merger and the DeepStack mergers, all with the
checkpoint's own modules and weights.

`DecoderScorer` is the text decoder with the visual embeddings scattered at the
image/video placeholder tokens (in their order across the batch), DeepStack
features added after the first decoder layers, and the LM head trimmed to one
row, W[yes] - W[no], applied to the last real token: one logit per row.

`Qwen3VLScorer` joins them for the torch backend and export checks: the same
`Batch` the ONNX backend takes, the same function.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from rerankrt.families.qwen3_vl.geometry import VisionGeometry, vision_plan


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class VisionEncoder(torch.nn.Module):
    """[sequences, merged, window, patch_dim] pixels -> merged embeddings and DeepStack features."""

    def __init__(self, visual: torch.nn.Module):
        super().__init__()
        self.visual = visual
        self.deepstack_indexes = list(visual.deepstack_visual_indexes)

    def forward(self, pixel_values, pos_index, pos_weight, rotary_cos, rotary_sin):
        s, m, window, dim = pixel_values.shape
        visual = self.visual
        dtype = visual.patch_embed.proj.weight.dtype
        x = visual.patch_embed(pixel_values.reshape(-1, dim).to(dtype))
        pos = (visual.pos_embed(pos_index) * pos_weight.unsqueeze(-1).to(dtype)).sum(0)
        x = x.reshape(s, m * window, -1) + pos.reshape(s, m * window, -1)
        cos = rotary_cos.reshape(s, 1, m * window, -1).float()
        sin = rotary_sin.reshape(s, 1, m * window, -1).float()
        features = []
        for layer, block in enumerate(visual.blocks):
            x = x + self._attention(block.attn, block.norm1(x), cos, sin)
            x = x + block.mlp(block.norm2(x))
            if layer in self.deepstack_indexes:
                merger = visual.deepstack_merger_list[self.deepstack_indexes.index(layer)]
                features.append(merger(x).reshape(s, m, -1))
        embeds = visual.merger(x).reshape(s, m, -1)
        return embeds, torch.stack(features)

    @staticmethod
    def _attention(attn, x, cos, sin):
        s, length, _ = x.shape
        q, k, v = attn.qkv(x).reshape(s, length, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        q_rot = (q.float() * cos + _rotate_half(q.float()) * sin).to(q.dtype)
        k_rot = (k.float() * cos + _rotate_half(k.float()) * sin).to(k.dtype)
        out = F.scaled_dot_product_attention(q_rot, k_rot, v, scale=attn.scaling)
        return attn.proj(out.transpose(1, 2).reshape(s, length, -1))


class DecoderScorer(torch.nn.Module):
    """Token ids + visual features -> logit(yes) - logit(no) at each row's last real token, float32 [batch]."""

    def __init__(self, language_model: torch.nn.Module, score_row: torch.Tensor, visual_token_ids: tuple[int, ...]):
        super().__init__()
        self.language_model = language_model
        self.register_buffer("score_row", score_row.detach().float().clone())
        self.visual_token_ids = tuple(int(i) for i in visual_token_ids)

    def forward(self, input_ids, attention_mask, position_ids, visual_embeds, deepstack_embeds):
        lm = self.language_model
        hidden = lm.embed_tokens(input_ids)
        batch, length, width = hidden.shape
        is_visual = torch.zeros_like(input_ids, dtype=torch.bool)
        for token in self.visual_token_ids:
            is_visual = is_visual | (input_ids == token)
        # k-th placeholder of the flattened batch takes visual row k (row V, zeros, serves text tokens)
        slot = torch.cumsum(is_visual.reshape(-1).long(), 0) - 1
        slot = torch.where(is_visual.reshape(-1), slot, torch.full_like(slot, visual_embeds.shape[0]))
        visual_mask = is_visual.unsqueeze(-1)

        def scatter(rows: torch.Tensor) -> torch.Tensor:
            table = torch.cat([rows.to(hidden.dtype), rows.new_zeros(1, width).to(hidden.dtype)])
            return table[slot].reshape(batch, length, width)

        hidden = torch.where(visual_mask, scatter(visual_embeds), hidden)
        cos, sin = lm.rotary_emb(hidden, position_ids)
        mask = self._attention_bias(attention_mask, hidden.dtype)
        for layer_idx, layer in enumerate(lm.layers):
            hidden = layer(hidden, attention_mask=mask, position_embeddings=(cos, sin))
            if layer_idx < deepstack_embeds.shape[0]:
                hidden = hidden + scatter(deepstack_embeds[layer_idx])  # zeros off the placeholders
        hidden = lm.norm(hidden)
        positions = torch.arange(length, device=input_ids.device)
        last = (attention_mask.long() * positions).argmax(-1)
        pooled = hidden[torch.arange(batch, device=input_ids.device), last]
        return pooled.float() @ self.score_row

    @staticmethod
    def _attention_bias(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Additive [batch, 1, seq, seq] mask: causal and padding keys hidden (finite, so padded rows stay finite)."""
        length = attention_mask.shape[1]
        positions = torch.arange(length, device=attention_mask.device)
        causal = positions[None, :] <= positions[:, None]
        allowed = causal[None] & attention_mask.bool()[:, None, :]
        zero = torch.zeros((), dtype=dtype, device=attention_mask.device)
        blocked = torch.full((), torch.finfo(dtype).min, dtype=dtype, device=attention_mask.device)
        return torch.where(allowed, zero, blocked).unsqueeze(1)


def run_vision_calls(pixel_values, grid_thw, geometry: VisionGeometry, encode, xp):
    """Visual embeddings [V, H] and DeepStack features [L, V, H] of a batch, in placeholder order.

    `encode(pixel_values, **grid_inputs) -> (embeds, deepstack)` is one vision call (a graph
    or the torch module); `xp` is the array namespace (numpy or torch) of its outputs.
    """
    plan = vision_plan(grid_thw, geometry)
    window = geometry.merge_size**2
    total = sum(len(call.token_rows) for call in plan)
    embeds = deepstack = None
    for call in plan:
        pixels = pixel_values[_rows(call.patch_rows, xp, pixel_values)].reshape(call.sequences, call.merged, window, -1)
        out, features = encode(pixels, **{k: _as(v, xp, pixel_values) for k, v in call.inputs.items()})
        if embeds is None:
            embeds = _zeros(xp, (total, out.shape[-1]), out)
            deepstack = _zeros(xp, (features.shape[0], total, out.shape[-1]), out)
        rows = _rows(call.token_rows, xp, out)
        embeds[rows] = out.reshape(-1, out.shape[-1])
        deepstack[:, rows] = features.reshape(features.shape[0], -1, out.shape[-1])
    return embeds, deepstack


def _rows(rows: np.ndarray, xp, like):
    return rows if xp is np else torch.from_numpy(rows).to(like.device)


def _as(value: np.ndarray, xp, like):
    return value if xp is np else torch.from_numpy(value).to(like.device)


def _zeros(xp, shape, like):
    if xp is np:
        return np.zeros(shape, dtype=like.dtype)
    return torch.zeros(shape, dtype=like.dtype, device=like.device)


class Qwen3VLScorer(torch.nn.Module):
    """Both modules over one collated `Batch` (torch tensors): what the torch backend runs."""

    def __init__(self, vision: VisionEncoder, decoder: DecoderScorer, geometry: VisionGeometry, deepstack_layers: int):
        super().__init__()
        self.vision = vision
        self.decoder = decoder
        self.geometry = geometry
        self.deepstack_layers = deepstack_layers
        self.hidden_size = decoder.score_row.shape[0]

    def forward(self, input_ids, attention_mask, position_ids, pixel_values, grid_thw, **_ignored):
        dtype = self.decoder.language_model.embed_tokens.weight.dtype
        if grid_thw.shape[0]:
            embeds, deepstack = run_vision_calls(
                pixel_values, grid_thw.cpu().numpy(), self.geometry, self.vision, torch
            )
        else:
            embeds = torch.zeros((0, self.hidden_size), dtype=dtype, device=input_ids.device)
            deepstack = torch.zeros((self.deepstack_layers, 0, self.hidden_size), dtype=dtype, device=input_ids.device)
        return self.decoder(input_ids, attention_mask, position_ids, embeds, deepstack)
