"""rerankrt: compile reranker models to ONNX/TensorRT and serve them.

The library API is the scoring engine: `from rerankrt import Reranker` (see `rerankrt.runtime.reranker`).
"""

import os

# No phoning home from a server. ONNX Runtime's own telemetry (a 1DS uploader that resolves its collector's host
# and keeps a device id under ~/.cache/Microsoft) reads this variable once, when onnxruntime is imported:
# `onnxruntime.disable_telemetry_events()` after the import does not stop it. Hugging Face Hub's likewise.
# An explicit setting in the environment wins.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

__version__ = "0.1.0"
__all__ = ["Ranked", "Reranker", "RerankerSettings", "Scores", "ScoreRequest", "__version__"]
_RUNTIME = {*__all__[:-1], "EngineSettings"}  # EngineSettings: RerankerSettings' old name, kept working


def __getattr__(name: str):
    """The Reranker's names, imported on first use (so `rerankrt --version` does not load torch)."""
    if name in _RUNTIME:
        from rerankrt import runtime

        return getattr(runtime, name)
    raise AttributeError(f"module 'rerankrt' has no attribute {name!r}")
