"""The fastest matrix products this CPU runs at each precision (fp32, bf16, int8), per runtime, measured
(bench/lib/gemm.py): one MatMul of the shape a base-size encoder's FFN does on a batch and a square one, 2 threads.
Each row: G operations/s (a multiply-add counts 2) and its share of bench/lib/peak.py's computed peak for the
precision; the best per precision is the ceiling bench/cpu_speed.py measures its rows against.

    .venv/bin/python -m bench.gemm_ceiling                 # ~1 min on 2 cores
    .venv/bin/python -m bench.gemm_ceiling --size small --results /tmp/gc     # checks the script in seconds

Results: bench/results/gemm_ceiling.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.lib.gemm import SHAPES, best_by_precision, measure_ceilings
from bench.lib.peak import peak, this_cpu
from bench.lib.results import RESULTS, machine, markdown_table, write_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=list(SHAPES), default="full")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    cpu = this_cpu()
    peaks = {precision: peak(cpu, precision) for precision in ("fp32", "bf16", "int8")}
    rows = measure_ceilings(SHAPES[args.size], args.threads, args.repeats)
    for row in rows:
        top = peaks[row["precision"]]["ops_per_s"]
        row["share_of_peak"] = row["g_ops_per_s"] * 1e9 / top if top else None
    data = {"benchmark": "gemm_ceiling", "machine": machine(), "threads": args.threads, "peak": peaks, "rows": rows,
            "best_g_ops_per_s": best_by_precision(rows)}  # fmt: skip
    write_result("gemm_ceiling", data, args.results)
    table = [[r["shape"], r["runtime"], r["precision"], f"{r['g_ops_per_s']:.1f}",
              "" if r["share_of_peak"] is None else f"{r['share_of_peak']:.0%}"] for r in rows]  # fmt: skip
    print(markdown_table(["product", "runtime", "precision", "G ops/s", "of peak.py's peak"], table))


if __name__ == "__main__":
    main()
