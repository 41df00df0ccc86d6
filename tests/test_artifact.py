"""load_manifest's checks on hand-written artifact folders (unit tier), and on a real export."""

import json
import shutil

import pytest

from rerankrt.artifact import FIDELITY_NAME, MANIFEST_NAME, PARITY_NAME, load_manifest, sha256_file
from rerankrt.errors import ArtifactError
from tests.support import edit_manifest, write_fake_artifact


@pytest.fixture
def artifact(tmp_path):
    """A hand-written cross-encoder artifact (made-up graph bytes), free to break."""
    return write_fake_artifact(tmp_path / "art")


def rewrite_listed(folder, name, change):
    """Change a JSON report and list its new hash, so only its content is at fault."""
    report = json.loads((folder / name).read_text())
    change(report)
    (folder / name).write_text(json.dumps(report))
    edit_manifest(folder, lambda m: m["files"].update({name: sha256_file(folder / name)}))


def test_intact_artifact_loads(artifact):
    assert load_manifest(artifact).family == "cross-encoder"


def test_tampered_file_is_refused_by_name(artifact):
    with open(artifact / "tokenizer.json", "a") as fh:
        fh.write(" ")
    with pytest.raises(ArtifactError, match=r"tokenizer\.json: sha256 does not match"):
        load_manifest(artifact)


def test_tampered_graph_is_refused_unless_hashes_are_skipped(artifact):
    (artifact / "model.onnx").write_bytes(b"another graph")
    with pytest.raises(ArtifactError, match=r"model\.onnx: sha256 does not match"):
        load_manifest(artifact)
    assert load_manifest(artifact, verify_hashes=False).graphs["scorer"].file == "model.onnx"


def test_missing_graph_is_refused_by_name(artifact):
    (artifact / "model.onnx").unlink()
    with pytest.raises(ArtifactError, match=r"model\.onnx: listed in manifest.json but missing"):
        load_manifest(artifact)
    with pytest.raises(ArtifactError, match="but missing"):  # also when hashes are not checked
        load_manifest(artifact, verify_hashes=False)


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
    rewrite_listed(artifact, PARITY_NAME, lambda report: report.update(passed=False))
    with pytest.raises(ArtifactError, match="parity check did not pass"):
        load_manifest(artifact)


def test_unlisted_parity_report_is_refused(artifact):
    edit_manifest(artifact, lambda m: m["files"].pop(PARITY_NAME))
    with pytest.raises(ArtifactError, match="parity.json is not listed; the export was not verified"):
        load_manifest(artifact)


def test_unlisted_graph_is_refused(artifact):
    edit_manifest(artifact, lambda m: m["files"].pop("model.onnx"))
    with pytest.raises(ArtifactError, match="model.onnx is not listed"):
        load_manifest(artifact)


@pytest.mark.parametrize("precision", ["int8", "bf16", "fp16"])
def test_a_variant_needs_its_fidelity_report(tmp_path, precision):
    folder = write_fake_artifact(tmp_path / "art", precision=precision)
    assert load_manifest(folder).precision == precision
    edit_manifest(folder, lambda m: m["files"].pop(FIDELITY_NAME))
    with pytest.raises(ArtifactError, match=f"precision {precision} without fidelity.json"):
        load_manifest(folder)


def test_a_failed_fidelity_check_is_refused_unless_accepted(tmp_path):
    folder = write_fake_artifact(tmp_path / "art", precision="int8")
    rewrite_listed(folder, FIDELITY_NAME, lambda report: report.update(passed=False))
    with pytest.raises(ArtifactError, match="fidelity.json: the int8 variant failed its fidelity check"):
        load_manifest(folder)
    rewrite_listed(folder, FIDELITY_NAME, lambda report: report.update(accepted=True))
    assert load_manifest(folder).precision == "int8"


@pytest.mark.integration
def test_a_real_export_loads_and_a_tampered_copy_is_refused(artifact_dirs, tmp_path):
    for folder in artifact_dirs.values():
        load_manifest(folder)
    copy = shutil.copytree(artifact_dirs["xlmr"], tmp_path / "art")
    (copy / "model.onnx").write_bytes((copy / "model.onnx").read_bytes() + b"\0")
    with pytest.raises(ArtifactError, match=r"model\.onnx: sha256 does not match"):
        load_manifest(copy)
