"""Random-weight models of real sizes (the tiny test builders of `rerankrt.testing.tiny_models` at real shapes:
speed does not depend on the weights' values), the model card's Qwen3 scoring, and exporting a variant.

Every builder seeds torch with 0, so the same call writes the same weights: results of different runs compare.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from bench.lib.results import folder_mb, log
from rerankrt.testing.reference import qwen3_card_inputs
from rerankrt.testing.tiny_models import build_qwen3, build_qwen3_vl, build_xlmr

XLMR_VOCAB = 250002
XLMR_SHAPES = {  # name -> the XLMRobertaConfig sizes of the checkpoint it stands for
    "xlmr-base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
    "xlmr-large": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096},
}
# Qwen3-Reranker-0.6B's shape, less the layer count (hidden 1024, 16 heads, 8 KV heads, tied head)
QWEN3_0_6B = {"hidden_size": 1024, "intermediate_size": 3072, "num_attention_heads": 16, "num_key_value_heads": 8,
              "head_dim": 128, "tie_word_embeddings": True, "rope_theta": 1_000_000}  # fmt: skip
QWEN3_VOCAB = 151669


def build_xlmr_sized(out: Path, name: str = "xlmr-base", max_positions: int = 514) -> Path:
    """XLM-R at `name`'s shape (XLMR_SHAPES: xlmr-base is bge-reranker-base, xlmr-large bge-reranker-v2-m3), the
    real vocabulary size, the tiny offline tokenizer; `max_positions` 8194 for bge-reranker-v2-m3's 8192 tokens."""
    shape = XLMR_SHAPES[name]
    return build_xlmr(out, max_positions=max_positions, vocab_size=XLMR_VOCAB, initializer_range=0.02, **shape)


SERVED_XLMR = {"tiny": build_xlmr, "xlmr-base": build_xlmr_sized}  # what the HTTP benchmarks serve by name


def exported_xlmr(name: str, workdir: Path) -> Path:
    """SERVED_XLMR's `name` built in WORKDIR/NAME and exported (fp32, `rerankrt export`'s defaults) to
    WORKDIR/NAME-artifact; the artifact folder."""
    from rerankrt.export import export_model

    artifact = workdir / f"{name}-artifact"
    export_model(str(SERVED_XLMR[name](workdir / name)), artifact)
    return artifact


def build_qwen3_sized(
    out: Path, layers: int = 28, vocab_size: int | None = QWEN3_VOCAB, max_positions: int = 40960
) -> Path:
    """Qwen3-Reranker-0.6B's shape with `layers` layers (28: the real model), the tiny offline tokenizer and a model
    card naming the checkpoint (so the yes/no family recognises it). `vocab_size` None: the tokenizer's own (a
    small embedding, for quick runs)."""
    vocab = {} if vocab_size is None else {"vocab_size": vocab_size}
    return build_qwen3(
        out, max_positions=max_positions, num_hidden_layers=layers, initializer_range=0.02, **QWEN3_0_6B, **vocab
    )


def build_qwen3_vl_2b(out: Path) -> Path:
    """Qwen3-VL-2B geometry (vision 24 x 1024, text 28 x 2048) with random bf16 weights, the tiny model's tokenizer,
    processor and media files."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    build_qwen3_vl(out)  # tokenizer, processor and media files; the weights are replaced below
    tiny = json.loads((out / "config.json").read_text())
    vision = dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, out_hidden_size=2048,
                  num_position_embeddings=2304, deepstack_visual_indexes=[5, 11, 17], patch_size=16,
                  spatial_merge_size=2, temporal_patch_size=2, hidden_act="gelu_pytorch_tanh")  # fmt: skip
    text = dict(vocab_size=tiny["text_config"]["vocab_size"], hidden_size=2048, intermediate_size=6144,
                num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                max_position_embeddings=262144, rope_theta=5_000_000.0, rope_scaling={
                    "rope_type": "default", "mrope_section": [24, 20, 20], "mrope_interleaved": True})  # fmt: skip
    ids = {k: tiny[k] for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")}
    config = Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True, **ids)
    with torch.device("meta"):
        model = Qwen3VLForConditionalGeneration(config).to(torch.bfloat16)
    model = model.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.fill_(1.0)
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    (out / "media_config.json").unlink()
    model.save_pretrained(out)
    return out


def qwen3_card_p_yes(
    model, model_dir: Path, yes: int, no: int, query: str, docs: list[str], batch_size: int, instruction=None
) -> np.ndarray:
    """P(yes) as Qwen3-Reranker's model card computes it (full LM logits, log_softmax over [no, yes]), with its
    transformers `model` already loaded, in batches of `batch_size`: the baseline users run. `yes`, `no`: the two
    tokens' ids (found once, outside the timed calls)."""
    scores = []
    for start in range(0, len(docs), batch_size):
        inputs = qwen3_card_inputs(model_dir, query, docs[start : start + batch_size], instruction)
        with torch.no_grad():
            last = model(**inputs).logits[:, -1, :]
            pair = torch.stack([last[:, no], last[:, yes]], dim=1)
            scores.append(torch.nn.functional.log_softmax(pair, dim=1)[:, 1].exp())
    return torch.cat(scores).numpy()


def export_variant(model_dir: Path, out: Path, precision: str, **options) -> tuple[Path, dict]:
    """`rerankrt export --precision` with --accept-fidelity-loss (random weights give flat scores the gate may
    refuse; the report is recorded either way): the folder, and its export seconds, MB and fidelity report."""
    from rerankrt.export import export_model

    started = time.perf_counter()
    export_model(str(model_dir), out, precision=precision, accept_fidelity_loss=True, force=True, **options)
    seconds = time.perf_counter() - started
    fidelity = (out / "fidelity.json").read_text() if (out / "fidelity.json").exists() else "{}"
    log(f"exported {out.name} ({precision}) in {seconds:.0f} s, {folder_mb(out):.0f} MB")
    return out, {"seconds": seconds, "mb": folder_mb(out), "fidelity_random_weights": json.loads(fidelity)}
