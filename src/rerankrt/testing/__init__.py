"""Tiny random-weight model builders and model-card reference scorers, used by the tests and the benchmarks."""
