"""The one prepared GPU check: a lent GPU runs it from a fresh checkout in under 8 minutes, end to end.

Needs only torch (with CUDA), transformers, tokenizers and numpy, as the lent machines' image has them: rerankrt
is imported from src/ without installing it (PYTHONPATH=src), nothing is downloaded (every model is built here, and
HF_HUB_OFFLINE=1 says so to transformers), and every part that needs more (pydantic for the Reranker, ONNX
Runtime's CUDA provider, TensorRT) is skipped with its reason when that is missing. Each part is recorded in one
JSON file and a table:

1. the machine: GPU, compute capability, memory, torch / transformers versions, TF32, ONNX Runtime providers,
   TensorRT;
2. the torch CUDA path against the model cards' transformers code on the same GPU and inputs: a
   bge-reranker-v2-m3-sized cross-encoder and a Qwen3-Reranker-0.6B-sized yes/no reranker (random weights), the
   card's code in fp32 and bf16, rerankrt's torch backend in fp32 and bf16: max |Δlogit| against the card in
   fp32, pairs/s, and the ratio to the card in fp32;
3. long positions: the Qwen3-sized model on documents past position 4096 (where half-precision positions break),
   the same four rows;
4. the fp16/bf16 ONNX graphs of tiny Qwen3 / XLM-R models on ONNX Runtime's CUDA provider at positions past
   4096 against the fp32 graph, and TensorRT engines built from them, where the machine has those;
5. padding-free batches (issue 26), run first: for both models the card in fp32 (the reference) and bf16, rerankrt's
   padded torch scorer (today's path, length-sorted batches), packed streams in fp32 (the exactness proof on the
   GPU) and bf16, with CUDA graphs off and on (one bucket, the token budget, compiled at warm-up), and for Qwen3
   multi-item scoring (the shared prompt once, each document after it in the same sequence), graphs off and on:
   pairs/s, tokens run, the share of the GPU's dense bf16 peak (FLOPs of the tokens each path runs, padding left
   out: whole pairs, or for multi-item the prefix once per sequence and each item's own keys) and max |Δlogit|
   against the card in fp32;
6. `rerankrt serve` over HTTP on the bge-reranker-v2-m3-sized model (torch backend): padded, packed, packed with
   CUDA graphs, each at concurrency 1 and 16 with requests of 32 documents (needs fastapi, uvicorn, httpx).

    export PYTHONPATH=src HF_HUB_OFFLINE=1       # from the repository root
    python -m bench.gpu_check                     # on the GPU: bench/results/gpu_check.{json,md}, and $OUT/ if set
    python -m bench.gpu_check --quick             # fewer documents and repeats
    python -m bench.gpu_check --device cpu --tiny # the script's own dry run on any machine (tiny models)
    python -m bench.gpu_check --device cpu --tiny --parts packed serve --docs 6 --repeats 1 --serve-requests 2
                                                  # the dry run CI does (tests/test_gpu_check.py)
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from bench.lib.models import build_qwen3_sized, build_xlmr_sized
from bench.lib.peak import decoder_flops, decoder_flops_parts, encoder_flops, gpu_bf16_peak
from bench.lib.results import RESULTS, markdown_row, markdown_table
from bench.lib.timing import repeat
from rerankrt.testing.reference import QWEN3_DEFAULT_INSTRUCTION, QWEN3_PREFIX, QWEN3_SUFFIX, WORDS
from rerankrt.testing.tiny_models import build_qwen3, build_xlmr

QUERY = "what is the giant panda?"
LONG_TOKENS = 4300  # documents past position 4096


# --- models (random weights, built on the machine: nothing travels) --------------------------------------------------


def bge_m3_sized(out: Path, tiny: bool) -> Path:
    return build_xlmr(out) if tiny else build_xlmr_sized(out, "xlmr-large", max_positions=8194)


def qwen3_06b_sized(out: Path, tiny: bool) -> Path:
    return build_qwen3(out, max_positions=8192) if tiny else build_qwen3_sized(out)


def documents(count: int, seed: int = 0, words: tuple[int, int] = (20, 160)) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(*words)))) for _ in range(count)]


def long_documents(model_dir: Path, count: int, tokens: int) -> list[str]:
    """Documents of about `tokens` tokens (measured with the model's tokenizer)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rng = np.random.default_rng(1)
    out = []
    for _ in range(count):
        words = list(rng.choice(WORDS, size=tokens))
        while len(tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]) > tokens:
            words = words[: int(len(words) * 0.95)]
        out.append(" ".join(words))
    return out


