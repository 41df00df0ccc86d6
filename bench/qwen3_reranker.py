"""Qwen3-Reranker-0.6B-sized yes/no reranker on CPU, random weights.

Rows, same inputs, same run: (a) the model card's transformers code (full LM
logits, log_softmax over [no, yes]), (b) our torch scorer, (c) our ONNX graph
(the exported artifact: Qwen3 folded into a one-label classifier, optimum),
(d) the alternative export path (a wrapper module through torch.onnx dynamo).
Also export time and artifact size of both export paths.

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python -m bench.qwen3_reranker            # ~20 min on 2 cores
    .venv/bin/python -m bench.qwen3_reranker --layers 4 --docs 8   # quick look
"""

from __future__ import annotations

import argparse
import shutil
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from bench.lib.models import build_qwen3_sized, qwen3_card_p_yes
from bench.lib.results import folder_mb, machine, markdown_table, write_result
from bench.lib.text import documents_of_about
from bench.lib.timing import once, repeat
from rerankrt.runtime.fidelity import sigmoid
from rerankrt.testing.tiny_models import build_qwen3_tokenizer


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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seconds, _ = once(lambda: torch.onnx.export(
            scorer, (ids, torch.ones_like(ids)), str(out / "model.onnx"), dynamo=True,
            input_names=["input_ids", "attention_mask"], output_names=["logits"],
            dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
            external_data=True, optimize=True, verbose=False,
        ))  # fmt: skip
    return seconds


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
    model_dir = build_qwen3_sized(args.workdir / "model", args.layers)
    tokenizer = build_qwen3_tokenizer()
    yes, no = tokenizer.convert_tokens_to_ids("yes"), tokenizer.convert_tokens_to_ids("no")
    query = "what is the giant panda and where does it live?"
    docs = documents_of_about(tokenizer, args.docs, args.doc_tokens)

    seconds, _ = once(lambda: export_model(str(model_dir), args.workdir / "artifact"))
    exports = {"optimum_fold": {"seconds": seconds, "mb": folder_mb(args.workdir / "artifact")}}

    onnx_reranker = Reranker.load(str(args.workdir / "artifact"), backend="onnxruntime", max_batch_size=args.batch_size)
    torch_reranker = Reranker.load(str(args.workdir / "artifact"), backend="torch", max_batch_size=args.batch_size)
    card_model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    prompt_tokens = [len(p["input_ids"]) for p in onnx_reranker.encoder.encode(query, docs)]

    rows = {
        "model card (transformers, full logits)": lambda: qwen3_card_p_yes(
            card_model, model_dir, yes, no, query, docs, args.batch_size
        ),
        "rerankrt torch scorer": lambda: torch_reranker.logits(query, docs),
        "rerankrt ONNX (optimum fold)": lambda: onnx_reranker.logits(query, docs),
    }
    if not args.skip_dynamo:
        seconds = export_dynamo(model_dir, args.workdir / "dynamo", yes, no)
        exports["torch_onnx_dynamo"] = {"seconds": seconds, "mb": folder_mb(args.workdir / "dynamo")}
        graph = OnnxRuntimeBackend(onnx_reranker.family, args.workdir / "dynamo", {"scorer": "model.onnx"})
        dynamo = Reranker(replace(onnx_reranker.model, backend=graph), onnx_reranker.settings)
        rows["rerankrt ONNX (dynamo wrapper)"] = lambda: dynamo.logits(query, docs)

    reference = qwen3_card_p_yes(card_model, model_dir, yes, no, query, docs, args.batch_size)
    results = {}
    for name, fn in rows.items():
        timing = repeat(fn, args.repeats)
        scores = np.asarray(timing.output, dtype=np.float64)
        probs = scores if name.startswith("model card") else sigmoid(scores)
        results[name] = {
            "pairs_per_s": len(docs) / timing.median,
            "seconds": timing.times,
            "max_abs_diff_vs_card": float(np.abs(probs - reference).max()),
        }
        print(f"{name:42s} {len(docs) / timing.median:7.2f} pairs/s", flush=True)
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
    table = [[name, f"{r['pairs_per_s']:.2f}", f"{r['ratio_vs_card']:.2f}x", f"{r['max_abs_diff_vs_card']:.1e}"]
             for name, r in results.items()]  # fmt: skip
    print("\n" + markdown_table(["row", "pairs/s", "vs model card", "max abs diff in P(yes) vs card"], table))
    for name, row in exports.items():
        print(f"export {name}: {row['seconds']:.0f} s, {row['mb']:.0f} MB")
    print(f"written {path}")


if __name__ == "__main__":
    main()
