"""Rough check of exact prefix reuse on CPU: plain vs prefix reuse, fp32 ONNX Runtime, in-process.

A random-weight Qwen3 of reduced size (hidden 1024, `--layers` layers, Qwen3-0.6B's head layout) with the tiny
offline tokenizer, exported once; each mode scores `--docs` documents of about `--doc-tokens` tokens against a
fresh query, `--repeats` times. Rough: the machine is shared. The lead's bench/prefix_reuse.py is the real one.

    python bench/prefix_reuse_quick.py --out /tmp/prefix-bench
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from rerankrt.export import export_model
from rerankrt.runtime import Reranker
from rerankrt.testing.reference import random_text
from rerankrt.testing.tiny_models import build_qwen3_tokenizer, model_card


def build(out: Path, layers: int) -> Path:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tokenizer = build_qwen3_tokenizer()
    config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=1024, intermediate_size=3072, num_hidden_layers=layers,
        num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=4096,
        tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    Qwen3ForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    model_card(out, "Qwen/Qwen3-Reranker-0.6B")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/prefix-bench"))
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--docs", type=int, default=32)
    parser.add_argument("--doc-tokens", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    model, artifact = args.out / "model", args.out / "artifact"
    if not (artifact / "manifest.json").is_file():
        export_model(str(build(model, args.layers)), artifact, force=True)
    rng = np.random.default_rng(0)
    for reuse in (False, True):
        with Reranker.load(str(artifact), backend="onnxruntime", threads=args.threads, prefix_reuse=reuse) as reranker:
            reranker.score("warm up", ["a document", "another document"])
            tokens = reranker.encoder.tokenizer
            seconds = []
            for _ in range(args.repeats):
                query = random_text(rng, 8, 12)
                docs = [random_text(rng, args.doc_tokens // 2, args.doc_tokens // 2) for _ in range(args.docs)]
                started = time.perf_counter()
                reranker.score(query, docs)
                seconds.append(time.perf_counter() - started)
            pairs = reranker.encoder.encode(query, docs)
            prefix = int(pairs[0]["prefix_length"][0]) if "prefix_length" in pairs[0] else 0
            mean_len = np.mean([len(p["input_ids"]) for p in pairs])
            print(
                f"prefix reuse {'on ' if reuse else 'off'}: {args.docs / min(seconds):6.2f} pairs/s (best of "
                f"{args.repeats}), pairs {mean_len:.0f} tokens, prefix {prefix} tokens, tokenizer vocab {len(tokens)}"
            )


if __name__ == "__main__":
    main()
