"""What the serving-time self-check and choosing the plan by measurement cost at start: full-size random-weight
models, exported here, loaded with `Reranker.load` (auto): by the fixed order with the self-check on and off (the
self-check's own seconds, pairs and tokens), and by measurement (`tune`) at a first start (every plan opened,
checked and timed; an empty timings folder) and at a later one (the recorded plan only).

    .venv/bin/python -m bench.self_check_cost                         # bge-reranker-base's shape, fp32 and int8
    .venv/bin/python -m bench.self_check_cost --models xlmr-base qwen3-0.6b
    .venv/bin/python -m bench.self_check_cost --models xlmr-tiny --results /tmp/scc   # checks the script, seconds

Results: bench/results/self_check_cost.json (the machine's CPU features, `cpu_features`, beside every figure).
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from bench.lib.models import build_qwen3_sized, build_xlmr_sized, export_variant
from bench.lib.results import RESULTS, log, machine, write_result
from bench.lib.timing import once
from rerankrt.runtime import Reranker
from rerankrt.testing.tiny_models import build_xlmr

BUILDERS = {  # bge-reranker-base's and Qwen3-Reranker-0.6B's shapes; xlmr-tiny (the test model) checks the script
    "xlmr-base": build_xlmr_sized,
    "qwen3-0.6b": build_qwen3_sized,
    "xlmr-tiny": build_xlmr,
}


def measure(folder: Path, timings: Path) -> dict:
    with_check, reranker = once(lambda: Reranker.load(str(folder), tune=False))
    check = reranker.model.self_check
    reranker.close()
    without, reranker = once(lambda: Reranker.load(str(folder), self_check=False, tune=False))
    reranker.close()
    os.environ["RERANKRT_CACHE_DIR"] = str(timings / folder.parent.name / folder.name)
    shutil.rmtree(os.environ["RERANKRT_CACHE_DIR"], ignore_errors=True)
    first_start, reranker = once(lambda: Reranker.load(str(folder), tune=True))
    measured = reranker.model.timings
    reranker.close()
    later_start, reranker = once(lambda: Reranker.load(str(folder), tune=True))
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
        "load_seconds_tuned_first_start": round(first_start, 2),
        "load_seconds_tuned_later_start": round(later_start, 2),
        "tuned_choice": measured.chosen,
        "tuned_golden_set_seconds": measured.by_plan(),
    }
    log(f"{folder.name}: {row}")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=list(BUILDERS), default=["xlmr-base"])
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "int8"], default=["fp32", "int8"])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/rerankrt-bench-self-check"))
    parser.add_argument("--results", type=Path, default=RESULTS, help="where self_check_cost.json goes")
    args = parser.parse_args()
    rows = {}
    for name in args.models:
        model_dir = args.workdir / name / "model"
        if not (model_dir / "config.json").exists():
            BUILDERS[name](model_dir)
        for precision in args.precisions:
            folder = args.workdir / name / precision
            if not (folder / "manifest.json").exists():
                export_variant(model_dir, folder, precision)
            rows[f"{name} {precision}"] = measure(folder, args.workdir / "timings")
    result = {"machine": machine(), "rows": rows}
    print(write_result("self_check_cost", result, args.results))


if __name__ == "__main__":
    main()
