"""HTTP server: FastAPI app over a loaded Reranker."""

from rerankrt.server.app import create_app

__all__ = ["create_app"]
