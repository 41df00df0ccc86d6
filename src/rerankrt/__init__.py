"""rerankrt: compile reranker models to ONNX/TensorRT and serve them."""

__version__ = "0.1.0"