# --- the model cards' code ------------------------------------------------------------------------------------------


def card_cross_encoder(model_dir: Path, dtype: torch.dtype, device: str, batch_size: int):
    """bge-reranker-v2-m3's model card: tokenizer pairs, padding, logits.view(-1) (fed batches of `batch_size`)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=dtype).to(device).eval()

    def score(query: str, docs: list[str]) -> np.ndarray:
        out = []
        for i in range(0, len(docs), batch_size):
            pairs = [[query, d] for d in docs[i : i + batch_size]]
            with torch.no_grad():
                inputs = tokenizer(pairs, padding=True, truncation=True, return_tensors="pt", max_length=512)
                out.append(model(**inputs.to(device)).logits.view(-1).float().cpu().numpy())
        return np.concatenate(out)

    return score


def card_qwen3(model_dir: Path, dtype: torch.dtype, device: str, batch_size: int):
    """Qwen3-Reranker's model card: left padding, the LM's logits, log_softmax over [no, yes]; the logit returned is
    log p(yes) - log p(no), the card's own numbers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    yes, no = tokenizer.convert_tokens_to_ids("yes"), tokenizer.convert_tokens_to_ids("no")
    prefix = tokenizer.encode(QWEN3_PREFIX, add_special_tokens=False)
    suffix = tokenizer.encode(QWEN3_SUFFIX, add_special_tokens=False)

    def score(query: str, docs: list[str]) -> np.ndarray:
        out = []
        for i in range(0, len(docs), batch_size):
            body = f"<Instruct>: {QWEN3_DEFAULT_INSTRUCTION}\n<Query>: {query}\n<Document>: "
            bodies = [body + d for d in docs[i : i + batch_size]]
            enc = tokenizer(bodies, padding=False, truncation="longest_first", return_attention_mask=False,
                            max_length=8192 - len(prefix) - len(suffix))  # fmt: skip
            enc["input_ids"] = [prefix + ids + suffix for ids in enc["input_ids"]]
            inputs = tokenizer.pad(enc, padding=True, return_tensors="pt").to(device)
            with torch.no_grad():
                last = model(**inputs).logits[:, -1, :]
                log_p = torch.log_softmax(torch.stack([last[:, no], last[:, yes]], 1).float(), 1)
            out.append((log_p[:, 1] - log_p[:, 0]).cpu().numpy())
        return np.concatenate(out)

    return score


# --- rerankrt's torch backend -----------------------------------------------------------------------------------------


def rerankrt_torch(
    model_dir: Path, precision: str, device: str, batch_size: int, prefix_reuse: bool = True
) -> tuple[Callable, str]:
    """rerankrt's Reranker on the torch backend (scheduler, length-sorted token-budget batches; decoder rerankers with
    prefix reuse unless `prefix_reuse` is False); where the Reranker cannot import (pydantic missing), the same torch
    scorer behind length-sorted batches of `batch_size`."""
    try:
        from rerankrt.runtime import Reranker
    except ImportError as exc:
        return _family_scorer(model_dir, precision, device, batch_size), f"family scorer ({exc.name} missing)"
    # a plain model folder: torch on CUDA serves bf16 unless fp32 is asked for (on a CPU, fp32 only)
    reranker = Reranker.load(
        str(model_dir), backend="torch", precision="fp32" if precision == "fp32" else None, max_batch_size=batch_size,
        prefix_reuse=prefix_reuse, packed_batches=False,  # today's padded path: part 5 measures the packed one
    )  # fmt: skip
    wanted = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    if (reranker.backend.device, reranker.backend.dtype) != (device, wanted):
        reranker.close()
        return _family_scorer(
            model_dir, precision, device, batch_size
        ), "family scorer (the engine serves no bf16 here)"
    return (lambda query, docs: reranker.logits(query, docs)), "Reranker (engine)"


