"""Fuzzing, bounded for CI (about a minute in all): schema-driven requests to every POST route of a running
server, with and without the API key, must never get a 5xx; malformed images and videos must only ever be the
client's 400 or 413; bodies no JSON parser should take (nested thousands deep, numbers past a float or
an int, bytes that are not UTF-8, a key twice, NaN) are a 400 naming what is wrong, in each route's error body,
on every route that takes a body.

The server is `tests.fake_server --multimodal --offline` (the real app and HTTP server over an in-memory model
that takes media parts; made-up URLs resolve nowhere and connect only to loopback, so nothing leaves the machine).
Requests come from schemathesis' strategies for the server's own /openapi.json (examples, then generated and
mutated bodies); each run is seeded, so a failure replays. The hostile bodies go to the app itself over the
in-memory model of tests/fakes.py (unit tier).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import sys
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings

from rerankrt.errors import InputError
from rerankrt.server import create_app
from rerankrt.server.app import ROUTERS
from rerankrt.server.bodies import MAX_JSON_DEPTH, nesting_depth
from rerankrt.server.media import MediaLimits
from rerankrt.server.media.decode import decode_image, decode_video
from tests import fakes
from tests.support import fake_server, image_bytes, mp4_bytes

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:PIL")
KEY = "fuzz-key"
EXAMPLES = {True: 150, False: 15}  # per POST route, with the key and without it


@pytest.fixture(scope="module")
def server():
    config = {"api_key": KEY, "max_documents_per_request": 50, "request_timeout": 20, "log_level": "warning"}
    with fake_server("--multimodal", "--offline", settings=config) as (base, proc):
        yield base


def post_operations(base: str):
    schemathesis = pytest.importorskip("schemathesis")
    spec = httpx.get(f"{base}/openapi.json", timeout=10).json()
    schema = schemathesis.openapi.from_dict(spec)
    operations = [result.ok() for result in schema.get_all_operations()]
    return [op for op in operations if op.method.upper() == "POST"]


@pytest.mark.integration
@pytest.mark.parametrize("with_key", [True, False], ids=["with-key", "without-key"])
def test_no_request_gets_a_5xx(server, with_key):
    operations = post_operations(server)
    assert {op.path for op in operations} >= {"/v1/rerank", "/rerank", "/v2/rerank", "/v1/score"}
    headers = {"Authorization": f"Bearer {KEY}"} if with_key else {}
    failures, statuses = [], {}
    for operation in operations:

        @settings(
            max_examples=EXAMPLES[with_key], deadline=None, database=None, derandomize=True,
            phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck),
        )  # fmt: skip
        @given(case=operation.as_strategy())
        def run(case):
            response = case.call(base_url=server, headers=headers, timeout=30)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.path} {case.body!r:.300} -> {response.status_code} "
                                f"{response.text[:300]}")  # fmt: skip

        run()
    assert not failures, "\n".join(failures[:10])
    if not with_key:
        assert set(statuses) == {401}, statuses
    else:
        assert sum(statuses.values()) >= len(operations) * 10 and any(s < 300 for s in statuses), statuses
    assert httpx.get(f"{server}/health", timeout=10).status_code == 200


# --- malformed media files ------------------------------------------------------------------------


def seeds() -> dict[str, tuple[str, bytes]]:
    rgb = np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    files = {fmt: ("image", image_bytes(rgb, fmt)) for fmt in ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF")}
    files["MP4"] = ("video", mp4_bytes((np.roll(rgb, i, axis=1) for i in range(12)), fps=4))
    return files


def mutate(data: bytes, rng: random.Random) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        kind, at = rng.random(), rng.randrange(len(data))
        if kind < 0.4:
            data[at] = rng.randrange(256)  # a byte changed
        elif kind < 0.6:
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))  # bytes inserted
        elif kind < 0.8:
            del data[at : at + rng.randint(1, 64)]  # bytes removed
        else:
            data[at : at + 4] = rng.choice([b"\xff\xff\xff\x7f", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff"])  # sizes
    if rng.random() < 0.2:
        data = data[: rng.randrange(1, len(data))]  # truncated
    return bytes(data)


@pytest.mark.integration
def test_malformed_media_are_always_a_400_or_413():
    """About 1,400 mutated files (bytes changed, inserted, removed, size fields maxed, truncation), each decoded
    with the server's limits: an InputError (400/413) or a decoded result, never another exception or a hang."""
    limits = MediaLimits(max_image_pixels=4_000_000, max_video_frames=8, max_frame_pixels=64 * 64)
    rng = random.Random(13)
    unexpected, slowest = [], 0.0
    for fmt, (kind, seed) in seeds().items():
        for i in range(200):
            data = mutate(seed, rng)
            decode = decode_image if kind == "image" else decode_video
            started = time.perf_counter()
            try:
                result = decode(data, limits, f"documents[{i}]")
                if kind == "image":
                    assert result.mode == "RGB"
                else:
                    assert result.frames.ndim == 4 and result.frames.shape[0] >= 1
            except InputError:
                pass
            except Exception as error:  # noqa: BLE001 - what a server would answer with a 500
                unexpected.append(f"{fmt} #{i}: {type(error).__name__}: {error}")
            slowest = max(slowest, time.perf_counter() - started)
    assert not unexpected, "\n".join(unexpected[:10])
    assert slowest < 5, f"one malformed file took {slowest:.1f} s to refuse"


