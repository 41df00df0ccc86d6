"""BAAI/bge-reranker-v2-minicpm-layerwise: a MiniCPM decoder with a one-logit head per layer, scored at a cut-off.

The reference is FlagEmbedding's `LayerWiseFlagLLMReranker` (FlagEmbedding/inference/reranker/decoder_only/
layerwise.py, `compute_score(pairs, cutoff_layers=[k])`) over the checkpoint's remote code
(`modeling_minicpm_reranker.py`, `LayerWiseMiniCPMForCausalLM`), read, never run.

Prompt: as for bge-reranker-v2-gemma (`families.bge_gemma`: "A: {query}", "\\n", "B: {passage}", "\\n", the fixed
prompt, FlagEmbedding's cuts and max lengths), except that bos always opens the pair (`LayerWiseLLMReranker`
prepends it unconditionally). Pairs are padded on the tokenizer's side; the score is read at the last real token.

Score at cut-off layer k (the checkpoint's heads cover `start_layer` <= k <= `num_hidden_layers`):

    h_0     = scale_emb * E[input_ids]
    h_(i+1) = layer_i(h_i)      Llama's pre-norm layer, each branch's output times scale_depth / sqrt(num_hidden_layers)
    logit   = norm(h_k)[last real token] . w_k,     w_k = lm_head[k - start_layer].linear_head.weight (one row)

(`head_multi: false` has one head, `lm_head.linear_head`, for every layer.) These are the checkpoint's 'simple'
heads: one row each, which its fine-tune copied from the LM head's 'Yes' row, applied without the `dim_model_base`
scaling the remote code gives its vocabulary-wide 'raw' / 'complex' heads (`compute_score` cannot score with those:
they are refused). `normalize=True` takes a sigmoid, as rerankrt's score does.

Natively, no remote code: MiniCPM is Llama with scalings, and all of them fold into weights at load (scale_emb into
the embedding, scale_depth / sqrt(num_hidden_layers) into each layer's o_proj and down_proj, the last product of
each residual branch). The first k layers, the final norm and w_k then are a transformers
`LlamaForSequenceClassification` (one label, pooling the last non-padding token) with `num_hidden_layers` = k:
layers above the cut-off are neither read nor in the graph, and the graphs (scorer and prefix-reuse decoder), the
torch scorer and the parity check are those of the other decoder families (`families.prefix_reuse`).

The cut-off is an export option (`--family-option cutoff_layer=K`), recorded in the manifest; by default 28, the
layer the model card scores with, where the checkpoint has a head for it, else its last layer (FlagEmbedding's
default when `cutoff_layers` is not given).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rerankrt.errors import UnsupportedModelError
from rerankrt.families import prefix_reuse
from rerankrt.families.base import (
    Batch,
    ExportHints,
    GraphRunner,
    load_fast_tokenizer,
    named,
    resolve_max_length,
)
from rerankrt.families.bge_gemma import FLAG_MAX_LENGTH, BgeGemmaPairEncoder, prompt_overhead
from rerankrt.families.yes_no import pad_token_id
from rerankrt.model_source import read_config

ARCHITECTURE = "LayerWiseMiniCPMForCausalLM"
MODEL_TYPE = "minicpm"
NAME_PATTERN = r"bge-reranker-v2-minicpm-layerwise"
CUTOFF = "cutoff_layer"
DOCUMENTED_CUTOFF = 28  # the model card's cutoff_layers=[28]
HEAD_TYPE = "simple"


@dataclass(frozen=True)
class LayerwiseConfig:
    """The fields of config.json the score depends on, with `LayerWiseMiniCPMConfig`'s defaults."""

    raw: Mapping
    layers: int
    start_layer: int
    head_multi: bool
    head_type: str
    scale_emb: float
    scale_depth: float

    @classmethod
    def of(cls, config: Mapping) -> LayerwiseConfig:
        return cls(
            raw=config,
            layers=int(config.get("num_hidden_layers", 32)),
            start_layer=int(config.get("start_layer", 8)),
            head_multi=bool(config.get("head_multi", True)),
            head_type=str(config.get("head_type", HEAD_TYPE)),
            scale_emb=float(config.get("scale_emb", 1)),
            scale_depth=float(config.get("scale_depth", 1)),
        )

    def default_cutoff(self) -> int:
        return DOCUMENTED_CUTOFF if self.start_layer <= DOCUMENTED_CUTOFF <= self.layers else self.layers

    def head_key(self, cutoff: int) -> str:
        return (
            f"lm_head.{cutoff - self.start_layer}.linear_head.weight"
            if self.head_multi
            else "lm_head.linear_head.weight"
        )

    def llama_config(self, cutoff: int, pad: int):
        """transformers' Llama config of the first `cutoff` layers with a one-label head."""
        from transformers import LlamaConfig

        c = self.raw
        rope = c.get("rope_scaling")
        if rope is not None and (not isinstance(rope, Mapping) or rope.get("type") != "linear"):
            raise UnsupportedModelError(f"rope_scaling {rope!r}: only linear scaling (or none) is supported")
        try:
            heads = int(c["num_attention_heads"])
            return LlamaConfig(
                vocab_size=int(c["vocab_size"]), hidden_size=int(c["hidden_size"]),
                intermediate_size=int(c["intermediate_size"]), num_hidden_layers=cutoff, num_attention_heads=heads,
                num_key_value_heads=int(c.get("num_key_value_heads") or heads),
                head_dim=int(c["hidden_size"]) // heads, hidden_act=c.get("hidden_act", "silu"),
                max_position_embeddings=int(c.get("max_position_embeddings", 2048)),
                rms_norm_eps=float(c.get("rms_norm_eps", 1e-6)), rope_theta=float(c.get("rope_theta", 10000.0)),
                rope_scaling=rope and {"rope_type": "linear", "factor": float(rope["factor"])},
                attention_bias=bool(c.get("attention_bias", False)), mlp_bias=False, tie_word_embeddings=False,
                pad_token_id=pad, num_labels=1, architectures=["LlamaForSequenceClassification"],
            )  # fmt: skip
        except KeyError as exc:
            raise UnsupportedModelError(f"config.json has no {exc}") from exc
        except (TypeError, ValueError, ZeroDivisionError) as exc:
            raise UnsupportedModelError(f"config.json: a size that is not a positive number ({exc})") from exc


