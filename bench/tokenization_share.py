"""What share of a request's time tokenisation takes on this CPU, per family: the family's encoder alone (the
tokenizer's batch call, the Qwen3 prompt template) against the whole `Reranker.logits` call it is part of (encode,
batch, run, collect), on the same requests, in the same process.

  xlmr-base    bge-reranker-base's shape, exported fp32 and served by `auto`'s fixed order (OpenVINO on CPU);
               requests of 32 documents of 33-432 tokens (the HTTP burst's).
  qwen3-0.6b   Qwen3-Reranker-0.6B's shape, served from its folder by torch fp32 (its export takes most of an hour
               on 2 cores; the forward pass on OpenVINO is ~1.2x faster, so the share there is a little higher);
               requests of 32 documents of about 200 tokens through the model card's prompt.
  xlmr-tiny    the test XLM-R: checks the script in seconds (its share is no figure: the model is tiny).
The tokenizers are the offline test ones (a trained SentencePiece/BPE of the real algorithm with a small
vocabulary; the real checkpoints' vocabularies cannot be downloaded here): tokenizers' speed depends on the algorithm
and the text's length far more than on the vocabulary's size.

    .venv/bin/python -m bench.tokenization_share
    .venv/bin/python -m bench.tokenization_share --models xlmr-tiny --results /tmp/ts     # checks the script

Results: bench/results/tokenization_share.json (the CPU's features beside every figure).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.lib.models import build_qwen3_sized, build_xlmr_sized
from bench.lib.results import RESULTS, log, machine, write_result
from bench.lib.text import documents_of_about, requests_of_tokens
from bench.lib.timing import repeat
from rerankrt.runtime import Reranker
from rerankrt.testing.tiny_models import build_qwen3_tokenizer, build_xlmr

MODELS = ("xlmr-base", "qwen3-0.6b", "xlmr-tiny")


def served(name: str, work: Path) -> Reranker:
    if name == "qwen3-0.6b":
        model_dir = work / name
        if not (model_dir / "config.json").exists():
            build_qwen3_sized(model_dir)
        return Reranker.load(str(model_dir), tune=False)
    from rerankrt.export import export_model

    artifact = work / f"{name}-artifact"
    if not (artifact / "manifest.json").exists():
        model_dir = build_xlmr(work / name) if name == "xlmr-tiny" else build_xlmr_sized(work / name)
        export_model(str(model_dir), artifact)
    return Reranker.load(str(artifact), tune=False)


def bodies_for(name: str, requests: int, docs: int) -> list[dict]:
    if name == "qwen3-0.6b":
        tokenizer = build_qwen3_tokenizer()
        return [{"query": f"what is the giant panda and where does it live? ({i})",
                 "documents": documents_of_about(tokenizer, docs, 200, seed=i)} for i in range(requests)]  # fmt: skip
    return requests_of_tokens(requests, docs, (33, 432), seed=0)


def measure(name: str, args) -> dict:
    reranker = served(name, args.workdir)
    bodies = bodies_for(name, args.requests, args.docs)
    encoder = reranker.model.encoder

    def encode():
        return [encoder.encode(body["query"], body["documents"]) for body in bodies]

    def score():
        return [reranker.logits(body["query"], body["documents"]) for body in bodies]

    encoding = repeat(encode, args.repeats)
    whole = repeat(score, args.repeats)
    tokens = sum(len(pair["input_ids"]) for request in encoding.output for pair in request)
    reranker.close()
    row = {
        "plan": reranker.model.plan.describe(),
        "requests": len(bodies),
        "documents_per_request": args.docs,
        "tokens": tokens,
        "encode_seconds": round(encoding.median, 4),
        "logits_seconds": round(whole.median, 4),
        "share": round(encoding.median / whole.median, 4),
    }
    log(f"{name}: tokenisation {row['share']:.1%} of the request ({row})")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS[:2]))
    parser.add_argument("--requests", type=int, default=4)
    parser.add_argument("--docs", type=int, default=32, help="documents per request")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/rerankrt-bench-tokenization"))
    parser.add_argument("--results", type=Path, default=RESULTS, help="where tokenization_share.json goes")
    args = parser.parse_args()
    rows = {name: measure(name, args) for name in args.models}
    print(write_result("tokenization_share", {"machine": machine(), "rows": rows}, args.results))


if __name__ == "__main__":
    main()
