"""Log lines a client cannot forge: what it sends is escaped in the text log format."""

from __future__ import annotations

import io
import json
import logging

import pytest
from fastapi.testclient import TestClient

from rerankrt.logs import JsonFormatter, TextFormatter, configure_logging, one_line
from rerankrt.server import create_app
from tests.fakes import make_model, settings

FORGED = "/x%0D%0A12:00:00 INFO rerankrt.access: GET /admin 200 0.1 ms%0Aforged%E2%80%A8line"


@pytest.fixture
def log_output():
    """Everything rerankrt.access logs while the test runs, formatted as `rerankrt serve` formats it (text)."""
    configure_logging("info", "text")
    stream = io.StringIO()
    handler = logging.getLogger().handlers[0]
    handler.setStream(stream)
    yield stream
    logging.getLogger().handlers.clear()


def test_a_path_with_line_breaks_is_logged_on_one_line(log_output):
    with TestClient(create_app(settings(), make_model())) as client:
        assert client.get(FORGED).status_code == 404  # no API key needed: 404s are logged too
    lines = [line for line in log_output.getvalue().splitlines() if line]
    access = [line for line in lines if " INFO rerankrt.access: GET /x" in line]
    assert len(access) == 1, lines
    assert "\\r\\n12:00:00 INFO rerankrt.access: GET /admin" in access[0] and "\\nforged\\u2028line" in access[0]
    assert not any(line.startswith(("forged", "12:00:00 INFO rerankrt.access: GET /admin")) for line in lines)


def test_text_lines_escape_control_characters_and_keep_tracebacks():
    formatter = TextFormatter("%(levelname)s %(message)s")
    record = logging.makeLogRecord({"msg": "path %s", "args": ("/a\nb\r\x1b[2Jc\u2028",), "levelname": "INFO"})
    assert formatter.format(record) == "INFO path /a\\nb\\r\\x1b[2Jc\\u2028"
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.makeLogRecord({"msg": "failed", "levelname": "ERROR", "exc_info": sys.exc_info()})
    assert formatter.format(record).startswith("ERROR failed\nTraceback")
    assert one_line("plain text, no escapes") == "plain text, no escapes"


def test_json_lines_stay_one_object_per_line():
    record = logging.makeLogRecord({"msg": "GET %s", "args": ("/a\nb",), "path": "/a\nb"})
    line = JsonFormatter().format(record)
    assert "\n" not in line and json.loads(line)["path"] == "/a\nb"
