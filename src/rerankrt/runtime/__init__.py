"""Serving-time code: the scoring engine, its serving plan, and the backends behind one interface."""

from rerankrt.runtime.engine import Ranked, Reranker, ScoreRequest, Scores, sigmoid
from rerankrt.runtime.settings import EngineSettings

__all__ = ["EngineSettings", "Ranked", "Reranker", "ScoreRequest", "Scores", "sigmoid"]
