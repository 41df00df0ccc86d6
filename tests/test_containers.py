"""The container files, linted with hadolint (the `dev` extra installs it); no Docker engine is needed."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.integration  # runs hadolint
@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cpu"])
def test_dockerfile_passes_hadolint(dockerfile):
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint is missing: pip install -e '.[dev]'"
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "style", str(ROOT / dockerfile)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cpu"])
def test_container_serves_rerankrt_on_all_interfaces(dockerfile):
    text = (ROOT / dockerfile).read_text()
    assert 'ENTRYPOINT ["rerankrt", "serve"]' in text
    assert "RERANKRT_HOST=0.0.0.0" in text and "EXPOSE 30000" in text
