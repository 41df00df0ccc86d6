"""Prompt templates come from artifacts and --chat-template, so they are hostile until rendered sandboxed: no
template can run code, at load or on a request, whatever the manifest's hashes say."""

from __future__ import annotations

import json
import shutil

import pytest

from rerankrt.artifact import MANIFEST_NAME, sha256_file
from rerankrt.errors import RerankrtError, UnsupportedModelError
from rerankrt.families import get_family
from rerankrt.families.yes_no import TEMPLATE_FILE, PromptTemplate
from tests.support import rerankrt

# Ways out of a Jinja template into Python, each touching `{marker}` if it gets there.
ESCAPES = [
    "{{{{ cycler.__init__.__globals__.os.system('touch {marker}') }}}}",
    "{{{{ joiner.__init__.__globals__['os'].popen('touch {marker}').read() }}}}",
    "{{{{ ''.__class__.__mro__[1].__subclasses__() }}}}"
    "{{{{ namespace.__init__.__globals__.os.system('touch {marker}') }}}}",
    "{{{{ lipsum.__globals__['os'].system('touch {marker}') }}}}",
    "{{% set x = self.__init__.__globals__ %}}{{{{ x.__builtins__.open('{marker}', 'w').write('x') }}}}",
    "{{{{ messages.append(1) or (range.__self__.__import__('os').system('touch {marker}')) }}}}",
]
# A usable reranker template (it passes the load check) that escapes only when a request sends `instruct`.
ON_REQUEST = (
    "<Instruct>: {{% if instruct is defined %}}"
    "{{{{ cycler.__init__.__globals__.os.system('touch {marker}') }}}}{{% endif %}}\n"
    "<Query>: {{{{ messages[0].content }}}}\n<Document>: {{{{ messages[1].content }}}}"
)


@pytest.mark.parametrize("escape", ESCAPES)
def test_no_template_escapes_the_sandbox(escape, tmp_path):
    marker = tmp_path / "ran"
    template = PromptTemplate(escape.format(marker=marker), "hostile.jinja")
    with pytest.raises(UnsupportedModelError, match="hostile.jinja: the template failed to render"):
        template.render("q", "d", None)
    assert not marker.exists()


@pytest.fixture
def qwen3_folder(tokenizer_dirs, tmp_path):
    """The tiny Qwen3 reranker's tokenizer folder (no weights), free to change."""
    return shutil.copytree(tokenizer_dirs["qwen3"], tmp_path / "qwen3")


@pytest.mark.parametrize("source", ["artifact", "flag"])
def test_a_hostile_template_is_refused_at_load(qwen3_folder, tmp_path, source):
    marker = tmp_path / "ran"
    hostile = ESCAPES[0].format(marker=marker) + "{{ messages[0].content }}{{ messages[1].content }}"
    flag = None
    if source == "artifact":
        (qwen3_folder / TEMPLATE_FILE).write_text(hostile)
    else:
        flag = tmp_path / "chat-template.jinja"
        flag.write_text(hostile)
    with pytest.raises(UnsupportedModelError, match="the template failed to render"):
        get_family("qwen3-yes-no").load_encoder(qwen3_folder, chat_template=flag)
    assert not marker.exists()


def test_a_template_escaping_on_requests_only_never_runs(qwen3_folder, tmp_path):
    marker = tmp_path / "ran"
    (qwen3_folder / TEMPLATE_FILE).write_text(ON_REQUEST.format(marker=marker))
    encoder = get_family("qwen3-yes-no").load_encoder(qwen3_folder)  # passes the load check
    assert len(encoder.encode("q", ["d"])) == 1
    with pytest.raises(RerankrtError, match="the template failed to render"):
        encoder.encode("q", ["d"], instruct="anything")
    assert not marker.exists()


@pytest.mark.integration
def test_rewritten_hashes_do_not_help_a_hostile_artifact(artifact_dirs, tmp_path):
    """The manifest's hashes catch a changed file, not an attacker who rewrites them: the sandbox is what holds."""
    from rerankrt.runtime import Reranker

    marker = tmp_path / "ran"
    artifact = shutil.copytree(artifact_dirs["qwen3"], tmp_path / "artifact")
    (artifact / TEMPLATE_FILE).write_text(ESCAPES[0].format(marker=marker) + ON_REQUEST.format(marker=marker))
    manifest = json.loads((artifact / MANIFEST_NAME).read_text())
    manifest["files"][TEMPLATE_FILE] = sha256_file(artifact / TEMPLATE_FILE)
    (artifact / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(UnsupportedModelError, match="the template failed to render"):
        Reranker.load(str(artifact), backend="onnxruntime", threads=1)
    flag = tmp_path / "chat-template.jinja"
    flag.write_text(ON_REQUEST.format(marker=marker))
    result = rerankrt("rerank", "--model-path", artifact_dirs["qwen3"], "--chat-template", flag, "--query", "q",
                      "--instruct", "go", "d")  # fmt: skip
    assert result.returncode != 0 and "the template failed to render" in result.stderr
    assert not marker.exists()