def read_layerwise_config(model_dir: Path) -> LayerwiseConfig:
    try:
        config = LayerwiseConfig.of(read_config(model_dir))
    except (TypeError, ValueError) as exc:
        raise UnsupportedModelError(f"{model_dir}/config.json: a layerwise field is not a number ({exc})") from exc
    if config.head_type != HEAD_TYPE:
        raise UnsupportedModelError(
            f"{model_dir}: head_type {config.head_type!r}; FlagEmbedding scores only with one-logit {HEAD_TYPE!r} heads"
        )
    return config


def check_cutoff(config: LayerwiseConfig, value: str | int) -> int:
    """The cut-off layer `value` names, or an error naming the option and the layers the checkpoint has heads for."""
    try:
        cutoff = int(value)
    except (TypeError, ValueError):
        cutoff = None
    if cutoff is None or not config.start_layer <= cutoff <= config.layers:
        raise UnsupportedModelError(
            f"--family-option {CUTOFF}={value}: the checkpoint has a score head for the layers "
            f"{config.start_layer} to {config.layers} only"
        )
    return cutoff


def read_tensors(model_dir: Path, keys: list[str]) -> dict[str, torch.Tensor]:
    """The named tensors from the folder's safetensors or PyTorch weights (one file or an index of shards)."""
    folder = Path(model_dir)
    for index_name, single in (
        ("model.safetensors.index.json", "model.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin"),
    ):
        if (folder / index_name).is_file():
            weight_map = json.loads((folder / index_name).read_text()).get("weight_map", {})
            if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
                raise UnsupportedModelError(f"{folder / index_name}: its weight_map is not names of files")
            if missing := [key for key in keys if key not in weight_map]:
                raise UnsupportedModelError(f"{folder / index_name}: no {missing[0]!r}")
            files: dict[str, list[str]] = {}
            for key in keys:
                files.setdefault(weight_map[key], []).append(key)
        elif (folder / single).is_file():
            files = {single: list(keys)}
        else:
            continue
        tensors: dict[str, torch.Tensor] = {}
        for name, wanted in files.items():
            if Path(name).name != name or not (folder / name).is_file():
                raise UnsupportedModelError(f"{folder}: weight file {name!r} is not a file in the folder")
            tensors.update(_read(folder / name, wanted))
        return tensors
    raise UnsupportedModelError(f"{folder}: no model.safetensors or pytorch_model.bin weights")


def _read(path: Path, keys: list[str]) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as weights:
            present = set(weights.keys())
            if missing := [key for key in keys if key not in present]:
                raise UnsupportedModelError(f"{path}: no {missing[0]!r}")
            return {key: weights.get_tensor(key) for key in keys}
    weights = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if missing := [key for key in keys if key not in weights]:
        raise UnsupportedModelError(f"{path}: no {missing[0]!r}")
    return {key: weights[key] for key in keys}


LAYER_WEIGHTS = (
    "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
    "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
    "input_layernorm.weight", "post_attention_layernorm.weight",
)  # fmt: skip
ATTENTION_BIASES = ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias", "self_attn.o_proj.bias")
BRANCH_OUTPUTS = ("self_attn.o_proj.weight", "self_attn.o_proj.bias", "mlp.down_proj.weight")


