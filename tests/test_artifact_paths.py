"""Manifest names stay inside the artifact folder, every file a loader could read is listed and hashed, and the
torch backend reads only source files the export hashed."""

from __future__ import annotations

import shutil

import pytest

from rerankrt.artifact import check_source_files, load_manifest, sha256_file, source_files
from rerankrt.errors import ArtifactError
from rerankrt.families import get_family
from rerankrt.precision import Precision
from rerankrt.runtime.plan import Request, ServingPlan, Skipped, plan_serving
from rerankrt.runtime.torch_backend import TorchBackend
from tests.fakes import CPU, manifest
from tests.support import edit_manifest, write_fake_artifact


@pytest.fixture
def artifact(tmp_path):
    return write_fake_artifact(tmp_path / "art")


def list_graph(folder, name, path):
    """The scorer graph renamed to `name` (read from `path`), listed with its true hash: only the name is at fault."""

    def change(m):
        m["files"].pop(m["graphs"]["scorer"]["file"])
        m["graphs"]["scorer"]["file"] = name
        m["files"][name] = sha256_file(path)

    edit_manifest(folder, change)


def test_a_graph_name_leaving_the_folder_is_refused(artifact, tmp_path):
    outside = tmp_path / "outside.onnx"
    outside.write_bytes(b"a graph outside the artifact")
    (artifact / "model.onnx").unlink()
    list_graph(artifact, "../outside.onnx", outside)
    with pytest.raises(ArtifactError, match=r"'\.\./outside\.onnx' leaves the folder"):
        load_manifest(artifact)
    list_graph(artifact, str(outside), outside)
    with pytest.raises(ArtifactError, match="is an absolute path"):
        load_manifest(artifact)


@pytest.mark.parametrize("name", ["sub/../../x.json", "/etc/passwd", "a\\..\\b", "./model.onnx", "", "C:/x"])
def test_any_file_name_must_be_relative_and_inside(artifact, name):
    edit_manifest(artifact, lambda m: m["files"].update({name: "0" * 64}))
    with pytest.raises(ArtifactError, match="names must be relative, inside the folder"):
        load_manifest(artifact)


def test_encoder_and_engine_names_are_checked_too(artifact):
    edit_manifest(artifact, lambda m: m["encoder_files"].append("../tokenizer.json"))
    with pytest.raises(ArtifactError, match=r"encoder_files\[1\] '\.\./tokenizer\.json' leaves the folder"):
        load_manifest(artifact)


def test_a_listed_link_leading_out_is_refused(artifact, tmp_path):
    outside = tmp_path / "elsewhere.json"
    outside.write_text("{}")
    (artifact / "tokenizer.json").unlink()
    (artifact / "tokenizer.json").symlink_to(outside)  # same bytes as the listed tokenizer.json, same hash
    with pytest.raises(ArtifactError, match="'tokenizer.json' is a link leading out of the folder"):
        load_manifest(artifact)


@pytest.mark.parametrize("extra", ["added_tokens.json", "chat_template.jinja", "sub/model.onnx_data", "link"])
def test_an_unlisted_file_is_refused(artifact, extra):
    path = artifact / extra
    path.parent.mkdir(exist_ok=True)
    if extra == "link":
        path.symlink_to(artifact / "tokenizer.json")
    else:
        path.write_text('{"<evil>": 5}')
    with pytest.raises(ArtifactError, match=f"{extra}: not listed in manifest.json"):
        load_manifest(artifact)
    with pytest.raises(ArtifactError, match="not listed"):  # whether or not hashes are checked
        load_manifest(artifact, verify_hashes=False)


def test_the_engine_builders_caches_are_not_listed(artifact):
    (artifact / "tensorrt.sm90.trt11.4.0.106.timing-cache").write_bytes(b"cache")  # engines.timing_cache_name
    (artifact / "onnxruntime-tensorrt-cache").mkdir()
    (artifact / "onnxruntime-tensorrt-cache" / "engine.bin").write_bytes(b"cache")
    assert load_manifest(artifact).family == "cross-encoder"


# --- the torch backend's source files --------------------------------------------------------------


def source_folder(tmp_path):
    folder = tmp_path / "source"
    folder.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "README.md"):
        (folder / name).write_text(f"contents of {name}")
    (folder / "pytorch_model.bin").write_text("not read: safetensors win")
    (folder / "tf_model.h5").write_text("another framework's weights")
    (folder / "onnx").mkdir()  # subfolders are not read
    return folder


def test_source_files_are_what_transformers_reads(tmp_path):
    folder = source_folder(tmp_path)
    assert source_files(folder) == ["README.md", "config.json", "model.safetensors", "tokenizer.json"]


def test_changed_or_added_source_files_are_refused(tmp_path):
    folder = source_folder(tmp_path)
    hashes = {name: sha256_file(folder / name) for name in source_files(folder)}
    check_source_files(folder, hashes)
    (folder / "added_tokens.json").write_text("{}")
    with pytest.raises(ArtifactError, match="added_tokens.json: not among the source files hashed at export"):
        check_source_files(folder, hashes)
    (folder / "added_tokens.json").unlink()
    (folder / "model.safetensors").write_text("other weights")
    with pytest.raises(ArtifactError, match="model.safetensors: sha256 does not match"):
        check_source_files(folder, hashes)


def test_torch_refuses_changed_source_weights_before_loading_them(tmp_path):
    folder = source_folder(tmp_path)
    hashes = {name: sha256_file(folder / name) for name in source_files(folder)}
    (folder / "model.safetensors").write_text("swapped after export")
    plan = ServingPlan(
        backend="torch", device="cpu", precision=Precision.FP32, weights=str(folder), weight_files=hashes
    )
    with pytest.raises(ArtifactError, match="source weights changed"):
        TorchBackend.from_plan(plan, get_family("cross-encoder"))


def test_an_artifact_without_source_hashes_is_not_served_by_torch():
    old = manifest()
    old.source.files = {}
    torch = plan_serving(get_family(old.family), Request(backend="torch"), CPU, manifest=old, folder="/a")
    assert [type(p) for p in torch] == [Skipped, Skipped]
    assert "does not hash its source model's files" in torch[1].reason


@pytest.mark.integration
def test_a_real_export_hashes_its_source_and_torch_refuses_a_tampered_copy(artifact_dirs, model_dirs, tmp_path):
    from rerankrt.runtime import Reranker

    exported = load_manifest(artifact_dirs["xlmr"])
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(exported.source.files)
    copy, source = tmp_path / "artifact", tmp_path / "source"
    shutil.copytree(artifact_dirs["xlmr"], copy)
    shutil.copytree(model_dirs["xlmr"], source)
    edit_manifest(copy, lambda m: m["source"].update(path=str(source)))
    with Reranker.load(str(copy), backend="torch", threads=1) as reranker:
        assert reranker.backend.name == "torch"
    with open(source / "model.safetensors", "r+b") as weights:
        weights.seek(-4, 2)
        weights.write(b"\x00\x01\x02\x03")
    with pytest.raises(ArtifactError, match="model.safetensors: sha256 does not match the export's"):
        Reranker.load(str(copy), backend="torch", threads=1)


def test_the_engine_build_lock_is_not_a_listed_file(artifact):
    """Replicas sharing an artifact folder build a GPU's engine once, under a lock file in it."""
    (artifact / ".build-engine.lock").write_bytes(b"")
    assert load_manifest(artifact).family == "cross-encoder"