def _family_scorer(
    model_dir: Path, precision: str, device: str, batch_size: int, prefix_reuse: bool = True
) -> Callable:
    from rerankrt.families import detect_family

    family, _ = detect_family(model_dir)
    encoder = family.load_encoder(model_dir)
    encoder.use_prefix_reuse(prefix_reuse)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    scorer = family.load_scorer(model_dir, dtype=dtype, device=device)

    def score(query: str, docs: list[str]) -> np.ndarray:
        pairs = encoder.encode(query, docs)
        order = np.argsort([-len(p["input_ids"]) for p in pairs], kind="stable")
        out = np.empty(len(pairs), dtype=np.float32)
        for i in range(0, len(order), batch_size):
            rows = order[i : i + batch_size]
            batch = encoder.collate([pairs[r] for r in rows])
            with torch.inference_mode():
                logits = scorer(**{k: torch.from_numpy(v).to(device) for k, v in batch.items()})
            out[rows] = logits.float().cpu().numpy()
        return out

    return score


# --- the parts ------------------------------------------------------------------------------------------------------


def synchronized(fn: Callable, device: str) -> Callable:
    def run(*args):
        out = fn(*args)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    return run


def free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def compare(model: str, model_dir: Path, card, docs: list[str], args, part: str, decoder: bool = False) -> list[dict]:
    """The four rows: card fp32 (the reference), card bf16, rerankrt fp32, rerankrt bf16; for a decoder reranker
    rerankrt's rows with prefix reuse (the default) and with whole prompts."""
    rows, reference, base = [], None, None  # from the first row, the card in fp32
    candidates = [
        ("model card", "fp32", lambda: (card(model_dir, torch.float32, args.device, args.batch_size), "transformers")),
        ("model card", "bf16", lambda: (card(model_dir, torch.bfloat16, args.device, args.batch_size), "transformers")),
        ("rerankrt torch", "fp32", lambda: rerankrt_torch(model_dir, "fp32", args.device, args.batch_size)),
        ("rerankrt torch", "bf16", lambda: rerankrt_torch(model_dir, "bf16", args.device, args.batch_size)),
    ]
    if decoder:
        whole = "rerankrt torch, whole prompts"
        candidates[2:2] = [(whole, p, lambda p=p: rerankrt_torch(model_dir, p, args.device, args.batch_size, False))
                           for p in ("fp32", "bf16")]  # fmt: skip
    for who, precision, make in candidates:
        row = {"part": part, "model": model, "row": f"{who}, {precision}", "pairs": len(docs)}
        try:
            fn, how = make()
            timing = repeat(lambda fn=fn: synchronized(fn, args.device)(QUERY, docs), args.repeats)
            scores, seconds = timing.output, timing.median
            if not rows:
                reference, base = scores, len(docs) / seconds
            row |= {"how": how, "pairs_per_s": len(docs) / seconds}
            if reference is not None:
                row |= {
                    "vs_card_fp32": len(docs) / seconds / base,
                    "max_abs_dlogit_vs_card_fp32": float(np.abs(scores - reference).max()),
                }
            del fn
        except Exception as exc:  # one row's failure is recorded, the others still run
            row["error"] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        rows.append(row)
        print(table_line(row), flush=True)
        free()
    return rows


# --- padding-free batches, CUDA graphs, multi-item (issue 26) -----------------------------------------------------


class Packed:
    """One model's packed path at one precision: the family's scorer, its packed module, and (with `graphs`) one
    CUDA-graph bucket of `budget` tokens, compiled at warm-up; `score(query, docs, multi_item)` records the streams
    it ran (`last`)."""

    def __init__(self, model_dir: Path, dtype: torch.dtype, device: str, budget: int, graphs: bool, warmup_s: float):
        from rerankrt.families import detect_family
        from rerankrt.families.packed import PackedScorer
        from rerankrt.runtime.cuda_graphs import GraphBuckets, reduce_overhead

        family, _ = detect_family(model_dir)
        self.encoder = family.load_encoder(model_dir)
        self.scorer = family.load_scorer(model_dir, dtype=dtype, device=device)
        module = family.packed_module(self.scorer)
        self.attention = module.use_attention("flex" if device == "cuda" else "dense")
        self.runner = None
        if graphs:  # on CPU (the dry run) dynamo alone: the same buckets and tracing, no CUDA graphs
            compile_ = (
                reduce_overhead if device == "cuda" else lambda m: torch.compile(m, backend="eager", dynamic=False)
            )
            self.runner = GraphBuckets(module, (budget,), compile=compile_)
            self.runner.warm_up(device, warmup_s)
        self.packed = PackedScorer(module, budget, device, multi_item=True, run_stream=self.runner)
        self.last: list = []

    def score(self, query: str, docs: list[str], multi_item: bool) -> np.ndarray:
        self.encoder.use_prefix_reuse(multi_item)
        logits = self.packed(self.encoder.collate(self.encoder.encode(query, docs)))
        self.last = self.packed.streams_run
        return logits


