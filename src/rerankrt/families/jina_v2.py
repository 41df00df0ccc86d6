"""jinaai/jina-reranker-v2-base-multilingual: an XLM-R cross-encoder in Jina's flash-attention remote code.

Its config.json names transformers' architecture, `XLMRobertaForSequenceClassification`, but maps
`AutoModelForSequenceClassification` to the checkpoint's own `modeling_xlm_roberta.py` (adapted from flash-attn's
BERT: `embedding.py`, `mha.py`, `mlp.py`, `block.py`), whose weights have other names; read, never run. On a
padded batch without CUDA flash-attn (and with it: the unpadded kernel is the same function) that code computes
exactly transformers' XLM-R cross-encoder:

    h     = emb_ln(E[ids] + P[positions] + T[0])   positions: padding_idx + 1 + the token's index among non-padding
    per layer (post-norm, `Block(prenorm=False)`):
      h = norm1(h + out_proj(attention(Wqkv h)))     q, k, v: the thirds of Wqkv's output; padded keys masked
      h = norm2(h + fc2(gelu(fc1 h)))                exact gelu for hidden_act "gelu", tanh for gelu_new and kin
    logit = out_proj(tanh(dense(h[:, 0])))           `XLMRobertaClassificationHead` on <s>

so it runs natively as transformers' `XLMRobertaForSequenceClassification` with the weights renamed (Wqkv split
into query, key and value): exported, verified and served as any cross-encoder (pairs and cuts included). The card's
`compute_score` returns sigmoid(logit), which is /v1/rerank's score.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from rerankrt.errors import UnsupportedModelError
from rerankrt.families.base import PairEncoder, load_fast_tokenizer
from rerankrt.families.cross_encoder import (
    FLASH_XLMR_CLASS,
    CrossEncoderFamily,
    CrossEncoderPairEncoder,
    flash_xlmr,
    num_labels,
)
from rerankrt.families.minicpm_layerwise import read_tensors
from rerankrt.model_source import read_config

DOCUMENTED_MAX_LENGTH = 1024  # the card's compute_score(max_length=1024); its positions hold 1024 tokens

LAYER_RENAMES = {  # Jina's Block -> transformers' XLMRobertaLayer
    "mixer.out_proj": "attention.output.dense",
    "norm1": "attention.output.LayerNorm",
    "mlp.fc1": "intermediate.dense",
    "mlp.fc2": "output.dense",
    "norm2": "output.LayerNorm",
}


def xlmr_config(config: Mapping):
    """transformers' XLM-R config of the checkpoint, one label; configs the remote code runs differently refused."""
    from transformers import XLMRobertaConfig

    if config.get("position_embedding_type", "absolute") != "absolute":
        raise UnsupportedModelError(
            f"config.json position_embedding_type {config.get('position_embedding_type')!r}: only 'absolute' is ported"
        )
    if num_labels(dict(config)) != 1:
        raise UnsupportedModelError(f"the classification head has {num_labels(dict(config))} labels; needs 1")
    for flag in ("last_layer_subset", "fused_dropout_add_ln", "fused_mlp", "fused_bias_fc"):
        if config.get(flag):
            raise UnsupportedModelError(f"config.json {flag}: a fused or subset variant is not ported")
    try:
        return XLMRobertaConfig(
            vocab_size=int(config["vocab_size"]), hidden_size=int(config["hidden_size"]),
            num_hidden_layers=int(config["num_hidden_layers"]), num_attention_heads=int(config["num_attention_heads"]),
            intermediate_size=int(config["intermediate_size"]), hidden_act=str(config.get("hidden_act", "gelu")),
            max_position_embeddings=int(config["max_position_embeddings"]),
            type_vocab_size=int(config.get("type_vocab_size", 2)),
            layer_norm_eps=float(config.get("layer_norm_eps", 1e-12)), pad_token_id=int(config.get("pad_token_id", 1)),
            num_labels=1, architectures=["XLMRobertaForSequenceClassification"],
        )  # fmt: skip
    except KeyError as exc:
        raise UnsupportedModelError(f"config.json has no {exc}") from exc
    except (TypeError, ValueError) as exc:
        raise UnsupportedModelError(f"config.json: a size that is not a number ({exc})") from exc