# --- bodies no parser should take ---------------------------------------------------------------

NO_BODY = {"/ping"}  # POST routes that read no body
JSON = {"content-type": "application/json"}
VALID = {"query": "q", "documents": ["d"], "text_1": "q", "text_2": ["d"], "texts": ["d"], "prompt": "q"}


def body_routes() -> list[str]:
    """Every POST path of the app's routers, so a new route is fuzzed as soon as it is added."""
    paths = {route.path for router in ROUTERS for route in router.routes if "POST" in route.methods}
    return sorted(paths - NO_BODY)


def with_field(value: bytes, name: bytes = b"top_n") -> bytes:
    """A valid body for every route with one more field, written as given."""
    return json.dumps(VALID).encode()[:-1] + b', "' + name + b'": ' + value + b"}"


def nested(rng: random.Random, levels: int) -> bytes:
    """Arrays and objects `levels` deep, in a random mix; each array starts with a string of brackets, which do not
    count."""
    kinds = [rng.choice("[{") for _ in range(levels)]
    opening = b"".join(b'["[{", ' if kind == "[" else b'{"k": ' for kind in kinds)
    return opening + b"1" + b"".join(b"]" if kind == "[" else b"}" for kind in reversed(kinds))


def hostile_bodies(rng: random.Random) -> Iterator[tuple[str, bytes, str]]:
    """(kind, body, what the error must say), a few random ones of each kind."""
    for _ in range(3):
        levels = rng.choice([MAX_JSON_DEPTH, rng.randint(MAX_JSON_DEPTH, 20_000)])
        yield "deep", with_field(nested(rng, levels)), f"nested {levels + 1} levels deep, over the limit"
        limit = sys.get_int_max_str_digits()
        digits = rng.randint(limit + 1, 100_000)
        sign = rng.choice([b"", b"-"])
        yield "big integer", with_field(sign + b"9" * digits), f"an integer of more than {limit} digits"
        mantissa = rng.choice(["1", "-2.5", "9" * rng.randint(1, 400)])
        literal = f"{mantissa}{rng.choice(['e', 'E+'])}{rng.randint(400, 10**6)}"
        yield "huge float", with_field(literal.encode()), "is beyond the range of a float"
        raw = json.dumps(VALID).encode()
        at = rng.randrange(len(raw))
        bad = raw[:at] + rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"]) + raw[at:]
        yield "invalid UTF-8", bad, f"not UTF-8 at byte {at}"
        key = rng.choice(list(VALID))
        yield "duplicate key", with_field(json.dumps(VALID[key]).encode(), key.encode()), f'key "{key}" given twice'
        inner = with_field(b'{"text": "a", "x": 1, "text": "b"}', b"extra")
        yield "nested duplicate key", inner, 'key "text" given twice'
        constant = rng.choice(["NaN", "Infinity", "-Infinity"])
        yield "NaN", with_field(f"[1.5, {constant}]".encode()), f"{constant} is not a JSON number"
        half = rng.choice(["\\ud800", "\\udfff", "\\uDBFF"])
        yield "lone surrogate", with_field(f'"a{half}b"'.encode()), f"a lone surrogate {half.lower()}"
    yield "UTF-16", json.dumps(VALID).encode("utf-16"), "not UTF-8 at byte 0"


