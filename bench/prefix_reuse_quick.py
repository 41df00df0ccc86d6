"""Rough check of exact prefix reuse on CPU: plain vs prefix reuse, fp32, ONNX Runtime and OpenVINO, in-process.

A random-weight Qwen3 of reduced size (hidden 1024, `--layers` layers, Qwen3-0.6B's head layout) with the tiny
offline tokenizer, exported once; each mode scores `--docs` documents of about `--doc-tokens` tokens against a
fresh query, `--repeats` times. Then, per backend and mode, the peak RSS of a fresh process that loads the artifact
and scores one request (what the loaded graphs hold), and the cost of the decoder graph's present keys/values on a
continuation call (ignored there). Rough: the machine is shared. The lead's bench/prefix_reuse.py is the real one.

    python bench/prefix_reuse_quick.py --out /tmp/prefix-bench
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
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
    parser.add_argument("--backends", nargs="+", default=["onnxruntime", "openvino"])
    parser.add_argument("--rss-of", nargs=3, metavar=("ARTIFACT", "BACKEND", "REUSE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_of:
        return print_load_rss(*args.rss_of)
    model, artifact = args.out / "model", args.out / "artifact"
    if not (artifact / "manifest.json").is_file():
        export_model(str(build(model, args.layers)), artifact, force=True)
    sizes = {p.name: p.stat().st_size / 2**20 for p in artifact.iterdir() if p.name.endswith((".onnx", ".data"))}
    print("artifact files (MiB):", {name: round(size) for name, size in sorted(sizes.items())})
    for backend in args.backends:
        for reuse in (False, True):
            rss = subprocess.run([sys.executable, __file__, "--rss-of", str(artifact), backend, str(reuse)],
                                 check=True, capture_output=True, text=True).stdout.split()[-1]  # fmt: skip
            print(f"{backend} prefix reuse {'on ' if reuse else 'off'}: peak RSS after load + one request {rss} MiB")
    for backend in args.backends:
        throughput(artifact, backend, args)
        present_cost(artifact, backend, args)


def print_load_rss(artifact: str, backend: str, reuse: str) -> None:
    with Reranker.load(artifact, backend=backend, threads=1, prefix_reuse=reuse == "True") as reranker:
        reranker.score("a query about something", ["a document", "another document", "a third one"])
    # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so it would report the parent's (the export's) peak
    peak = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM"))
    print(f"{int(peak.split()[1]) / 1024:.0f}")


def present_cost(artifact: Path, backend: str, args) -> None:
    """One continuation-shaped decoder call (`--docs` rows of `--doc-tokens` after a 64-token past): logits only
    vs every output, and the time to copy the present keys/values alone."""
    from rerankrt.families.prefix_reuse import DECODER, DECODER_OUTPUTS, past_geometry

    with Reranker.load(str(artifact), backend=backend, threads=args.threads) as reranker:
        graph = reranker.backend.sessions[DECODER]
        layers, heads, head_dim = past_geometry(json.loads((artifact / "config.json").read_text()))
        n, s, p = args.docs, args.doc_tokens, 64
        feeds = {"input_ids": np.full((n, s), 5, dtype=np.int64), "attention_mask": np.ones((n, s), dtype=np.int64),
                 "position_ids": np.arange(p, p + s)[None].repeat(n, 0), "past_mask": np.ones((n, p), dtype=np.int64),
                 "past_keys": np.zeros((layers, n, heads, p, head_dim), dtype=np.float32)}  # fmt: skip
        feeds["past_values"] = feeds["past_keys"]

        def best(fn) -> float:
            times = []
            for _ in range(args.repeats + 1):
                started = time.perf_counter()
                fn()
                times.append(time.perf_counter() - started)
            return min(times)

        logits_only = best(lambda: graph.run(feeds, DECODER_OUTPUTS[:1]))
        everything = best(lambda: graph.run(feeds, DECODER_OUTPUTS))
        _, keys, values = graph.run(feeds, DECODER_OUTPUTS)
        copy = best(lambda: (keys.copy(), values.copy()))
        mib = (keys.nbytes + values.nbytes) / 2**20
        print(
            f"{backend} continuation call {n}x{s} after {p}: logits only {logits_only * 1e3:.0f} ms, all outputs "
            f"{everything * 1e3:.0f} ms, copying the present keys/values ({mib:.0f} MiB) {copy * 1e3:.1f} ms"
        )


def throughput(artifact: Path, backend: str, args) -> None:
    rng = np.random.default_rng(0)
    for reuse in (False, True):
        with Reranker.load(str(artifact), backend=backend, threads=args.threads, prefix_reuse=reuse) as reranker:
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
                f"{backend} prefix reuse {'on ' if reuse else 'off'}: {args.docs / min(seconds):6.2f} pairs/s (best of "
                f"{args.repeats}), pairs {mean_len:.0f} tokens, prefix {prefix} tokens, tokenizer vocab {len(tokens)}"
            )


if __name__ == "__main__":
    main()
