"""Decoder rerankers with and without prefix reuse, against the model card's code, as the shared prompt's share of each
pair grows.

A Qwen3-Reranker-0.6B-sized model (hidden 1024, 28 layers, vocab 151669, tied, random weights: speed does not depend
on the weights' values) is exported once, with `--precision bf16` by default (so the artifact serves fp32 and the
gate-checked bf16; `--precision fp32` for the fp32 rows alone). Workloads (query, instruction, documents) span the
prefix share, the shared prompt's tokens over each pair's mean tokens. Rows, same inputs, same run: the model card's
transformers code in fp32 (the baseline users run), rerankrt's fp32 path with whole prompts (today's path) and with
prefix reuse (exact), and the bf16 rows on every CPU backend this checkout has. A row whose backend cannot load here
is skipped with the reason. Each row: pairs/s (one warm-up request of 2 documents, then the workload timed once),
ratio vs the card and vs the fp32 whole-prompt path, max |Δ P(yes)| vs the card.

    .venv/bin/python -m bench.prefix_reuse                          # ~30 min on 2 cores
    .venv/bin/python -m bench.prefix_reuse --layers 4 --workloads typical     # quick look
    .venv/bin/python -m bench.prefix_reuse --precision fp32 --build-only      # export while the machine is busy,
    .venv/bin/python -m bench.prefix_reuse --precision fp32 --reuse-export    # then measure on the quiet machine
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
from pathlib import Path

import numpy as np

from bench.lib.models import build_qwen3_sized, qwen3_card_p_yes
from bench.lib.plotting import prefix_reuse_figure
from bench.lib.results import log, machine, markdown_table, write_result
from bench.lib.text import documents_of_about
from bench.lib.timing import once, repeat
from rerankrt.runtime.fidelity import sigmoid
from rerankrt.testing.tiny_models import build_qwen3_tokenizer

TYPICAL_QUERY = "what is the giant panda and where does it live?"
LONG_INSTRUCTION = (
    "Given a question asked by a customer of an online encyclopedia about animals, their habitats and their "
    "conservation status, retrieve the passages that answer the question directly, preferring passages that cite "
    "figures, places and dates, and ignoring passages that only mention the animal in passing"
)
LONG_QUERY = (
    "I am writing a school report on large mammals of central China: what is the giant panda, which mountain "
    "ranges does it live in today, what does it eat through the year, and how many are left in the wild?"
)
# name -> (instruction or None for the card's default, query, documents, tokens per document)
WORKLOADS = {
    "short docs": (None, TYPICAL_QUERY, 32, 60),
    "typical": (None, TYPICAL_QUERY, 32, 200),
    "long query + instruction": (LONG_INSTRUCTION, LONG_QUERY, 32, 200),
    "long docs": (None, TYPICAL_QUERY, 16, 600),
}
CARD = "model card (transformers fp32)"
TODAY = "rerankrt fp32 onnxruntime, whole prompts (today)"
ROWS = {  # label -> Reranker.load options
    TODAY: {"backend": "onnxruntime", "precision": "fp32", "prefix_reuse": False},
    "rerankrt fp32 onnxruntime, prefix reuse": {"backend": "onnxruntime", "precision": "fp32", "prefix_reuse": True},
    "rerankrt fp32 openvino, whole prompts": {"backend": "openvino", "precision": "fp32", "prefix_reuse": False},
    "rerankrt fp32 openvino, prefix reuse": {"backend": "openvino", "precision": "fp32", "prefix_reuse": True},
    "rerankrt bf16 torch, whole prompts": {"backend": "torch", "precision": "bf16", "prefix_reuse": False},
    "rerankrt bf16 torch, prefix reuse": {"backend": "torch", "precision": "bf16", "prefix_reuse": True},
    "rerankrt bf16 openvino, whole prompts": {"backend": "openvino", "precision": "bf16", "prefix_reuse": False},
    "rerankrt bf16 openvino, prefix reuse": {"backend": "openvino", "precision": "bf16", "prefix_reuse": True},
}


def time_workload(score, docs: list[str]) -> tuple[float, np.ndarray]:
    """One warm-up call on 2 documents, then `score(docs)` timed once: (seconds, scores)."""
    timing = repeat(lambda: score(docs), 1, warm_up=lambda: score(docs[:2]))
    return timing.best, np.asarray(timing.output, dtype=np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=28)
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--batch-size", type=int, default=8, help="the card's batch and rerankrt's max batch")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/rerankrt-bench-prefix"))
    parser.add_argument(
        "--precision",
        default="bf16",
        choices=["fp32", "bf16"],
        help="the export's variant (bf16 rows "
        "need bf16; its fidelity gate on 28 layers takes long on CPUs without fast bf16)",
    )
    parser.add_argument(
        "--reuse-export",
        action="store_true",
        help="use WORKDIR/model and WORKDIR/artifact as they are "
        "(e.g. built by `--build-only` or by hand while the machine was busy)",
    )
    parser.add_argument("--build-only", action="store_true", help="build and export, then stop")
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM

    from rerankrt.export import export_model
    from rerankrt.runtime import Reranker

    model_dir, artifact = args.workdir / "model", args.workdir / "artifact"
    tokenizer = build_qwen3_tokenizer()
    yes, no = tokenizer.convert_tokens_to_ids("yes"), tokenizer.convert_tokens_to_ids("no")
    export_s = None
    if not args.reuse_export:
        shutil.rmtree(args.workdir, ignore_errors=True)
        build_qwen3_sized(model_dir, args.layers)
        log(f"exporting {model_dir} ({args.precision}) ...")
        export_s, _ = once(lambda: export_model(str(model_dir), artifact, precision=args.precision))
        log(f"exported in {export_s:.0f} s")
    if args.build_only:
        return
    card_model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    results: dict = {}

    workloads = {}
    for name in args.workloads:  # inputs, and the card's scores and speed (the reference of every row)
        instruction, query, count, tokens = WORKLOADS[name]
        docs = documents_of_about(tokenizer, count, tokens, seed=1)

        def card(docs, instruction=instruction, query=query):
            return qwen3_card_p_yes(card_model, model_dir, yes, no, query, docs, args.batch_size, instruction)

        seconds, reference = time_workload(card, docs)
        workloads[name] = (instruction, query, docs, reference)
        results[name] = {"documents": count, "rows": {CARD: {"pairs_per_s": count / seconds}}}
        log(f"{name}: {CARD} {count / seconds:.3f} pairs/s")
    card_model = None  # free it before the engines load

    skipped = {}
    for label in args.rows:  # one engine loaded at a time: a 0.6B fp32 model is 2.4 GB per loaded graph
        try:
            reranker = Reranker.load(str(artifact), max_batch_size=args.batch_size, **ROWS[label])
        except Exception as exc:  # a backend this checkout or machine lacks: the row says why
            skipped[label] = f"{type(exc).__name__}: {exc}"
            log(f"{label}: skipped ({skipped[label]})")
            continue
        for name, (instruction, query, docs, reference) in workloads.items():
            pairs = reranker.encoder.encode(query, docs, instruction)
            if results[name].get("prefix_share") is None and "prefix_length" in pairs[0]:  # a row with reuse on
                prompt = float(np.mean([len(p["input_ids"]) for p in pairs]))
                shared = int(min(p["prefix_length"][0] for p in pairs))
                results[name].update(
                    prompt_tokens_mean=prompt, shared_prefix_tokens=shared, prefix_share=shared / prompt
                )

            def run(docs, reranker=reranker, instruction=instruction, query=query):
                return reranker.score(query, docs, instruction)

            seconds, logits = time_workload(run, docs)
            diff = float(np.abs(sigmoid(logits) - reference).max())
            results[name]["rows"][label] = {"pairs_per_s": len(docs) / seconds, "max_abs_diff_vs_card": diff}
            log(f"{name}: {label} {len(docs) / seconds:.3f} pairs/s, max |ΔP(yes)| {diff:.1e}")
        reranker.close()
        del reranker
        gc.collect()
    for result in results.values():
        rows = result["rows"]
        rows[CARD]["max_abs_diff_vs_card"] = 0.0
        for row in rows.values():
            row["vs_card"] = row["pairs_per_s"] / rows[CARD]["pairs_per_s"]
            if TODAY in rows:
                row["vs_today"] = row["pairs_per_s"] / rows[TODAY]["pairs_per_s"]

    data = {
        "benchmark": "prefix_reuse",
        "config": {**vars(args), "workdir": str(args.workdir)},
        "machine": machine(),
        "export_seconds": export_s,
        "bf16_gate": json.loads((artifact / "fidelity.json").read_text()) if args.precision == "bf16" else None,
        "skipped": skipped,
        "results": results,
    }
    path = write_result(f"prefix_reuse_L{args.layers}", data)
    table = []
    for name, result in results.items():
        share = "–" if result.get("prefix_share") is None else f"{result['prefix_share']:.0%}"
        table += [[name, share, label, f"{row['pairs_per_s']:.3f}", f"{row['vs_card']:.2f}x",
                   f"{row.get('vs_today', float('nan')):.2f}x", f"{row['max_abs_diff_vs_card']:.1e}"]
                  for label, row in result["rows"].items()]  # fmt: skip
    header = ["workload", "prefix share", "row", "pairs/s", "vs model card", "vs today's fp32",
              "max abs ΔP(yes) vs card"]  # fmt: skip
    print("\n" + markdown_table(header, table))
    prefix_reuse_figure(results, png := path.with_suffix(".png"))
    print(f"written {path} and {png}")


if __name__ == "__main__":
    main()
