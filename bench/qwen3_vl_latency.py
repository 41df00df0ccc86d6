"""Latency of one Qwen3-VL rerank request: a text query, 8 documents each holding one 512x512 image.

Times preprocessing (encode: resize, patches, prompt) and scoring, with the reranker's default pixel
bounds (512x512 stays 512x512: 256 visual tokens per image).

    python -m bench.qwen3_vl_latency tiny  ARTIFACT_DIR MODEL_DIR   # exported tiny model: onnxruntime and torch
    python -m bench.qwen3_vl_latency 2b    MODEL_DIR                # random Qwen3-VL-2B-sized weights, torch bf16
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.lib.models import build_qwen3_vl_2b
from bench.lib.timing import once
from rerankrt.families.qwen3_vl.media import MediaConfig


def request(seed: int = 0):
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)) for _ in range(8)]
    docs = [[{"type": "image", "image": im}, {"type": "text", "text": f"photo {i}"}] for i, im in enumerate(images)]
    return "a giant panda eating bamboo", docs


def latency(reranker, repeats: int = 3) -> dict:
    """The best of `repeats` of encoding (preprocessing) and of scoring the request, each timed apart."""
    reranker.encoder.media = MediaConfig()  # the reranker's own bounds, whatever the fixture chose
    query, docs = request()
    encode, score = [], []
    for _ in range(repeats):
        seconds, pairs = once(lambda: reranker.encoder.encode(query, docs))
        encode.append(seconds)
        score.append(once(lambda pairs=pairs: reranker.scheduler.submit(pairs).result())[0])  # the Reranker's batching
    return {
        "backend": reranker.backend.name,
        "tokens_per_pair": int(np.mean([len(p["input_ids"]) for p in pairs])),
        "encode_s": round(min(encode), 3),
        "score_s": round(min(score), 3),
    }


def main() -> None:
    from rerankrt.runtime import Reranker, RerankerSettings

    torch.set_num_threads(2)
    if sys.argv[1] == "tiny":
        for path, backend in ((sys.argv[2], "onnxruntime"), (sys.argv[3], "torch")):
            print(json.dumps({"model": "tiny", **latency(Reranker.load(path, backend=backend, threads=2))}))
    else:
        from rerankrt.families import get_family
        from rerankrt.precision import Precision
        from rerankrt.runtime.loader import LoadedModel
        from rerankrt.runtime.plan import ServingPlan
        from rerankrt.runtime.torch_backend import TorchBackend

        folder = build_qwen3_vl_2b(Path(sys.argv[2]))
        family = get_family("qwen3-vl-yes-no")  # a plain folder's bf16 weights: no export, no plan to choose
        plan = ServingPlan("torch", "cpu", Precision.BF16, weights=str(folder), threads=2)
        backend = TorchBackend.from_plan(plan, family)
        model = LoadedModel(family, family.load_encoder(folder), backend, plan, "qwen3-vl-2b-sized")
        reranker = Reranker(model, RerankerSettings(model_path=str(folder)))
        print(json.dumps({"model": "qwen3-vl-2b-sized, random, bf16", **latency(reranker, repeats=1)}))


if __name__ == "__main__":
    main()