def load_layerwise(model_dir: Path, cutoff: int, pad: int, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """The first `cutoff` layers, the final norm and that layer's head as a folded `LlamaForSequenceClassification`
    (see the module docstring), in `dtype` (fp32 unless asked), eval mode."""
    from transformers import LlamaForSequenceClassification
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    dtype = dtype or torch.float32
    config = read_layerwise_config(model_dir)
    cutoff = check_cutoff(config, cutoff)
    llama = config.llama_config(cutoff, pad)
    per_layer = LAYER_WEIGHTS + (ATTENTION_BIASES if llama.attention_bias else ())
    names = {f"model.layers.{i}.{w}": f"model.layers.{i}.{w}" for i in range(cutoff) for w in per_layer}
    names |= {"model.embed_tokens.weight": "model.embed_tokens.weight", "model.norm.weight": "model.norm.weight"}
    names["score.weight"] = config.head_key(cutoff)
    tensors = read_tensors(model_dir, sorted(set(names.values())))
    branch = config.scale_depth / math.sqrt(config.layers)
    state = {}
    for name, key in names.items():
        tensor = tensors[key].float()
        if name == "model.embed_tokens.weight":
            tensor = tensor * config.scale_emb
        elif name.endswith(BRANCH_OUTPUTS):
            tensor = tensor * branch
        elif name == "score.weight" and tensor.shape[0] != 1:
            raise UnsupportedModelError(f"{model_dir}: {key} has {tensor.shape[0]} rows, not one logit")
        state[name] = tensor.to(dtype)
    with torch.device("meta"):  # every weight comes from the checkpoint
        classifier = LlamaForSequenceClassification(llama)
    classifier.load_state_dict(state, strict=True, assign=True)
    classifier.model.rotary_emb = LlamaRotaryEmbedding(llama)  # a buffer computed, not loaded
    return classifier.to(dtype).eval()


class LayerwisePairEncoder(BgeGemmaPairEncoder):
    """FlagEmbedding's prompt and cuts (`BgeGemmaPairEncoder`), bos always first."""

    model_name = "bge-reranker-v2-minicpm-layerwise"

    def first_tokens(self, tokenizer) -> list[int]:
        if tokenizer.bos_token_id is None:
            raise UnsupportedModelError("the tokenizer has no bos token, which LayerWiseFlagLLMReranker puts first")
        return [tokenizer.bos_token_id]


class LayerwiseFamily(prefix_reuse.PrefixReuseFamily):
    name = "bge-minicpm-layerwise"
    default_max_length = FLAG_MAX_LENGTH  # in FlagEmbedding's terms: the encoder adds twice the prompt's tokens
    packed_batches = True  # padding-free batches and multi-item scoring on the torch backend (families.packed)
    export_hints = ExportHints(int8_keep_float=(r"(^|/)score/",))  # the one-logit head: tiny, sets the scale
    options = {
        CUTOFF: "the layer whose head scores (start_layer..num_hidden_layers, default 28 where the checkpoint has it, "
        "else its last); the layers above it are left out of the graph"
    }
    whole_reference = "the first cutoff_layer MiniCPM layers folded into LlamaForSequenceClassification, whole, fp32"

    def __init__(self):
        self.cutoff: int | None = None  # set by `configure`; else the checkpoint's default

    def configure(self, options: Mapping[str, str], model_dir: Path) -> dict[str, str]:
        super().configure(options, model_dir)
        config = read_layerwise_config(model_dir)
        self.cutoff = check_cutoff(config, options.get(CUTOFF, config.default_cutoff()))
        return {CUTOFF: str(self.cutoff)}

    def cutoff_for(self, model_dir: Path) -> int:
        return self.cutoff if self.cutoff is not None else read_layerwise_config(model_dir).default_cutoff()

    @classmethod
    def recognise(cls, config: dict, model_dir: Path) -> str | None:
        if ARCHITECTURE not in (config.get("architectures") or []) or config.get("model_type") != MODEL_TYPE:
            return None
        if config.get("head_type", HEAD_TYPE) != HEAD_TYPE:
            return None
        name = named(model_dir, config, NAME_PATTERN)
        if name is None:
            return None
        return f"{ARCHITECTURE} (model_type {MODEL_TYPE}) with one-logit layer heads, by name {name!r}"

    @classmethod
    def describe(cls) -> str:
        return f"{cls.name}: BAAI/bge-reranker-v2-minicpm-layerwise ({ARCHITECTURE} named so; --family-option {CUTOFF})"

    def load_encoder(
        self, model_dir: Path, max_length: int | None = None, chat_template: Path | None = None
    ) -> LayerwisePairEncoder:
        if chat_template is not None:
            raise UnsupportedModelError(f"{self.name}: the prompt is fixed and token-level; it takes no chat template")
        tokenizer = load_fast_tokenizer(model_dir)
        default = self.default_max_length + prompt_overhead(tokenizer)
        return LayerwisePairEncoder(tokenizer, resolve_max_length(model_dir, max_length, default))

    def load_export_model(self, model_dir: Path, dtype: torch.dtype | None = None) -> torch.nn.Module:
        pad = pad_token_id(load_fast_tokenizer(model_dir))
        return load_layerwise(model_dir, self.cutoff_for(model_dir), pad, dtype)

    def serving_pipeline(self, folder: Path, graphs: Mapping[str, GraphRunner]) -> Callable[[Batch], np.ndarray]:
        config = read_layerwise_config(folder)
        _, heads, head_dim = prefix_reuse.past_geometry(dict(config.raw))
        return prefix_reuse.graph_pipeline(folder, graphs, (self.cutoff_for(folder), heads, head_dim))