def error_message(response) -> str:
    """The message in any route's error body: rerankrt's, vLLM's, TEI's or Infinity's."""
    body = response.json()
    if "detail" in body:
        return body["detail"][0]["msg"]
    if "message" in body:
        return body["message"]
    return body["error"]["message"] if isinstance(body["error"], dict) else body["error"]


@pytest.fixture(scope="module", params=["sglang", "infinity"], ids=lambda c: f"convention-{c}")
def app_client(request):
    """The app over the in-memory model (tests/fakes.py); with --rerank-convention infinity the rerank paths answer
    client mistakes as Infinity does (422)."""
    config = fakes.settings(rerank_convention=request.param)
    with TestClient(create_app(config, fakes.make_model()), raise_server_exceptions=False) as client:
        yield client


def test_every_route_refuses_hostile_bodies_naming_the_problem(app_client):
    routes = body_routes()
    assert {"/v1/rerank", "/rerank", "/v2/rerank", "/v1/score", "/invocations", "/predict", "/tokenize"} <= set(routes)
    wrong = []
    for kind, body, expected in hostile_bodies(random.Random(22)):
        for path in routes:
            response = app_client.post(path, content=body, headers=JSON)
            if response.status_code not in (400, 422) or expected not in error_message(response):
                wrong.append(f"{kind} -> {path}: {response.status_code} {response.text[:200]} (expected {expected!r})")
    assert not wrong, f"{len(wrong)} wrong answers:\n" + "\n".join(wrong[:10])


def test_json_at_the_depth_limit_and_brackets_in_strings_are_taken(app_client):
    rng = random.Random(64)
    at_limit = with_field(nested(rng, MAX_JSON_DEPTH - 1))  # the body itself is one level
    response = app_client.post("/v1/rerank", content=at_limit, headers=JSON)
    assert response.status_code in (400, 422) and "top_n" in error_message(response)  # parsed; top_n is no integer
    brackets = '[{"\\\\\\"' * 5000  # brackets, quotes and backslashes, escaped in JSON
    body = json.dumps({"query": brackets, "documents": [brackets, "d"], "top_n": 1})
    response = app_client.post("/v2/rerank", content=body.encode("utf-8-sig"), headers=JSON)
    assert response.status_code == 200, response.text  # a byte order mark is skipped
    assert response.json()["results"][0]["document"] == {"text": brackets}


def test_nesting_depth_counts_only_brackets_outside_strings():
    assert nesting_depth(b'{"a": [1, {"b": "]]]}}"}, ["\\"[[[", "\\\\"], []]}') == 3
    assert nesting_depth(b"[" * 100_000) == 100_000  # unclosed, as deep as it goes
    assert nesting_depth(b'"' + b"[" * 100 + b'\\\\"[') == 1  # the string ends at an unescaped quote
    assert nesting_depth(b"") == 0


def test_a_body_over_the_limit_is_a_413_in_each_routes_error_body():
    """By Content-Length or by the bytes that arrive (chunked): the route answers in its own body; one that reads
    no body gets rerankrt's (by Content-Length: it never reads the bytes to count)."""
    body = json.dumps({**VALID, "documents": ["x" * 2000]}).encode()
    app = create_app(fakes.settings(max_request_bytes=1024), fakes.make_model())
    with TestClient(app, raise_server_exceptions=False) as client:
        sends = [(path, sent) for path in body_routes() for sent in (body, iter([body[:1000], body[1000:]]))]
        for path, sent in [*sends, *((path, body) for path in NO_BODY)]:
            response = client.post(path, content=sent, headers=JSON)
            assert response.status_code == 413, (path, response.text)
            assert error_message(response) == "body: over the limit of 1024 bytes", (path, response.text)
            if path not in NO_BODY:  # the same body as the route's other errors
                assert set(response.json()) == set(client.post(path, content=b"{", headers=JSON).json()), path


def test_a_client_gone_before_its_body_arrived_is_a_499_not_an_error(caplog):
    app = create_app(fakes.settings(), fakes.make_model())
    events = [{"type": "http.request", "body": b'{"query": "q", ', "more_body": True}, {"type": "http.disconnect"}]
    sent = []

    async def receive():
        return events.pop(0)

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/v1/rerank", "raw_path": b"/v1/rerank", "query_string": b"", "root_path": "",
        "headers": [(b"content-type", b"application/json")], "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
    }  # fmt: skip
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 499
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
