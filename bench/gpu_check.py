"""One-call GPU check for a lent device (under 10 minutes): GPU tests, then torch CUDA bf16 vs the model cards.

1. Runs the test suite's GPU tests that can run there (torch on CUDA; ONNX Runtime
   CUDA and TensorRT engines where those are installed, else they skip with the reason).
2. Times, on the same GPU and the same inputs, the model card's transformers code
   (fp32, as written; and in bf16) against rerankrt's torch CUDA backend (bf16, SDPA)
   for a bge-reranker-v2-m3-sized cross-encoder and a Qwen3-Reranker-0.6B-sized
   yes/no reranker, random weights. Writes bench/results/gpu_check.json and prints a table.

    python bench/gpu_check.py            # on the device: HF_HUB_OFFLINE=1, nothing downloaded
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import best_of, machine, write_result  # noqa: E402
from rerankrt.testing.reference import QWEN3_PREFIX, QWEN3_SUFFIX  # noqa: E402
from rerankrt.testing.tiny_models import CORPUS, build_qwen3_tokenizer, build_xlmr_tokenizer  # noqa: E402

WORDS = sorted({w for line in CORPUS for w in line.split()})


def bge_m3_sized(out: Path) -> Path:
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    tokenizer = build_xlmr_tokenizer()
    config = XLMRobertaConfig(
        vocab_size=250002, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
        max_position_embeddings=8194, type_vocab_size=1, num_labels=1, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    XLMRobertaForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def qwen3_06b_sized(out: Path) -> Path:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tokenizer = build_qwen3_tokenizer()
    config = Qwen3Config(
        vocab_size=151669, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
        num_key_value_heads=8, head_dim=128, max_position_embeddings=40960, tie_word_embeddings=True,
    )  # fmt: skip
    Qwen3ForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def documents(count: int, seed: int = 0) -> tuple[str, list[str]]:
    rng = np.random.default_rng(seed)
    docs = [" ".join(rng.choice(WORDS, size=int(rng.integers(20, 120)))) for _ in range(count)]
    return "what is the giant panda?", docs


def card_cross_encoder(model_dir: Path, dtype: torch.dtype):
    """bge-reranker-v2-m3's model card: tokenizer pairs, padding, logits.view(-1)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=dtype).cuda().eval()

    def score(query, docs):
        with torch.no_grad():
            inputs = tokenizer([[query, d] for d in docs], padding=True, truncation=True, return_tensors="pt",
                               max_length=512).to("cuda")  # fmt: skip
            out = model(**inputs).logits.view(-1).float().cpu().numpy()
        torch.cuda.synchronize()
        return out

    return score


def card_qwen3(model_dir: Path, dtype: torch.dtype):
    """Qwen3-Reranker's model card: left padding, full LM logits, log_softmax over [no, yes]."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).cuda().eval()
    yes, no = tokenizer.convert_tokens_to_ids("yes"), tokenizer.convert_tokens_to_ids("no")
    prefix = tokenizer.encode(QWEN3_PREFIX, add_special_tokens=False)
    suffix = tokenizer.encode(QWEN3_SUFFIX, add_special_tokens=False)
    instruction = "Given a web search query, retrieve relevant passages that answer the query"

    def score(query, docs):
        bodies = [f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {d}" for d in docs]
        enc = tokenizer(bodies, padding=False, truncation="longest_first", return_attention_mask=False,
                        max_length=8192 - len(prefix) - len(suffix))  # fmt: skip
        enc["input_ids"] = [prefix + ids + suffix for ids in enc["input_ids"]]
        inputs = tokenizer.pad(enc, padding=True, return_tensors="pt").to("cuda")
        with torch.no_grad():
            last = model(**inputs).logits[:, -1, :]
            out = torch.log_softmax(torch.stack([last[:, no], last[:, yes]], 1).float(), 1)[:, 1].exp().cpu().numpy()
        torch.cuda.synchronize()
        return out

    return score


def in_batches(score, batch_size: int):
    return lambda query, docs: np.concatenate(
        [score(query, docs[i : i + batch_size]) for i in range(0, len(docs), batch_size)]
    )


def ours(model_dir: Path, batch_size: int):
    from rerankrt.runtime import Reranker

    reranker = Reranker.load(str(model_dir), backend="torch", max_batch_size=batch_size)
    assert reranker.backend.device == "cuda"

    def score(query, docs):
        out = reranker.score(query, docs)
        torch.cuda.synchronize()
        return out

    return score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/rerankrt-gpu-check"))
    parser.add_argument("--skip-tests", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA device: run this on the lent GPU")

    report: dict = {"machine": machine() | {"gpu": torch.cuda.get_device_name()}, "config": vars(args) | {}}
    report["config"]["workdir"] = str(args.workdir)
    if not args.skip_tests:
        started = time.perf_counter()
        tests = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-rs", "tests/test_backends.py", "tests/test_tensorrt.py",
             "-k", "cuda or engine or gpu"],
            capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1],
        )  # fmt: skip
        seconds = time.perf_counter() - started
        report["tests"] = {"returncode": tests.returncode, "tail": tests.stdout[-3000:], "seconds": seconds}
        print(tests.stdout[-3000:], flush=True)

    shutil.rmtree(args.workdir, ignore_errors=True)
    query, docs = documents(args.docs)
    rows = []
    for name, build, card in (
        ("bge-reranker-v2-m3 size", bge_m3_sized, card_cross_encoder),
        ("Qwen3-Reranker-0.6B size", qwen3_06b_sized, card_qwen3),
    ):
        torch.manual_seed(0)
        model_dir = build(args.workdir / name.split()[0])
        candidates = {  # the card's code, fed batches of the same size as ours
            "model card, fp32": in_batches(card(model_dir, torch.float32), args.batch_size),
            "model card, bf16": in_batches(card(model_dir, torch.bfloat16), args.batch_size),
            "rerankrt torch CUDA bf16": ours(model_dir, args.batch_size),
        }
        base = None
        for label, fn in candidates.items():
            seconds, _ = best_of(lambda fn=fn: fn(query, docs), args.repeats)
            pairs_per_s = len(docs) / seconds
            base = base or pairs_per_s
            rows.append({"model": name, "row": label, "pairs_per_s": pairs_per_s, "vs_card_fp32": pairs_per_s / base})
            print(f"| {name} | {label} | {pairs_per_s:.1f} | {pairs_per_s / base:.2f}x |", flush=True)
            del fn
        candidates.clear()
        torch.cuda.empty_cache()
    report["results"] = rows
    print(f"written {write_result('gpu_check', report)}")


if __name__ == "__main__":
    main()