def visible_pairs(stream) -> int:
    """(query, key) pairs a stream's attention computes, counted as decoder_flops counts a whole pair (s x s): a
    token sees its group's prefix (segment 0) and, in an item, the item itself."""
    keys = np.stack([stream.group, stream.segment], 1)
    _, index, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    per_token = counts[index.reshape(-1)]
    prefix = {int(g): int(c) for (g, s), c in zip(np.unique(keys, axis=0), counts, strict=True) if s == 0}
    seen = np.where(stream.segment == 0, per_token, per_token + [prefix.get(int(g), 0) for g in stream.group])
    return int(seen.sum())


def packed_rows(model: str, model_dir: Path, card, docs: list[str], args, decoder: bool) -> list[dict]:
    """Issue 26's rows for one model (see the module docstring, part 5)."""
    config = json.loads((model_dir / "config.json").read_text())
    peak = gpu_bf16_peak(torch.cuda.get_device_name(0)) if args.device == "cuda" else None
    pair_flops = decoder_flops if decoder else encoder_flops
    rows: list[dict] = []
    reference = None
    loaded: dict[tuple, Packed] = {}

    def packed(dtype, graphs):
        key = (dtype, graphs)
        if key not in loaded:
            for other in list(loaded):  # one model in GPU memory at a time
                del loaded[other]
            free()
            loaded[key] = Packed(model_dir, dtype, args.device, args.packed_tokens, graphs, args.warmup_s)
        return loaded[key]

    def packed_run(dtype, graphs, multi_item):
        scorer = packed(dtype, graphs)
        how = f"{scorer.attention} attention" + (", 1 bucket of CUDA graphs" if graphs else "")
        return (lambda q, d: scorer.score(q, d, multi_item)), how, scorer

    from rerankrt.families import detect_family

    encoder = detect_family(model_dir)[0].load_encoder(model_dir)
    encoder.use_prefix_reuse(False)
    lengths = [len(pair["input_ids"]) for pair in encoder.encode(QUERY, docs)]  # whole pairs, as the card runs them

    def card_run(dtype):
        return card(model_dir, dtype, args.device, args.batch_size), "transformers", None

    def padded_run():
        return _family_scorer(model_dir, "bf16", args.device, args.batch_size, False), "padded, whole prompts", None

    candidates = [
        ("model card, fp32", lambda: card_run(torch.float32)),
        ("model card, bf16", lambda: card_run(torch.bfloat16)),
        ("rerankrt padded, bf16", padded_run),
        ("rerankrt packed, fp32", lambda: packed_run(torch.float32, False, False)),
        ("rerankrt packed, bf16", lambda: packed_run(torch.bfloat16, False, False)),
        ("rerankrt multi-item, bf16", lambda: packed_run(torch.bfloat16, False, True)),
        ("rerankrt packed + CUDA graphs, bf16", lambda: packed_run(torch.bfloat16, True, False)),
        ("rerankrt multi-item + CUDA graphs, bf16", lambda: packed_run(torch.bfloat16, True, True)),
    ]  # in this order each model is loaded once per (precision, graphs), and the bucket compiled once
    for name, make in candidates:
        if "multi-item" in name and not decoder:
            continue
        row = {"part": "packed", "model": model, "row": name, "pairs": len(docs)}
        if time.perf_counter() - args.started > args.budget_s:
            row["error"] = f"skipped: time budget spent ({args.budget_s:.0f} s)"
            rows.append(row)
            continue
        try:
            fn, how, scorer = make()
            timing = repeat(lambda fn=fn: synchronized(fn, args.device)(QUERY, docs), args.repeats)
            scores, seconds = timing.output, timing.median
            if scorer is not None and scorer.last and "multi-item" in name:
                per_token, per_pair = decoder_flops_parts(config)
                tokens = sum(len(s) for s in scorer.last)
                flops = per_token * tokens + per_pair * sum(visible_pairs(s) for s in scorer.last)
            else:
                tokens = sum(lengths)
                flops = sum(pair_flops(config, n) for n in lengths)
            if reference is None:
                reference = scores
            row |= {"how": how, "pairs_per_s": len(docs) / seconds, "tokens_run": tokens,
                    "max_abs_dlogit_vs_card_fp32": float(np.abs(scores - reference).max())}  # fmt: skip
            if scorer is not None:
                row["streams"] = [len(s) for s in scorer.last]
            if peak:
                row["share_of_bf16_peak"] = flops / seconds / peak
            del fn  # a card's model leaves the GPU before the next row loads
        except Exception as exc:  # one row's failure is recorded, the others still run
            row["error"] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        rows.append(row)
        print(table_line(row), flush=True)
        free()
    return rows


