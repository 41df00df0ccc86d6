"""Latency of one Qwen3-VL rerank request: a text query, 8 documents each holding one 512x512 image.

Times preprocessing (encode: resize, patches, prompt) and scoring, with the reranker's default pixel
bounds (512x512 stays 512x512: 256 visual tokens per image).

    python bench/qwen3_vl_latency.py tiny  ARTIFACT_DIR MODEL_DIR   # exported tiny model: onnxruntime and torch
    python bench/qwen3_vl_latency.py 2b    MODEL_DIR                # random Qwen3-VL-2B-sized weights, torch bf16
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rerankrt.families.qwen3_vl.media import MediaConfig


def request(seed: int = 0):
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)) for _ in range(8)]
    docs = [[{"type": "image", "image": im}, {"type": "text", "text": f"photo {i}"}] for i, im in enumerate(images)]
    return "a giant panda eating bamboo", docs


def timed(reranker, repeats: int = 3) -> dict:
    reranker.encoder.media = MediaConfig()  # the reranker's own bounds, whatever the fixture chose
    query, docs = request()
    encode, score = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        pairs = reranker.encoder.encode(query, docs)
        encode.append(time.perf_counter() - start)
        start = time.perf_counter()
        reranker.score_encoded(pairs)
        score.append(time.perf_counter() - start)
    return {
        "backend": reranker.backend.name,
        "tokens_per_pair": int(np.mean([len(p["input_ids"]) for p in pairs])),
        "encode_s": round(min(encode), 3),
        "score_s": round(min(score), 3),
    }


def build_2b(out: Path) -> Path:
    """Qwen3-VL-2B geometry (vision 24 x 1024, text 28 x 2048, vocab 151936) with random bf16 weights."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    from rerankrt.testing.tiny_models import build_qwen3_vl

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


if __name__ == "__main__":
    from rerankrt.runtime import EngineSettings, Reranker

    torch.set_num_threads(2)
    if sys.argv[1] == "tiny":
        for path, backend in ((sys.argv[2], "onnxruntime"), (sys.argv[3], "torch")):
            print(json.dumps({"model": "tiny", **timed(Reranker.load(path, backend=backend, threads=2))}))
    else:
        from rerankrt.families import get_family
        from rerankrt.precision import Precision
        from rerankrt.runtime.loader import LoadedModel
        from rerankrt.runtime.plan import ServingPlan
        from rerankrt.runtime.torch_backend import TorchBackend

        folder = build_2b(Path(sys.argv[2]))
        family = get_family("qwen3-vl-yes-no")  # a plain folder's bf16 weights: no export, no plan to choose
        plan = ServingPlan("torch", "cpu", Precision.BF16, weights=str(folder), threads=2)
        backend = TorchBackend.from_plan(plan, family)
        model = LoadedModel(family, family.load_encoder(folder), backend, plan, "qwen3-vl-2b-sized")
        reranker = Reranker(model, EngineSettings(model_path=str(folder)))
        print(json.dumps({"model": "qwen3-vl-2b-sized, random, bf16", **timed(reranker, repeats=1)}))
