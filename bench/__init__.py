"""The benchmarks: one script per measurement (`python -m bench.NAME` from the repository root, `--help` for each),
and bench/lib, what they share. docs/benchmarks.md lists every script and the figures it measured."""
