"""What the serving-time self-check costs at start: full-size random-weight models, exported here, loaded with
`Reranker.load` (auto) with the self-check on and off; the self-check's own seconds, pairs and tokens, per plan.

    .venv/bin/python -m bench.self_check_cost                         # bge-reranker-base's shape, fp32 and int8
    .venv/bin/python -m bench.self_check_cost --models xlmr-base qwen3-0.6b

Results: bench/results/self_check_cost.json (the machine's CPU features beside every figure).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench.common import machine, write_result
from bench.cpu_speed import XLMR_SHAPES, build_xlmr_model, export, log
from bench.qwen3_reranker import build_model as build_qwen3_model
from rerankrt.runtime import Reranker
from rerankrt.runtime.machine import Machine

BUILDERS = {
    "xlmr-base": lambda out: build_xlmr_model(out, XLMR_SHAPES["xlmr-base"]),
    "qwen3-0.6b": lambda out: build_qwen3_model(out, 28),
}


def timed_load(folder: Path, **options) -> tuple[float, Reranker]:
    started = time.perf_counter()
    reranker = Reranker.load(str(folder), **options)
    return time.perf_counter() - started, reranker


def measure(folder: Path) -> dict:
    with_check, reranker = timed_load(folder)
    check = reranker.model.self_check
    reranker.close()
    without, reranker = timed_load(folder, self_check=False)
    reranker.close()
    row = {
        "plan": check.plan,
        "passed": check.passed,
        "self_check_seconds": check.seconds,
        "pairs": check.pairs,
        "tokens": check.tokens,
        "max_logit_diff": check.max_logit_diff,
        "load_seconds_with_self_check": round(with_check, 2),
        "load_seconds_without": round(without, 2),
    }
    log(f"{folder.name}: {row}")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=list(BUILDERS), default=["xlmr-base"])
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "int8"], default=["fp32", "int8"])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/rerankrt-bench-self-check"))
    args = parser.parse_args()
    rows = {}
    for name in args.models:
        model_dir = args.workdir / name / "model"
        if not (model_dir / "config.json").exists():
            BUILDERS[name](model_dir)
        for precision in args.precisions:
            folder = args.workdir / name / precision
            if not (folder / "manifest.json").exists():
                export(model_dir, folder, precision)
            rows[f"{name} {precision}"] = measure(folder)
    result = {"machine": {**machine(), "cpu": Machine.detect().describe_cpu()}, "rows": rows}
    print(write_result("self_check_cost", result))


if __name__ == "__main__":
    main()
