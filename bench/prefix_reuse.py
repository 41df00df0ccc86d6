"""Decoder rerankers with and without prefix reuse, against the model card's code, as the shared prompt's share of each
pair grows.

A Qwen3-Reranker-0.6B-sized model (hidden 1024, 28 layers, vocab 151669, tied, random weights: speed does not depend
on the weights' values) is exported once, with `--precision bf16` by default (so the artifact serves fp32 and the
gate-checked bf16; `--precision fp32` for the fp32 rows alone). Workloads (query, instruction, documents) span the
prefix share, the shared prompt's tokens over each pair's mean tokens. Rows, same inputs, same run: the model card's
transformers code in fp32 (the baseline users run), rerankrt's fp32 path with whole prompts (today's path) and with
prefix reuse (exact), and the bf16 rows on every CPU backend this checkout has. A row whose backend cannot load here
is skipped with the reason. Each row: pairs/s (one warm-up request of 2 documents, then the workload timed once),
ratio vs the card and vs the fp32 whole-prompt path, max |Δ P(yes)| vs the card, and its share of this CPU's peak
and of the ceiling measured after the rows (bench/lib/gemm.py; `add_peak_shares` says how the work is counted).
Results: bench/results/prefix_reuse_L<layers>.{json,png}.

`--quick`, a rough check on a shared machine, writes no results: a reduced Qwen3 (`--layers`, default 4, the tiny
tokenizer's vocabulary) exported once into --out (reused when there), fp32, plain vs prefix reuse on ONNX Runtime and
OpenVINO in-process: pairs/s on `--docs` documents of about `--doc-tokens` tokens against a fresh query, `--repeats`
times; per backend and mode the peak RSS of a fresh process that loads the artifact and scores one request (what the
loaded graphs hold); and the cost of the decoder graph's present keys/values on a continuation call.

    .venv/bin/python -m bench.prefix_reuse                          # ~30 min on 2 cores
    .venv/bin/python -m bench.prefix_reuse --layers 4 --workloads typical     # quick look
    .venv/bin/python -m bench.prefix_reuse --precision fp32 --build-only      # export while the machine is busy,
    .venv/bin/python -m bench.prefix_reuse --precision fp32 --reuse-export    # then measure on the quiet machine
    .venv/bin/python -m bench.prefix_reuse --quick --out /tmp/prefix-bench    # the rough check, a few minutes
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from bench.lib.gemm import measured_ceiling
from bench.lib.models import build_qwen3_sized, qwen3_card_p_yes
from bench.lib.peak import decoder_flops, decoder_flops_parts, row_precision, share_of_peak, this_cpu
from bench.lib.plotting import prefix_reuse_figure
from bench.lib.results import log, machine, markdown_table, write_result
from bench.lib.text import documents_of_about
from bench.lib.timing import once, repeat
from rerankrt.runtime.fidelity import sigmoid
from rerankrt.testing.reference import random_text
from rerankrt.testing.tiny_models import build_qwen3_tokenizer

REPO = Path(__file__).resolve().parents[1]

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


def add_peak_shares(results: dict, config: dict, ceiling: dict[str, float]) -> None:
    """Each row's arithmetic as a share of this CPU's computed peak (bench/lib/peak.py) and of the `ceiling` measured
    in the same run (bench/lib/gemm.py), at the row's precision, from the workload's mean prompt length. Two counts:
    `share_*` the whole prompt per pair (the card's work, so a prefix-reuse row's share says how fast it delivers
    the card's answer), `computed_share_*` what the row computes (a prefix-reuse row: the suffix against the whole
    prompt; the shared prefix is computed once and cached across requests, the warm-up's included)."""
    cpu = this_cpu()
    per_token, per_query_key = decoder_flops_parts(config)
    for result in results.values():
        if result.get("prompt_tokens_mean") is None:
            continue
        whole, shared = result["prompt_tokens_mean"], result["shared_prefix_tokens"]
        card_flops = decoder_flops(config, whole)
        reuse_flops = per_token * (whole - shared) + per_query_key * (whole - shared) * whole
        for label, row in result["rows"].items():
            precision = row_precision(label)
            done = reuse_flops if "prefix reuse" in label else card_flops
            for prefix, flops in (("", card_flops), ("computed_", done)):
                row[f"{prefix}share_of_peak"] = share_of_peak(flops, row["pairs_per_s"], cpu, precision)
                row[f"{prefix}share_of_measured_ceiling"] = flops * row["pairs_per_s"] / ceiling[precision]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the rough check (see above); writes no results")
    parser.add_argument("--layers", type=int, help="decoder layers (default 28; --quick: 4)")
    parser.add_argument(
        "--workdir", "--out", type=Path, help="default /tmp/rerankrt-bench-prefix (--quick: /tmp/prefix-bench)"
    )
    full = parser.add_argument_group("the full run")
    full.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    full.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    full.add_argument("--batch-size", type=int, default=8, help="the card's batch and rerankrt's max batch")
    full.add_argument(
        "--precision",
        default="bf16",
        choices=["fp32", "bf16"],
        help="the export's variant (bf16 rows "
        "need bf16; its fidelity gate on 28 layers takes long on CPUs without fast bf16)",
    )
    full.add_argument(
        "--reuse-export",
        action="store_true",
        help="use WORKDIR/model and WORKDIR/artifact as they are "
        "(e.g. built by `--build-only` or by hand while the machine was busy)",
    )
    full.add_argument("--build-only", action="store_true", help="build and export, then stop")
    quick = parser.add_argument_group("--quick")
    quick.add_argument("--docs", type=int, default=32)
    quick.add_argument("--doc-tokens", type=int, default=200)
    quick.add_argument("--repeats", type=int, default=2)
    quick.add_argument("--threads", type=int, default=2)
    quick.add_argument("--backends", nargs="+", default=["onnxruntime", "openvino"])
    quick.add_argument("--rss-of", nargs=3, metavar=("ARTIFACT", "BACKEND", "REUSE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.layers is None:
        args.layers = 4 if args.quick else 28
    if args.workdir is None:
        args.workdir = Path("/tmp/prefix-bench" if args.quick else "/tmp/rerankrt-bench-prefix")
    return args


def main() -> None:
    args = parse_args()
    if args.rss_of:
        return print_load_rss(*args.rss_of)
    if args.quick:
        return quick(args)
    measure(args)


def measure(args) -> None:
    """The full run: every workload x row, JSON and PNG to bench/results/prefix_reuse_L<layers>."""
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
    for label in args.rows:  # one Reranker loaded at a time: a 0.6B fp32 model is 2.4 GB per loaded graph
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
                return reranker.logits(query, docs, instruction)

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

    ceiling = measured_ceiling(args.threads)
    add_peak_shares(results, json.loads((model_dir / "config.json").read_text()), ceiling)
    data = {
        "benchmark": "prefix_reuse",
        "config": {**vars(args), "workdir": str(args.workdir)},
        "machine": machine(),
        "export_seconds": export_s,
        "bf16_gate": json.loads((artifact / "fidelity.json").read_text()) if args.precision == "bf16" else None,
        "skipped": skipped,
        "measured_ceiling": ceiling,
        "results": results,
    }
    path = write_result(f"prefix_reuse_L{args.layers}", data)
    print("\n" + markdown(results))
    prefix_reuse_figure(results, png := path.with_suffix(".png"))
    print(f"written {path} and {png}")


def markdown(results: dict) -> str:
    """The results as a table: a row's speed against the card and today's path, its difference from the card, and its
    share of the measured ceiling at its precision (whole prompt; what it computes)."""

    def shares(row: dict) -> str:
        if row.get("share_of_measured_ceiling") is None:
            return ""
        return f"{row['share_of_measured_ceiling']:.0%} ({row['computed_share_of_measured_ceiling']:.0%})"

    table = []
    for name, result in results.items():
        share = "–" if result.get("prefix_share") is None else f"{result['prefix_share']:.0%}"
        table += [[name, share, label, f"{row['pairs_per_s']:.3f}", f"{row['vs_card']:.2f}x",
                   f"{row.get('vs_today', float('nan')):.2f}x", f"{row['max_abs_diff_vs_card']:.1e}", shares(row)]
                  for label, row in result["rows"].items()]  # fmt: skip
    header = ["workload", "prefix share", "row", "pairs/s", "vs model card", "vs today's fp32",
              "max abs ΔP(yes) vs card", "of measured ceiling (computed)"]  # fmt: skip
    return markdown_table(header, table)


def quick(args) -> None:
    """The rough check: prints, writes no results."""
    from rerankrt.export import export_model

    model, artifact = args.workdir / "model", args.workdir / "artifact"
    if not (artifact / "manifest.json").is_file():
        export_model(
            str(build_qwen3_sized(model, args.layers, vocab_size=None, max_positions=4096)), artifact, force=True
        )
    sizes = {p.name: p.stat().st_size / 2**20 for p in artifact.iterdir() if p.name.endswith((".onnx", ".data"))}
    print("artifact files (MiB):", {name: round(size) for name, size in sorted(sizes.items())})
    for backend in args.backends:
        for reuse in (False, True):
            command = [sys.executable, "-m", "bench.prefix_reuse", "--rss-of", str(artifact), backend, str(reuse)]
            rss = subprocess.run(command, cwd=REPO, check=True, capture_output=True, text=True).stdout.split()[-1]
            print(f"{backend} prefix reuse {'on ' if reuse else 'off'}: peak RSS after load + one request {rss} MiB")
    for backend in args.backends:
        throughput(artifact, backend, args)
        present_cost(artifact, backend, args)


def print_load_rss(artifact: str, backend: str, reuse: str) -> None:
    """--quick, in a fresh process: load the artifact, score one request, print the peak RSS in MiB."""
    from rerankrt.runtime import Reranker

    with Reranker.load(artifact, backend=backend, threads=1, prefix_reuse=reuse == "True") as reranker:
        reranker.logits("a query about something", ["a document", "another document", "a third one"])
    # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so it would report the parent's (the export's) peak
    peak = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM"))
    print(f"{int(peak.split()[1]) / 1024:.0f}")


def present_cost(artifact: Path, backend: str, args) -> None:
    """One continuation-shaped decoder call (`--docs` rows of `--doc-tokens` after a 64-token past): logits only
    vs every output, and the time to copy the present keys/values alone."""
    from rerankrt.families.prefix_reuse import DECODER, DECODER_OUTPUTS, past_geometry
    from rerankrt.runtime import Reranker

    with Reranker.load(str(artifact), backend=backend, threads=args.threads) as reranker:
        graph = reranker.backend.sessions[DECODER]
        layers, heads, head_dim = past_geometry(json.loads((artifact / "config.json").read_text()))
        n, s, p = args.docs, args.doc_tokens, 64
        feeds = {"input_ids": np.full((n, s), 5, dtype=np.int64), "attention_mask": np.ones((n, s), dtype=np.int64),
                 "position_ids": np.arange(p, p + s)[None].repeat(n, 0), "past_mask": np.ones((n, p), dtype=np.int64),
                 "past_keys": np.zeros((layers, n, heads, p, head_dim), dtype=np.float32)}  # fmt: skip
        feeds["past_values"] = feeds["past_keys"]

        logits_only = repeat(lambda: graph.run(feeds, DECODER_OUTPUTS[:1]), args.repeats).best
        everything = repeat(lambda: graph.run(feeds, DECODER_OUTPUTS), args.repeats)
        _, keys, values = everything.output
        copy = repeat(lambda: (keys.copy(), values.copy()), args.repeats).best
        mib = (keys.nbytes + values.nbytes) / 2**20
        print(
            f"{backend} continuation call {n}x{s} after {p}: logits only {logits_only * 1e3:.0f} ms, all outputs "
            f"{everything.best * 1e3:.0f} ms, copying the present keys/values ({mib:.0f} MiB) {copy * 1e3:.1f} ms"
        )


def throughput(artifact: Path, backend: str, args) -> None:
    """--quick: pairs/s with prefix reuse off and on, a fresh query and documents each repeat."""
    from rerankrt.runtime import Reranker

    rng = np.random.default_rng(0)
    for reuse in (False, True):
        with Reranker.load(str(artifact), backend=backend, threads=args.threads, prefix_reuse=reuse) as reranker:
            reranker.logits("warm up", ["a document", "another document"])
            tokens = reranker.encoder.tokenizer
            seconds = []
            for _ in range(args.repeats):
                query = random_text(rng, 8, 12)
                docs = [random_text(rng, args.doc_tokens // 2, args.doc_tokens // 2) for _ in range(args.docs)]
                seconds.append(once(lambda q=query, d=docs: reranker.logits(q, d))[0])
            pairs = reranker.encoder.encode(query, docs)
            prefix = int(pairs[0]["prefix_length"][0]) if "prefix_length" in pairs[0] else 0
            mean_len = np.mean([len(p["input_ids"]) for p in pairs])
            print(
                f"{backend} prefix reuse {'on ' if reuse else 'off'}: {args.docs / min(seconds):6.2f} pairs/s (best of "
                f"{args.repeats}), pairs {mean_len:.0f} tokens, prefix {prefix} tokens, tokenizer vocab {len(tokens)}"
            )


if __name__ == "__main__":
    main()
