import json
import shutil

import pytest

from rerankrt.artifact import MANIFEST_NAME, load_manifest, sha256_file
from rerankrt.errors import ArtifactError


@pytest.fixture
def artifact(artifact_dirs, tmp_path):
    """A private copy of the exported tiny XLM-R artifact, free to break."""
    return shutil.copytree(artifact_dirs["xlmr"], tmp_path / "art")


def edit_manifest(folder, change):
    data = json.loads((folder / MANIFEST_NAME).read_text())
    change(data)
    (folder / MANIFEST_NAME).write_text(json.dumps(data))


def test_intact_artifact_loads(artifact):
    assert load_manifest(artifact).family == "cross-encoder"


def test_tampered_file_is_refused_by_name(artifact):
    with open(artifact / "tokenizer.json", "a") as fh:
        fh.write(" ")
    with pytest.raises(ArtifactError, match=r"tokenizer\.json: sha256 does not match"):
        load_manifest(artifact)


def test_missing_graph_is_refused_by_name(artifact):
    (artifact / "model.onnx").unlink()
    with pytest.raises(ArtifactError, match=r"model\.onnx: listed in manifest.json but missing"):
        load_manifest(artifact)


def test_folder_without_manifest_says_to_export(tmp_path):
    with pytest.raises(ArtifactError, match="rerankrt export"):
        load_manifest(tmp_path)


def test_corrupt_manifest_is_refused(artifact):
    (artifact / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ArtifactError, match="manifest.json: not a valid manifest"):
        load_manifest(artifact)


def test_manifest_missing_a_field_is_refused(artifact):
    edit_manifest(artifact, lambda m: m.pop("family"))
    with pytest.raises(ArtifactError, match="family: Field required"):
        load_manifest(artifact)


def test_other_format_version_is_refused(artifact):
    edit_manifest(artifact, lambda m: m.update(format_version=99))
    with pytest.raises(ArtifactError, match="artifact format 99"):
        load_manifest(artifact)


def test_transformers_major_version_mismatch_is_refused(artifact):
    edit_manifest(artifact, lambda m: m["versions"].update(transformers="5.1.0"))
    with pytest.raises(ArtifactError, match="exported with transformers 5.1.0"):
        load_manifest(artifact)


def test_failed_parity_report_is_refused_even_with_matching_hash(artifact):
    parity = json.loads((artifact / "parity.json").read_text())
    parity["passed"] = False
    (artifact / "parity.json").write_text(json.dumps(parity))
    edit_manifest(artifact, lambda m: m["files"].update({"parity.json": sha256_file(artifact / "parity.json")}))
    with pytest.raises(ArtifactError, match="parity check did not pass"):
        load_manifest(artifact)


def test_unlisted_graph_is_refused(artifact):
    edit_manifest(artifact, lambda m: m["files"].pop("model.onnx"))
    with pytest.raises(ArtifactError, match="model.onnx is not listed"):
        load_manifest(artifact)
