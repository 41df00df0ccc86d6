"""ONNX export of a family's declared graphs: optimum for one-logit classifiers, torch.onnx (dynamo) otherwise."""

from __future__ import annotations

import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

from rerankrt.errors import ExportError
from rerankrt.families.base import GraphSpec, OptimumGraph, TorchGraph

LARGE_BYTES = 1_900_000_000  # weights past this go to external data (protobuf cannot hold 2 GB)


@dataclass(frozen=True)
class ExportedGraph:
    files: list[str]  # the .onnx file first, then any external-data files
    inputs: list[str]
    outputs: list[str]
    opset: int


def export_graph(spec: GraphSpec, out_dir: Path, opset: int | None = None) -> ExportedGraph:
    """Write the graph `spec` declares into `out_dir`."""
    if isinstance(spec, OptimumGraph):
        return export_with_optimum(spec.model, spec.task, out_dir, opset)
    return export_with_torch(spec, out_dir, opset)


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


def export_with_torch(spec: TorchGraph, out_dir: Path, opset: int | None = None) -> ExportedGraph:
    """torch.onnx's dynamo export of `spec.module`, dynamic axes named as declared."""
    path = out_dir / spec.file
    dims = [{axis: torch.export.Dim(name, min=low) for axis, (name, low) in axes.items()} for axes in spec.dynamic_axes]
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                spec.module,
                spec.args,
                dynamo=True,
                dynamic_shapes=tuple(dims),
                input_names=list(spec.input_names),
                output_names=list(spec.output_names),
                opset_version=opset or spec.opset,
                optimize=True,
                verbose=False,
            )
    except Exception as exc:
        raise ExportError(f"torch.onnx could not export {type(spec.module).__name__}: {exc}") from exc
    large = sum(p.numel() * p.element_size() for p in spec.module.parameters()) > LARGE_BYTES
    program.save(str(path), external_data=large)
    model = onnx.load(str(path), load_external_data=False)  # weights stay where they were written
    _rename_axes(model, spec)
    path.write_bytes(model.SerializeToString())
    files = [spec.file] + sorted(p.name for p in out_dir.iterdir() if p.name.startswith(spec.file + "."))
    return describe_graph(out_dir, files)


def _rename_axes(model: onnx.ModelProto, spec: TorchGraph) -> None:
    """Give dynamic axes their declared names (the exporter's own are s0, s1, ...), in inputs and outputs alike."""
    names = {
        (name, axis): axis_name
        for name, axes in zip(spec.input_names, spec.dynamic_axes, strict=True)
        for axis, (axis_name, _) in axes.items()
    }
    renamed = {}
    for value in model.graph.input:
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if (value.name, axis) in names and dim.dim_param:
                renamed[dim.dim_param] = names[(value.name, axis)]
    for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in renamed:
                dim.dim_param = renamed[dim.dim_param]


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
