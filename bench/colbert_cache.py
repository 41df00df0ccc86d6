"""What the document cache saves a late-interaction (ColBERT) model: a request whose documents were scored before
costs about its query's encoding and MaxSim, not the documents' encoding.

A random-weight ColBERT of answerai-colbert-small-v1's shape (BERT, 12 layers, hidden 384, Dense to 96;
`--size tiny` for the test model), exported fp32 and served by ONNX Runtime; one request of 32 documents of about
`document_length` (180) tokens, timed (median of `--repeats`), as the model sees it (`backend.run` on the encoded
batch) and as a caller does (`Reranker.logits`: tokenisation, the encoding thread and the scheduler included):

  run uncached     the batch with the cache off (`document_cache_bytes=0`): every document encoded every time
  run cached       the same batch again on a warm cache (every document a hit): the query, the lookups, MaxSim
  query alone      the encoder graph on the query by itself (1 x query_length tokens)
  request ...      the same three ways through `Reranker.logits` (first pass: an empty cache, every document a miss)
  encode           the encoder's tokenisation and collation of the request (the same cached or not)

    .venv/bin/python -m bench.colbert_cache
    .venv/bin/python -m bench.colbert_cache --size tiny --results /tmp/cc     # checks the script in seconds

Results: bench/results/colbert_cache.json (the CPU's features beside every figure).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench.lib.results import RESULTS, log, machine, write_result
from bench.lib.text import documents_of_about
from bench.lib.timing import once, repeat
from rerankrt.export import export_model
from rerankrt.runtime import Reranker
from rerankrt.testing.tiny_colbert import build_colbert

SMALL = {"hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 1536}
SIZES = {"small": ({"dim": 96, "query_length": 32, "document_length": 180}, SMALL), "tiny": ({}, None)}
QUERY = "which city is the capital of france and how large is it?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=list(SIZES), default="small")
    parser.add_argument("--documents", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    options, shape = SIZES[args.size]
    with tempfile.TemporaryDirectory(prefix="colbert-cache-") as work:
        model = build_colbert(Path(work) / "model", shape=shape, **options)
        log(f"exporting the {args.size} ColBERT ...")
        export_model(str(model), Path(work) / "artifact")
        result = measure(Path(work) / "artifact", args.documents, args.repeats)
    result |= {"size": args.size, "shape": shape or "tests' tiny", **options, "machine": machine()}
    path = write_result("colbert_cache", result, args.results)
    log(f"{path}: " + ", ".join(f"{k[:-2]} {v * 1e3:.1f} ms" for k, v in result.items() if k.endswith("_s")))


def measure(artifact: Path, count: int, repeats: int) -> dict:
    common = {"backend": "onnxruntime", "tune": False, "self_check": False}
    with Reranker.load(str(artifact), document_cache_bytes=0, **common) as uncached:
        encoder = uncached.encoder
        documents = documents_of_about(encoder.tokenizer, count, encoder.max_length, seed=1)
        encoding = repeat(lambda: encoder.collate(encoder.encode(QUERY, documents)), repeats)
        batch = encoding.output
        run_cold = repeat(lambda: uncached.backend.run(batch), repeats)
        request_cold = repeat(lambda: uncached.logits(QUERY, documents), repeats)
        graph = uncached.backend.sessions["encoder"]
        feeds = {name: batch["query_" + name][:1] for name in graph.input_names}
        alone = repeat(lambda: graph.run(feeds), repeats)
    with Reranker.load(str(artifact), **common) as cached:
        first, _ = once(lambda: cached.logits(QUERY, documents))
        run_warm = repeat(lambda: cached.backend.run(batch), repeats)
        request_warm = repeat(lambda: cached.logits(QUERY, documents), repeats)
        cache = cached.document_cache
        held = {"hits": cache.hits, "misses": cache.misses, "bytes": cache.bytes}
    return {
        "documents": count,
        "document_tokens": int(batch["attention_mask"].sum()),
        "repeats": repeats,
        "run_uncached_s": run_cold.median,
        "run_cached_s": run_warm.median,
        "query_alone_s": alone.median,
        "request_uncached_s": request_cold.median,
        "request_first_pass_s": first,
        "request_cached_s": request_warm.median,
        "encode_s": encoding.median,
        "run_cached_over_uncached": run_warm.median / run_cold.median,
        "run_cached_over_query_alone": run_warm.median / alone.median,
        "cache": held,
    }


if __name__ == "__main__":
    main()
