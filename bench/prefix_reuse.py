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

    .venv/bin/python bench/prefix_reuse.py                          # ~30 min on 2 cores
    .venv/bin/python bench/prefix_reuse.py --layers 4 --workloads typical     # quick look
    .venv/bin/python bench/prefix_reuse.py --precision fp32 --build-only      # export while the machine is busy,
    .venv/bin/python bench/prefix_reuse.py --precision fp32 --reuse-export    # then measure on the quiet machine
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine, write_result  # noqa: E402
from bench.qwen3_reranker import build_model, card_scores, make_documents  # noqa: E402
from rerankrt.testing.tiny_models import build_qwen3_tokenizer  # noqa: E402

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


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


def timed(score, docs: list[str]) -> tuple[float, np.ndarray]:
    """One warm-up call on 2 documents, then `score(docs)` timed once."""
    score(docs[:2])
    started = time.perf_counter()
    out = np.asarray(score(docs), dtype=np.float64)
    return time.perf_counter() - started, out


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
        build_model(model_dir, args.layers)
        log(f"exporting {model_dir} ({args.precision}) ...")
        started = time.perf_counter()
        export_model(str(model_dir), artifact, precision=args.precision)
        export_s = time.perf_counter() - started
        log(f"exported in {export_s:.0f} s")
    if args.build_only:
        return
    card_model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    results: dict = {}

    workloads = {}
    for name in args.workloads:  # inputs, and the card's scores and speed (the reference of every row)
        instruction, query, count, tokens = WORKLOADS[name]
        docs = make_documents(tokenizer, count, tokens, seed=1)

        def card(docs, instruction=instruction, query=query):
            return card_scores(card_model, model_dir, yes, no, query, docs, args.batch_size, instruction)

        seconds, reference = timed(card, docs)
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

            seconds, logits = timed(run, docs)
            diff = float(np.abs(1 / (1 + np.exp(-logits)) - reference).max())
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
    print("\n| workload | prefix share | row | pairs/s | vs model card | vs today's fp32 | max abs ΔP(yes) vs card |")
    print("|---|---|---|---|---|---|---|")
    for name, result in results.items():
        share = "–" if result.get("prefix_share") is None else f"{result['prefix_share']:.0%}"
        for label, row in result["rows"].items():
            print(
                f"| {name} | {share} | {label} | {row['pairs_per_s']:.3f} | {row['vs_card']:.2f}x | "
                f"{row.get('vs_today', float('nan')):.2f}x | {row['max_abs_diff_vs_card']:.1e} |"
            )
    plot(results, RESULT_PNG := path.with_suffix(".png"))
    print(f"written {path} and {RESULT_PNG}")


def plot(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [label for label in next(iter(results.values()))["rows"]]
    shares = [r.get("prefix_share") or 0 for r in results.values()]
    order = np.argsort(shares)
    fig, ax = plt.subplots(figsize=(9, 5))
    for label in labels:
        ys = [list(results.values())[i]["rows"].get(label, {}).get("vs_card", np.nan) for i in order]
        ax.plot([shares[i] for i in order], ys, marker="o", label=label)
    ax.set_xlabel("shared prompt / pair tokens")
    ax.set_ylabel("pairs/s vs the model card's fp32 code")
    ax.set_title("Qwen3-Reranker-0.6B size, 2 CPU threads")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


if __name__ == "__main__":
    main()
