"""Qwen3-Reranker-0.6B-sized yes/no reranker on CPU, random weights.

Rows, same inputs, same run: (a) the model card's transformers code (full LM
logits, log_softmax over [no, yes]), (b) our torch scorer, (c) our ONNX graph
(the exported artifact: Qwen3 folded into a one-label classifier, optimum),
(d) the alternative export path (a wrapper module through torch.onnx dynamo).
Also export time and artifact size of both export paths.

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python bench/qwen3_reranker.py            # ~20 min on 2 cores
    .venv/bin/python bench/qwen3_reranker.py --layers 4 --docs 8   # quick look
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import best_of, folder_mb, machine, write_result  # noqa: E402
from rerankrt.testing.reference import qwen3_card_inputs  # noqa: E402
from rerankrt.testing.tiny_models import CORPUS, build_qwen3_tokenizer, model_card  # noqa: E402


def build_model(out: Path, layers: int) -> Path:
    """Qwen3-0.6B's shape (hidden 1024, 16 heads, 8 KV heads, vocab 151669, tied) with random weights."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tokenizer = build_qwen3_tokenizer()
    config = Qwen3Config(
        vocab_size=151669, hidden_size=1024, intermediate_size=3072, num_hidden_layers=layers,
        num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
        tie_word_embeddings=True, rope_theta=1000000, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    Qwen3ForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    model_card(out, "Qwen/Qwen3-Reranker-0.6B")  # the card names the checkpoint: the family recognises it
    return out


def make_documents(tokenizer, count: int, tokens: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    words = sorted({w for line in CORPUS for w in line.split()})
    docs = []
    for _ in range(count):
        doc = ""
        target = int(tokens * rng.uniform(0.8, 1.2))
        while len(tokenizer.encode(doc)) < target:
            doc += " " + " ".join(rng.choice(words, size=8))
        docs.append(doc.strip())
    return docs


def card_scores(
    model, model_dir: Path, yes: int, no: int, query: str, docs: list[str], batch_size: int, instruction=None
):
    scores = []
    for start in range(0, len(docs), batch_size):
        inputs = qwen3_card_inputs(model_dir, query, docs[start : start + batch_size], instruction)
        with torch.no_grad():
            last = model(**inputs).logits[:, -1, :]
            pair = torch.stack([last[:, no], last[:, yes]], dim=1)
            scores.append(torch.nn.functional.log_softmax(pair, dim=1)[:, 1].exp())
    return torch.cat(scores).numpy()


class MaskPoolingScorer(torch.nn.Module):
    """The other export path: decoder body, last real token by attention mask, fp32 yes-no row."""

    def __init__(self, body, row):
        super().__init__()
        self.body = body
        self.register_buffer("row", row)

    def forward(self, input_ids, attention_mask):
        hidden = self.body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
        last = (positions * attention_mask).argmax(-1)
        return hidden[torch.arange(hidden.shape[0]), last].float() @ self.row


def export_dynamo(model_dir: Path, out: Path, yes: int, no: int) -> float:
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    weight = lm.get_output_embeddings().weight
    scorer = MaskPoolingScorer(lm.model, (weight[yes].float() - weight[no].float()).detach()).eval()
    ids = torch.ones((2, 16), dtype=torch.int64)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            scorer, (ids, torch.ones_like(ids)), str(out / "model.onnx"), dynamo=True,
            input_names=["input_ids", "attention_mask"], output_names=["logits"],
            dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
            external_data=True, optimize=True, verbose=False,
        )  # fmt: skip
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=28)
    parser.add_argument("--docs", type=int, default=32)
    parser.add_argument("--doc-tokens", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/rerankrt-bench-qwen3"))
    parser.add_argument("--skip-dynamo", action="store_true", help="skip the torch.onnx dynamo export path")
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM

    from rerankrt.export import export_model
    from rerankrt.runtime import Reranker
    from rerankrt.runtime.onnxruntime_backend import OnnxRuntimeBackend

    shutil.rmtree(args.workdir, ignore_errors=True)
    model_dir = build_model(args.workdir / "model", args.layers)
    tokenizer = build_qwen3_tokenizer()
    yes, no = tokenizer.convert_tokens_to_ids("yes"), tokenizer.convert_tokens_to_ids("no")
    query = "what is the giant panda and where does it live?"
    docs = make_documents(tokenizer, args.docs, args.doc_tokens)

    started = time.perf_counter()
    export_model(str(model_dir), args.workdir / "artifact")
    exports = {"optimum_fold": {"seconds": time.perf_counter() - started, "mb": folder_mb(args.workdir / "artifact")}}

    onnx_reranker = Reranker.load(str(args.workdir / "artifact"), backend="onnxruntime", max_batch_size=args.batch_size)
    torch_reranker = Reranker.load(str(args.workdir / "artifact"), backend="torch", max_batch_size=args.batch_size)
    card_model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    prompt_tokens = [len(p["input_ids"]) for p in onnx_reranker.encoder.encode(query, docs)]

    rows = {
        "model card (transformers, full logits)": lambda: card_scores(
            card_model, model_dir, yes, no, query, docs, args.batch_size
        ),
        "rerankrt torch scorer": lambda: torch_reranker.score(query, docs),
        "rerankrt ONNX (optimum fold)": lambda: onnx_reranker.score(query, docs),
    }
    if not args.skip_dynamo:
        seconds = export_dynamo(model_dir, args.workdir / "dynamo", yes, no)
        exports["torch_onnx_dynamo"] = {"seconds": seconds, "mb": folder_mb(args.workdir / "dynamo")}
        graph = OnnxRuntimeBackend(onnx_reranker.family, args.workdir / "dynamo", {"scorer": "model.onnx"})
        dynamo = Reranker(replace(onnx_reranker.model, backend=graph), onnx_reranker.settings)
        rows["rerankrt ONNX (dynamo wrapper)"] = lambda: dynamo.score(query, docs)

    reference = card_scores(card_model, model_dir, yes, no, query, docs, args.batch_size)
    results = {}
    for name, fn in rows.items():
        seconds, times = best_of(fn, args.repeats)
        scores = np.asarray(fn(), dtype=np.float64)
        probs = scores if name.startswith("model card") else 1 / (1 + np.exp(-scores))
        results[name] = {
            "pairs_per_s": len(docs) / seconds,
            "seconds": times,
            "max_abs_diff_vs_card": float(np.abs(probs - reference).max()),
        }
        print(f"{name:42s} {len(docs) / seconds:7.2f} pairs/s", flush=True)
    base = results["model card (transformers, full logits)"]["pairs_per_s"]
    for row in results.values():
        row["ratio_vs_card"] = row["pairs_per_s"] / base

    data = {
        "benchmark": "qwen3_reranker",
        "config": {**vars(args), "workdir": str(args.workdir), "prompt_tokens_mean": float(np.mean(prompt_tokens))},
        "machine": machine(),
        "exports": exports,
        "results": results,
    }
    path = write_result(f"qwen3_reranker_L{args.layers}", data)
    print("\n| row | pairs/s | vs model card | max abs diff in P(yes) vs card |\n|---|---|---|---|")
    for name, row in results.items():
        print(
            f"| {name} | {row['pairs_per_s']:.2f} | {row['ratio_vs_card']:.2f}x | {row['max_abs_diff_vs_card']:.1e} |"
        )
    for name, row in exports.items():
        print(f"export {name}: {row['seconds']:.0f} s, {row['mb']:.0f} MB")
    print(f"written {path}")


if __name__ == "__main__":
    main()