def serve_rows(model: str, model_dir: Path, args) -> dict:
    """`rerankrt serve` (torch backend) over HTTP: padded, packed, packed + CUDA graphs (on CUDA), each at
    concurrency 1 and 16 with requests of 32 documents."""
    try:
        import fastapi  # noqa: F401
        import httpx  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        return {"skipped": f"{exc.name} is not installed here"}
    from bench.lib.clients import run_level
    from bench.lib.servers import rerankrt_serve

    configs = [("padded", ["--no-packed-batches"]), ("packed", ["--packed-batches", "--no-cuda-graphs"])]
    if args.device == "cuda":
        configs.append(("packed + CUDA graphs", ["--packed-batches", "--cuda-graphs"]))
    requests = [{"query": QUERY, "documents": documents(32, seed=s)} for s in range(args.serve_requests)]
    rows = []
    for name, flags in configs:
        if time.perf_counter() - args.started > args.budget_s:
            rows.append({"part": "serve", "model": model, "row": f"HTTP {name}", "error": "skipped: time budget spent"})
            continue
        flags = [*flags, "--backend", "torch", "--max-batch-tokens", str(args.packed_tokens)]
        if args.device == "cpu":
            flags += ["--threads", "1"]
        try:
            with rerankrt_serve(model_dir, flags, log=args.workdir / f"serve-{name.replace(' ', '_')}.log") as server:
                for concurrency in (1, 16):
                    level = asyncio.run(run_level(server.base, requests, concurrency))
                    row = {"part": "serve", "model": model, "row": f"HTTP {name}, concurrency {concurrency}",
                           "pairs_per_s": level["documents_per_s"], "level": level,
                           "how": f"p50 {level['p50_s']:.3f} s, p95 {level['p95_s']:.3f} s, "
                                  f"{level['errors']} errors"}  # fmt: skip
                    rows.append(row)
                    print(table_line(row), flush=True)
        except Exception as exc:
            rows.append(
                {"part": "serve", "model": model, "row": f"HTTP {name}", "error": f"{type(exc).__name__}: {exc}"}
            )
            traceback.print_exc()
    return {"rows": rows}


def half_graphs(args, work: Path) -> dict:
    """fp16/bf16 graphs of tiny long-position models on ONNX Runtime CUDA (and TensorRT engines), where present."""
    try:
        import onnxruntime as ort

        providers = ort.get_available_providers()
    except ImportError:
        providers = []
    try:
        import tensorrt  # noqa: F401

        have_tensorrt = True
    except ImportError:
        have_tensorrt = False
    if "CUDAExecutionProvider" not in providers and not have_tensorrt:
        return {"skipped": f"no GPU runtime for ONNX graphs here (onnxruntime providers {providers}; no TensorRT)"}
    try:
        from rerankrt.export import export_model
        from rerankrt.export.precision import cast_graph
    except ImportError as exc:
        return {"skipped": f"rerankrt's exporter cannot import here ({exc})"}
    result: dict = {"rows": []}
    for arch, build in (("qwen3", lambda o: build_qwen3(o, max_positions=4608)),
                        ("xlmr", lambda o: build_xlmr(o, max_positions=4610))):  # fmt: skip
        artifact = work / f"graphs-{arch}"
        export_model(str(build(work / f"tiny-{arch}")), artifact, force=True)
        batch = _long_batch(arch, artifact)
        reference = ort.InferenceSession(str(artifact / "model.onnx"), providers=["CPUExecutionProvider"]).run(
            None, batch
        )[0]
        for precision in ("fp32", "fp16", "bf16"):
            graph = artifact / "model.onnx"
            if precision != "fp32":
                graph = cast_graph(graph, artifact / f"model.{precision}.onnx", precision)
            row = {"part": "graphs", "model": f"tiny {arch}, positions to {batch['input_ids'].shape[1] - 1}",
                   "row": f"onnxruntime CUDA, {precision}"}  # fmt: skip
            try:
                session = ort.InferenceSession(str(graph), providers=["CUDAExecutionProvider"])
                got = session.run(None, batch)[0]
                row |= {"max_abs_dlogit_vs_fp32_cpu": float(np.abs(got - reference).max()),
                        "provider": session.get_providers()[0]}  # fmt: skip
            except Exception as exc:
                row["error"] = f"{type(exc).__name__}: {exc}"
            result["rows"].append(row)
            print(table_line(row), flush=True)
        if have_tensorrt:
            result["rows"] += _engines(artifact, arch, batch, reference)
    return result


