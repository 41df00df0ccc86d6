"""Export: model -> verified artifact folder (ONNX graph, tokenizer, parity report, manifest)."""

from rerankrt.export.pipeline import export_model

__all__ = ["export_model"]
