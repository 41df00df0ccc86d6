"""What a server must not give away: ONNX Runtime's telemetry, and the exporter's local paths as model names
(DNS results and port probing through the media fetcher are in test_media_hostile)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from rerankrt.runtime import loader
from rerankrt.runtime.settings import RerankerSettings


def test_onnxruntime_telemetry_is_off(tmp_path):
    """ONNX Runtime's 1DS telemetry keeps a device id and an upload queue under ~/.cache/Microsoft and resolves its
    collector's host; with it off, nothing is written there (and nothing is resolved)."""
    home = tmp_path / "home"
    home.mkdir()
    script = textwrap.dedent(
        f"""
        import onnx
        from onnx import TensorProto, helper
        from rerankrt.runtime.onnxruntime_backend import GraphSession

        graph = helper.make_graph(
            [helper.make_node("Identity", ["x"], ["y"])], "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        )
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), {str(tmp_path / "g.onnx")!r})
        import numpy as np
        print(GraphSession({str(tmp_path / "g.onnx")!r}).run({{"x": np.ones(1, np.float32)}})[0])
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("ORT_DISABLE_TELEMETRY", "XDG_CACHE_HOME")}
    result = subprocess.run(
        [sys.executable, "-c", script], env={**env, "HOME": str(home)}, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "[1.]" in result.stdout
    written = [str(p.relative_to(home)) for p in home.rglob("*")]
    assert not written, f"telemetry state written under $HOME: {written}"


def test_openvino_writes_nothing_under_home_or_beside_the_graph(tmp_path):
    """No telemetry (`import openvino` alone sends an event and writes ~/intel/openvino_ga_cid), model cache or
    compiled blob: the artifact folder holds only listed files (artifact.py)."""
    home, folder = tmp_path / "home", tmp_path / "artifact"
    home.mkdir()
    folder.mkdir()
    script = textwrap.dedent(
        f"""
        import numpy as np
        import onnx
        from onnx import TensorProto, helper
        from rerankrt.runtime.openvino_backend import OpenVinoGraph, compile_config, import_openvino
        from rerankrt.precision import Precision

        graph = helper.make_graph(
            [helper.make_node("Relu", ["x"], ["y"])], "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])],
        )
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), {str(folder / "g.onnx")!r})
        core = import_openvino().Core()
        runner = OpenVinoGraph(core, {str(folder / "g.onnx")!r}, compile_config(1, Precision.FP32))
        print(runner.run({{"x": np.array([-1.0, 2.0, 3.0], np.float32)}}, ["y"])[0])
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], env={**os.environ, "HOME": str(home)}, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "[0. 2. 3.]" in result.stdout  # any length: dynamic shapes
    assert not list(home.rglob("*")), [str(p) for p in home.rglob("*")]
    assert [p.name for p in folder.iterdir()] == ["g.onnx"]


def test_a_plain_model_folder_is_named_by_its_folder_not_its_path(tokenizer_dirs, monkeypatch):
    monkeypatch.setattr(loader, "open_first", lambda plans, family, *args: (None, plans[0], None))
    model = loader.load_model(RerankerSettings(model_path=str(tokenizer_dirs["xlmr"]), backend="torch"))
    assert model.name == "xlmr"
    named = loader.load_model(RerankerSettings(model_path=str(tokenizer_dirs["xlmr"]), served_model_name="mine"))
    assert named.name == "mine"