def _long_batch(arch: str, artifact: Path) -> dict[str, np.ndarray]:
    vocab = json.loads((artifact / "config.json").read_text())["vocab_size"]
    ids = np.random.default_rng(7).integers(5, vocab - 8, size=(2, 4160)).astype(np.int64)
    mask = np.ones_like(ids)
    pad = np.s_[1, :4128] if arch == "qwen3" else np.s_[1, 32:]
    ids[pad], mask[pad] = (0 if arch == "qwen3" else 1), 0
    return {"input_ids": ids, "attention_mask": mask}


def _engines(artifact: Path, arch: str, batch, reference) -> list[dict]:
    from rerankrt.export.tensorrt import build_engine
    from rerankrt.runtime.plan import ServingPlan
    from rerankrt.runtime.tensorrt_backend import TensorRTBackend

    rows = []
    for precision in ("fp32", "fp16", "bf16"):
        row = {"part": "graphs", "model": f"tiny {arch}", "row": f"TensorRT engine, {precision}"}
        try:
            engine = build_engine(artifact, precision=precision, max_batch=2, max_length=4608)
            backend = TensorRTBackend(ServingPlan("tensorrt", "cuda", engine.precision, folder=artifact, engine=engine))
            got = backend.run(batch)
            row |= {"engine": engine.file, "max_abs_dlogit_vs_fp32_cpu": float(np.abs(got - reference).max())}
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {exc}"
        rows.append(row)
        print(table_line(row), flush=True)
    return rows


# --- report -----------------------------------------------------------------------------------------------------------

PARTS = {  # --parts name -> the part's title in the report, in the order they run
    "packed": "padding-free batches, CUDA graphs, multi-item",
    "serve": "rerankrt serve over HTTP",
    "torch": "torch CUDA vs model cards",
    "long": "long positions",
    "graphs": "half-precision graphs",
}

HEADER = markdown_table(
    ["part", "model", "row", "pairs/s", "vs card fp32", "share of bf16 peak", "max abs Δlogit", "note"], []
)


def table_line(row: dict) -> str:
    def num(key, fmt):
        return format(row[key], fmt) if key in row else ""

    delta = num("max_abs_dlogit_vs_card_fp32", ".2e") or num("max_abs_dlogit_vs_fp32_cpu", ".2e")
    note = row.get("error", row.get("how", row.get("engine", "")))[:120]
    share = num("share_of_bf16_peak", ".1%")
    cells = [row["part"], row["model"], row["row"], num("pairs_per_s", ".1f"), num("vs_card_fp32", ".2f"), share,
             delta, note]  # fmt: skip
    return markdown_row(cells)


def environment(device: str) -> dict:
    import transformers

    env = {
        "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
        "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
    }  # fmt: skip
    if device == "cuda":
        properties = torch.cuda.get_device_properties(0)
        env |= {
            "gpu": properties.name, "compute_capability": ".".join(map(str, torch.cuda.get_device_capability())),
            "gpu_memory_gib": round(properties.total_memory / 2**30, 1), "torch_cuda": torch.version.cuda,
        }  # fmt: skip
    for module in ("onnxruntime", "tensorrt", "pydantic"):
        try:
            imported = __import__(module)
            env[module] = getattr(imported, "__version__", "present")
            if module == "onnxruntime":
                env["onnxruntime_providers"] = imported.get_available_providers()
        except ImportError:
            env[module] = None
    return env


