"""Serving-time code: the Reranker (the scoring object), its serving plan, and the backends behind one interface."""

from rerankrt.runtime.reranker import Ranked, Reranker, ScoreRequest, Scores, sigmoid
from rerankrt.runtime.settings import EngineSettings, RerankerSettings

__all__ = ["EngineSettings", "Ranked", "Reranker", "RerankerSettings", "ScoreRequest", "Scores", "sigmoid"]
