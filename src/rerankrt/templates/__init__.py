"""Bundled prompt templates (Jinja) for the prompt-based reranker families."""
