"""Serving-time code: backends behind one interface, artifact loading, batching."""

from rerankrt.runtime.loader import BACKEND_CHOICES, load_reranker
from rerankrt.runtime.reranker import Reranker

__all__ = ["BACKEND_CHOICES", "Reranker", "load_reranker"]
