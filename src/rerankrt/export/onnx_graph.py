"""ONNX export of a family's one-logit model, with optimum."""

from __future__ import annotations

import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx

from rerankrt.errors import ExportError


@dataclass(frozen=True)
class ExportedGraph:
    files: list[str]  # the .onnx file first, then any external-data files
    inputs: list[str]
    outputs: list[str]
    opset: int


def export_with_optimum(model, task: str, out_dir: Path, opset: int | None = None) -> ExportedGraph:
    """Export `model` for `task` into `out_dir/model.onnx` (plus external data for models over 2 GB)."""
    from optimum.exporters.onnx import onnx_export_from_model

    with tempfile.TemporaryDirectory(prefix="rerankrt-onnx-") as tmp:
        try:
            with warnings.catch_warnings():  # tracer chatter; the parity check is what proves the graph
                warnings.simplefilter("ignore")
                # optimum's own validation re-runs the model; our parity check (export.parity) is stricter
                onnx_export_from_model(model, tmp, opset=opset, task=task, do_validation=False)
        except Exception as exc:
            raise ExportError(f"optimum could not export {type(model).__name__} for {task}: {exc}") from exc
        produced = sorted(p for p in Path(tmp).iterdir() if p.name.startswith("model.onnx"))
        if not produced or produced[0].name != "model.onnx":
            raise ExportError(f"optimum wrote no model.onnx (found: {[p.name for p in Path(tmp).iterdir()]})")
        for path in produced:
            shutil.move(str(path), out_dir / path.name)
    return describe_graph(out_dir, [p.name for p in produced])


def describe_graph(folder: Path, files: list[str]) -> ExportedGraph:
    proto = onnx.load(str(folder / files[0]), load_external_data=False)
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    initializer_names = {init.name for init in proto.graph.initializer}
    return ExportedGraph(
        files=files,
        inputs=[i.name for i in proto.graph.input if i.name not in initializer_names],
        outputs=[o.name for o in proto.graph.output],
        opset=opset,
    )
