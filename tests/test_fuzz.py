"""Fuzzing, bounded for CI (about a minute in all): schema-driven requests to every POST route of a running
server, with and without the API key, must never get a 5xx; malformed images and videos must only ever be the
client's 400 or 413 (issue 13).

The server is `tests.fake_server --multimodal --offline` (the real app and HTTP server over an in-memory model
that takes media parts; made-up URLs resolve nowhere and connect only to loopback, so nothing leaves the machine).
Requests come from schemathesis' strategies for the server's own /openapi.json (examples, then generated and
mutated bodies); each run is seeded, so a failure replays.
"""

from __future__ import annotations

import random
import time

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings

from rerankrt.errors import InputError
from rerankrt.server.media import MediaLimits
from rerankrt.server.media.decode import decode_image, decode_video
from tests.support import fake_server, image_bytes, mp4_bytes

schemathesis = pytest.importorskip("schemathesis")

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::UserWarning:PIL")]
KEY = "fuzz-key"
EXAMPLES = {True: 150, False: 15}  # per POST route, with the key and without it


@pytest.fixture(scope="module")
def server():
    config = {"api_key": KEY, "max_documents_per_request": 50, "request_timeout": 20, "log_level": "warning"}
    with fake_server("--multimodal", "--offline", settings=config) as (base, proc):
        yield base


def post_operations(base: str):
    spec = httpx.get(f"{base}/openapi.json", timeout=10).json()
    schema = schemathesis.openapi.from_dict(spec)
    operations = [result.ok() for result in schema.get_all_operations()]
    return [op for op in operations if op.method.upper() == "POST"]


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