def write(report: dict, folders: list[Path]) -> list[Path]:
    table = "\n".join([HEADER, *(table_line(r) for r in report["rows"])])
    paths = []
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
        (folder / "gpu_check.md").write_text(table + "\n")
        paths.append(folder / "gpu_check.json")
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=256, help="pairs per model (default 256)")
    parser.add_argument("--long-docs", type=int, default=4, help=f"documents of ~{LONG_TOKENS} tokens (default 4)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget-s", type=float, default=420, help="skip the parts that would start after this")
    parser.add_argument("--packed-tokens", type=int, help="packed streams' token budget (default 8192; tiny 1024)")
    parser.add_argument("--warmup-s", type=float, default=150, help="CUDA-graph warm-up bound per model")
    parser.add_argument("--serve-requests", type=int, default=32, help="HTTP requests per concurrency level")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="the parts to run (default all)")
    parser.add_argument("--quick", action="store_true", help="64 pairs, 2 long documents, 1 repeat")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: a dry run of the script")
    parser.add_argument("--tiny", action="store_true", help="tiny models (a dry run of the script)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/rerankrt-gpu-check"))
    args = parser.parse_args()
    if args.quick:
        args.docs, args.long_docs, args.repeats = 64, 2, 1
    args.packed_tokens = args.packed_tokens or (1024 if args.tiny else 8192)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device: run this on the lent GPU (or --device cpu --tiny for a dry run)")
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 (torch's default; said here for the record)
    started = args.started = time.perf_counter()
    report: dict = {"environment": environment(args.device), "config": {k: str(v) for k, v in vars(args).items()}}
    print(json.dumps(report, indent=2), flush=True)
    print(HEADER, flush=True)
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    rows: list[dict] = []
    report["rows"], report["parts"] = rows, {}
    # a GPU run's results go to bench/results (and $OUT, which a lent machine sends back); a dry run's to workdir
    folders = [RESULTS] if args.device == "cuda" else [args.workdir]
    folders += [Path(os.environ["OUT"])] if os.environ.get("OUT") else []

    def part(key: str, fn: Callable[[], object]) -> None:
        name = PARTS[key]
        if key not in args.parts:
            return
        left = args.budget_s - (time.perf_counter() - started)
        if left < 30:
            report["parts"][name] = {"skipped": f"time budget spent ({args.budget_s:.0f} s)"}
            return
        part_started = time.perf_counter()
        try:
            outcome = fn()
            report["parts"][name] = {"seconds": round(time.perf_counter() - part_started, 1)}
            if isinstance(outcome, dict):
                report["parts"][name] |= {k: v for k, v in outcome.items() if k != "rows"}
                rows.extend(outcome.get("rows", []))
        except Exception as exc:
            report["parts"][name] = {"error": f"{type(exc).__name__}: {exc}"}
            traceback.print_exc()
        write(report, folders)  # what is done so far survives a timeout

    short = documents(args.docs)
    models = {
        "bge": bge_m3_sized(args.workdir / "bge-reranker-v2-m3-sized", args.tiny),
        "qwen3": qwen3_06b_sized(args.workdir / "Qwen3-Reranker-0.6B", args.tiny),
    }

    def packed_path():
        rows.extend(packed_rows("bge-reranker-v2-m3 size", models["bge"], card_cross_encoder, short, args, False))
        rows.extend(packed_rows("Qwen3-Reranker-0.6B size", models["qwen3"], card_qwen3, short, args, True))

    def torch_path():
        rows.extend(compare("bge-reranker-v2-m3 size", models["bge"], card_cross_encoder, short, args, "torch"))
        rows.extend(compare("Qwen3-Reranker-0.6B size", models["qwen3"], card_qwen3, short, args, "torch", True))

    def long_positions():
        docs = long_documents(models["qwen3"], args.long_docs, LONG_TOKENS)
        saved = args.batch_size
        args.batch_size = 2  # the card computes the LM's logits at every position: 2 x 4300 x 151669 floats
        try:
            rows.extend(compare(f"Qwen3-Reranker-0.6B size, ~{LONG_TOKENS} tokens", models["qwen3"], card_qwen3,
                                docs, args, "long positions", True))  # fmt: skip
        finally:
            args.batch_size = saved

    part("packed", packed_path)
    part("serve", lambda: serve_rows("bge-reranker-v2-m3 size", models["bge"], args))
    part("torch", torch_path)
    part("long", long_positions)
    part("graphs", lambda: half_graphs(args, args.workdir))
    report["seconds"] = round(time.perf_counter() - started, 1)
    for path in write(report, folders):
        print(f"written {path}", flush=True)


if __name__ == "__main__":
    main()