def renamed_state(tensors: Mapping[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors under transformers' XLM-R names (Wqkv split into its three thirds)."""
    state = {
        f"roberta.embeddings.{n}.weight": tensors[f"roberta.embeddings.{n}.weight"]
        for n in ("word_embeddings", "position_embeddings", "token_type_embeddings")
    }
    for part in ("weight", "bias"):
        state[f"roberta.embeddings.LayerNorm.{part}"] = tensors[f"roberta.emb_ln.{part}"]
        for head in ("dense", "out_proj"):
            state[f"classifier.{head}.{part}"] = tensors[f"classifier.{head}.{part}"]
        for i in range(layers):
            source, target = f"roberta.encoder.layers.{i}.", f"roberta.encoder.layer.{i}."
            thirds = tensors[f"{source}mixer.Wqkv.{part}"].chunk(3)
            for name, third in zip(("query", "key", "value"), thirds, strict=True):
                state[f"{target}attention.self.{name}.{part}"] = third
            for old, new in LAYER_RENAMES.items():
                state[f"{target}{new}.{part}"] = tensors[f"{source}{old}.{part}"]
    return state


def checkpoint_keys(layers: int) -> list[str]:
    keys = [
        f"roberta.embeddings.{n}.weight" for n in ("word_embeddings", "position_embeddings", "token_type_embeddings")
    ]
    for part in ("weight", "bias"):
        keys += [f"roberta.emb_ln.{part}", f"classifier.dense.{part}", f"classifier.out_proj.{part}"]
        for i in range(layers):
            source = f"roberta.encoder.layers.{i}."
            keys += [f"{source}mixer.Wqkv.{part}"] + [f"{source}{old}.{part}" for old in LAYER_RENAMES]
    return keys


def load_jina_v2(model_dir: Path, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """The checkpoint as transformers' `XLMRobertaForSequenceClassification`, `dtype` (fp32 unless asked), eval."""
    from transformers import XLMRobertaForSequenceClassification

    config = xlmr_config(read_config(model_dir))
    tensors = read_tensors(model_dir, checkpoint_keys(config.num_hidden_layers))
    state = {name: tensor.float() for name, tensor in renamed_state(tensors, config.num_hidden_layers).items()}
    with torch.device("meta"):  # every weight comes from the checkpoint
        model = XLMRobertaForSequenceClassification(config)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:  # a tensor of another shape than config.json says
        raise UnsupportedModelError(f"{model_dir}: the weights do not fit config.json ({exc})") from exc
    positions = config.max_position_embeddings
    model.roberta.embeddings.register_buffer("position_ids", torch.arange(positions)[None], persistent=False)
    model.roberta.embeddings.register_buffer(
        "token_type_ids", torch.zeros(1, positions, dtype=torch.long), persistent=False
    )
    return model.to(dtype or torch.float32).eval()


class JinaV2Family(CrossEncoderFamily):
    name = "jina-reranker-v2"
    default_max_length = DOCUMENTED_MAX_LENGTH

    @classmethod
    def recognise(cls, config: dict, model_dir: Path) -> str | None:
        if not flash_xlmr(config) or num_labels(config) != 1:
            return None
        return f"XLMRobertaForSequenceClassification in Jina's flash-attention remote code ({FLASH_XLMR_CLASS})"

    @classmethod
    def describe(cls) -> str:
        return f"{cls.name}: jinaai/jina-reranker-v2-base-multilingual (auto_map to {FLASH_XLMR_CLASS}, one label)"

    def load_encoder(
        self, model_dir: Path, max_length: int | None = None, chat_template: Path | None = None
    ) -> PairEncoder:
        config = read_config(model_dir)
        limit = int(config.get("max_position_embeddings", 514)) - int(config.get("pad_token_id", 1)) - 1
        if max_length is not None and max_length > limit:
            raise UnsupportedModelError(f"max_length {max_length} exceeds what the model takes ({limit} tokens)")
        encoder = CrossEncoderPairEncoder(
            load_fast_tokenizer(model_dir), max_length or min(self.default_max_length, limit)
        )
        encoder.input_names = ("input_ids", "attention_mask")  # type 0 throughout, as the remote code reads none
        return encoder

    def load_export_model(self, model_dir: Path, dtype: torch.dtype | None = None) -> torch.nn.Module:
        return load_jina_v2(model_dir, dtype)
