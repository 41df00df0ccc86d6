"""rerankrt: compile reranker models to ONNX/TensorRT and serve them.

The library API is the scoring engine: `from rerankrt import Reranker` (see `rerankrt.runtime.engine`).
"""

__version__ = "0.1.0"
__all__ = ["EngineSettings", "Ranked", "Reranker", "Scores", "ScoreRequest", "__version__"]


def __getattr__(name: str):
    """The engine's names, imported on first use (so `rerankrt --version` does not load torch)."""
    if name in __all__[:-1]:
        from rerankrt import runtime

        return getattr(runtime, name)
    raise AttributeError(f"module 'rerankrt' has no attribute {name!r}")
