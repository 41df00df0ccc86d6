"""Alibaba-NLP/gte-multilingual-reranker-base: the GTE team's "New" encoder (`NewForSequenceClassification`).

The checkpoint's code is remote (`Alibaba-NLP/new-impl`, modeling.py and configuration.py), read, never run: this
module is a native port of the math `NewForSequenceClassification.forward` computes on a padded batch (eager
attention; the xformers and unpadded paths compute the same function with a block-diagonal mask):

    h       = LayerNorm(E[input_ids] + T[0])                 T: token-type embeddings (type 0), when type_vocab_size > 0
    per layer (post-norm):
      q, k, v = split(h W_qkv + b_qkv)                       (or q_proj, k_proj, v_proj when pack_qkv is false)
      q, k    = rope(q), rope(k)                             rotate-half RoPE at positions 0..L-1
      h       = attn_ln(h + softmax(q k^T / sqrt(d) + mask) v W_o + b_o)
      up, g   = split(h W_up_gate)                           up first, then the gate
      h       = mlp_ln(h + (act(g) * up) W_down + b_down)
    logit   = classifier(tanh(pooler.dense(h[:, 0])))        the first (<s>) token

RoPE frequencies: inv_freq_i = base^(-2i/d); with `rope_scaling` {"type": "ntk", "factor": f} the remote code
builds its cache for f * max_position_embeddings positions at load, which (f > 1) replaces them for every position
by fixed NTK scaling, inv_freq_i = (base f)^(-2i/d) / f^(2/d), or with `mixed_b` b,
inv_freq_i = base^(-2i/d) / exp(ln(f) / (d/2)^b * (i+1)^b).
Pairs are the XLM-R tokenizer's pair template, cut as the cross-encoder cuts them, padded on the right (the remote
code numbers positions 0..L-1 whatever the mask, so right padding is what it scores as unpadded).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from rerankrt.errors import UnsupportedModelError
from rerankrt.families.base import (
    SCORER,
    ExportHints,
    Family,
    GraphSpec,
    PairEncoder,
    TorchGraph,
    load_fast_tokenizer,
    resolve_max_length,
)
from rerankrt.families.cross_encoder import CrossEncoderPairEncoder, num_labels
from rerankrt.families.minicpm_layerwise import read_tensors
from rerankrt.model_source import read_config

log = logging.getLogger(__name__)

ARCHITECTURE = "NewForSequenceClassification"
MODEL_TYPE = "new"
INPUTS = ("input_ids", "attention_mask")


@dataclass(frozen=True)
class GteConfig:
    """The fields of config.json the score depends on, with `NewConfig`'s defaults."""

    vocab_size: int
    hidden_size: int
    layers: int
    heads: int
    intermediate_size: int
    hidden_act: str
    type_vocab_size: int
    max_positions: int
    layer_norm_eps: float
    rope_theta: float
    rope_factor: float | None
    rope_mixed_b: float | None
    pack_qkv: bool

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.heads

    @classmethod
    def of(cls, config: Mapping) -> GteConfig:
        refuse = {
            "position_embedding_type": ("rope", "rope"),
            "layer_norm_type": ("layer_norm", "layer_norm"),
            "logn_attention_scale": (False, False),
        }
        for key, (default, wanted) in refuse.items():
            if config.get(key, default) != wanted:
                raise UnsupportedModelError(f"config.json {key} {config.get(key)!r}: only {wanted!r} is ported")
        if num_labels(dict(config)) != 1:
            raise UnsupportedModelError(f"the classification head has {num_labels(dict(config))} labels; needs 1")
        scaling = config.get("rope_scaling")
        if scaling is not None:
            kind = scaling.get("type") if isinstance(scaling, Mapping) else None
            if kind != "ntk":
                raise UnsupportedModelError(f"rope_scaling {scaling!r}: the remote code takes only type 'ntk'")
        try:
            hidden, heads = int(config.get("hidden_size", 768)), int(config.get("num_attention_heads", 12))
            if hidden <= 0 or heads <= 0 or hidden % heads or (hidden // heads) % 2:
                raise ValueError(f"hidden_size {hidden} over {heads} heads is not an even head size")
            return cls(
                vocab_size=int(config.get("vocab_size", 30528)), hidden_size=hidden,
                layers=int(config.get("num_hidden_layers", 12)), heads=heads,
                intermediate_size=int(config.get("intermediate_size", 3072)),
                hidden_act=str(config.get("hidden_act", "gelu")),
                type_vocab_size=int(config.get("type_vocab_size", 1)),
                max_positions=int(config.get("max_position_embeddings", 2048)),
                layer_norm_eps=float(config.get("layer_norm_eps", 1e-12)),
                rope_theta=float(config.get("rope_theta", 10000.0)),
                rope_factor=None if scaling is None else float(scaling["factor"]),
                rope_mixed_b=None if scaling is None or scaling.get("mixed_b") is None else float(scaling["mixed_b"]),
                pack_qkv=bool(config.get("pack_qkv", True)),
            )  # fmt: skip
        except (KeyError, TypeError, ValueError) as exc:
            raise UnsupportedModelError(f"config.json: a size is missing or not a number ({exc})") from exc

    def inv_freq(self) -> torch.Tensor:
        """The rotary frequencies the remote code's cache is built from (see the module docstring), fp32."""
        d = self.head_dim
        plain_base = self.rope_theta
        factor = self.rope_factor
        if factor is None or not self.max_positions * factor > self.max_positions:
            return 1.0 / (plain_base ** (torch.arange(0, d, 2).float() / d))
        base = plain_base * (factor if self.rope_mixed_b is None else 1)
        inv_freq = 1.0 / (base ** (torch.arange(0, d, 2).float() / d))
        if self.rope_mixed_b is None:
            return inv_freq / factor ** (2 / d)
        a = torch.tensor(factor).log() / (d / 2) ** self.rope_mixed_b
        return inv_freq / (a * torch.arange(1, d // 2 + 1).float() ** self.rope_mixed_b).exp()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class _Embeddings(nn.Module):
    def __init__(self, config: GteConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        if config.type_vocab_size > 0:
            self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        embeddings = self.word_embeddings(input_ids)
        if hasattr(self, "token_type_embeddings"):  # the tokenizer gives no type ids: type 0 throughout
            embeddings = embeddings + self.token_type_embeddings.weight[0]
        return self.LayerNorm(embeddings)


class _Attention(nn.Module):
    def __init__(self, config: GteConfig):
        super().__init__()
        self.heads, self.head_dim = config.heads, config.head_dim
        self.qkv_proj = nn.Linear(config.hidden_size, config.hidden_size * 3)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden, bias, cos, sin):
        batch, length, _ = hidden.shape
        q, k, v = self.qkv_proj(hidden).view(batch, length, 3, self.heads, self.head_dim).unbind(2)
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [batch, heads, length, head_dim]
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim) + bias
        context = torch.matmul(scores.softmax(dim=-1), v).transpose(1, 2).reshape(batch, length, -1)
        return self.o_proj(context)


class _GatedMLP(nn.Module):
    def __init__(self, config: GteConfig):
        from transformers.activations import ACT2FN

        super().__init__()
        self.intermediate_size = config.intermediate_size
        self.up_gate_proj = nn.Linear(config.hidden_size, config.intermediate_size * 2, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, hidden):
        up, gate = self.up_gate_proj(hidden).split(self.intermediate_size, dim=-1)
        return self.down_proj(self.act_fn(gate) * up)


class _Layer(nn.Module):
    def __init__(self, config: GteConfig):
        super().__init__()
        self.attention = _Attention(config)
        self.mlp = _GatedMLP(config)
        self.attn_ln = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp_ln = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden, bias, cos, sin):
        hidden = self.attn_ln(hidden + self.attention(hidden, bias, cos, sin))
        return self.mlp_ln(hidden + self.mlp(hidden))


class _Encoder(nn.Module):
    def __init__(self, config: GteConfig):
        super().__init__()
        self.layer = nn.ModuleList(_Layer(config) for _ in range(config.layers))


class _Pooler(nn.Module):
    def __init__(self, config: GteConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)


class _Backbone(nn.Module):
    def __init__(self, config: GteConfig):
        super().__init__()
        self.embeddings = _Embeddings(config)
        self.encoder = _Encoder(config)
        self.pooler = _Pooler(config)


class GteNewScorer(nn.Module):
    """`forward(input_ids, attention_mask) -> float32 logits [batch]`; parameters named as the checkpoint's."""

    def __init__(self, config: GteConfig):
        super().__init__()
        self.config = config
        self.new = _Backbone(config)
        self.classifier = nn.Linear(config.hidden_size, 1)
        self.register_buffer("inv_freq", config.inv_freq(), persistent=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        dtype = self.classifier.weight.dtype
        positions = torch.arange(input_ids.shape[1], device=input_ids.device, dtype=torch.float32)
        angles = positions[:, None] * self.inv_freq[None, :]
        angles = torch.cat((angles, angles), dim=-1)[None, :, None, :]  # [1, length, 1, head_dim]
        cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
        keep = attention_mask[:, None, None, :].to(dtype)
        bias = (1.0 - keep) * torch.finfo(dtype).min  # transformers' extended attention mask
        hidden = self.new.embeddings(input_ids)
        for layer in self.new.encoder.layer:
            hidden = layer(hidden, bias, cos, sin)
        pooled = torch.tanh(self.new.pooler.dense(hidden[:, 0]))
        return self.classifier(pooled)[:, 0].float()


def checkpoint_keys(config: GteConfig) -> dict[str, list[str]]:
    """Scorer parameter -> the checkpoint tensors it is made of (several: q, k, v concatenated)."""
    keys = {"new.embeddings.word_embeddings.weight": [], "new.embeddings.LayerNorm.weight": []}
    keys |= {"new.embeddings.LayerNorm.bias": []}
    if config.type_vocab_size > 0:
        keys["new.embeddings.token_type_embeddings.weight"] = []
    for i in range(config.layers):
        layer = f"new.encoder.layer.{i}."
        for part in ("weight", "bias"):
            qkv = [f"{layer}attention.{p}_proj.{part}" for p in "qkv"]
            keys[f"{layer}attention.qkv_proj.{part}"] = [] if config.pack_qkv else qkv
            for name in ("attention.o_proj", "mlp.down_proj", "attn_ln", "mlp_ln"):
                keys[f"{layer}{name}.{part}"] = []
        keys[f"{layer}mlp.up_gate_proj.weight"] = []
    keys |= {f"{m}.{p}": [] for m in ("new.pooler.dense", "classifier") for p in ("weight", "bias")}
    return {name: sources or [name] for name, sources in keys.items()}


def load_gte_new(model_dir: Path, dtype: torch.dtype | None = None) -> GteNewScorer:
    """The checkpoint's weights in the native scorer, `dtype` (fp32 unless asked), eval mode."""
    config = GteConfig.of(read_config(model_dir))
    keys = checkpoint_keys(config)
    tensors = read_tensors(model_dir, sorted({key for sources in keys.values() for key in sources}))
    state = {name: torch.cat([tensors[key].float() for key in sources]) for name, sources in keys.items()}
    scorer = GteNewScorer(config)
    try:
        scorer.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # a tensor of another shape than config.json says
        raise UnsupportedModelError(f"{model_dir}: the weights do not fit config.json ({exc})") from exc
    return scorer.to(dtype or torch.float32).eval()


class GteNewFamily(Family):
    name = "gte-new"
    default_max_length = 512  # the model card's snippet cuts pairs at 512; --max-length takes up to 8192
    export_hints = ExportHints(int8_keep_float=(r"(^|/)classifier/",))  # the one-logit head: tiny, sets the scale

    @classmethod
    def recognise(cls, config: dict, model_dir: Path) -> str | None:
        if ARCHITECTURE not in (config.get("architectures") or []) or config.get("model_type") != MODEL_TYPE:
            return None
        if num_labels(config) != 1:
            return None
        return f"{ARCHITECTURE} (model_type {MODEL_TYPE}, the GTE 'New' encoder) with one label"

    @classmethod
    def describe(cls) -> str:
        return f"{cls.name}: Alibaba-NLP/gte-multilingual-reranker-base ({ARCHITECTURE} with one label)"

    def load_encoder(
        self, model_dir: Path, max_length: int | None = None, chat_template: Path | None = None
    ) -> PairEncoder:
        if chat_template is not None:
            log.warning("a cross-encoder has no prompt template: --chat-template %s is ignored", chat_template)
        tokenizer = load_fast_tokenizer(model_dir)
        encoder = CrossEncoderPairEncoder(tokenizer, resolve_max_length(model_dir, max_length, self.default_max_length))
        encoder.input_names = INPUTS  # the remote code reads no token type ids (type 0 throughout)
        return encoder

    def load_export_model(self, model_dir: Path, dtype: torch.dtype | None = None) -> torch.nn.Module:
        return load_gte_new(model_dir, dtype)

    def wrap_scorer(self, export_model: torch.nn.Module) -> torch.nn.Module:
        return export_model  # it is the scorer: input_ids, attention_mask -> logits [batch]

    def graphs(self, export_model: torch.nn.Module, encoder: PairEncoder) -> list[GraphSpec]:
        ids = torch.full((2, 7), 5, dtype=torch.long)
        mask = torch.ones(2, 7, dtype=torch.long)
        mask[1, 4:] = 0
        axes = {0: ("batch", 1), 1: ("sequence", 2)}
        return [
            TorchGraph(
                role=SCORER, file="model.onnx", module=export_model.eval(), args=(ids, mask), input_names=INPUTS,
                output_names=("logits",), dynamic_axes=(axes, axes),
            )
        ]  # fmt: skip
