"""Media budgets: parts per request, decoded pixels per request and per process reserved
before decoding, video frames scaled down while decoding, and a cap on one request's concurrent fetches so it
cannot starve other requests of connections."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from rerankrt.runtime.reranker import RequestTooLarge
from rerankrt.server import create_app
from rerankrt.server.media import MediaBusy, MediaFetcher, MediaLimits
from rerankrt.server.media.decode import decode_image, decode_video
from tests.fakes import make_model, settings
from tests.support import data_uri, image_bytes, image_ref, mp4_bytes

MEDIA_FILES = {"small.png": image_bytes(Image.new("RGB", (8, 8)))}
BIG_PNG = image_bytes(Image.new("1", (2000, 2000)))  # 4,000,000 pixels from a few kB


def limits(**wanted) -> MediaLimits:
    """MediaLimits with `wanted`; fields a build lacks are left out, so these tests also run against older ones."""
    return MediaLimits(**{k: v for k, v in wanted.items() if k in MediaLimits.__dataclass_fields__})


class Reservations:
    def __init__(self):
        self.calls = []

    def __call__(self, field, pixels):
        self.calls.append((field, pixels))


def test_decoded_pixels_are_reserved_before_decoding():
    reserve = Reservations()
    decode_image(BIG_PNG, MediaLimits(), "documents[0]", reserve)
    assert reserve.calls == [("documents[0]", 4_000_000)]


def test_video_frames_are_scaled_down_while_decoding_into_one_array():
    clip = mp4_bytes((np.full((256, 320, 3), 8 * i, np.uint8) for i in range(30)), fps=10)
    reserve = Reservations()
    video = decode_video(clip, MediaLimits(max_frame_pixels=80 * 64, video_fps=2), "documents[1]", reserve)
    assert video.frames.shape == (6, 64, 80, 3)  # 3 s at 2 frames/s, each 320x256 scaled to 80x64
    assert reserve.calls == [("documents[1]", 6 * 80 * 64)]
    assert video.frames.base is not None and video.frames.base.shape[0] == 6  # one array, frames written into it


def test_a_request_over_its_pixel_budget_is_a_413_before_decoding_more():
    async def main():
        async with MediaFetcher(MediaLimits(max_request_pixels=10_000_000)) as fetcher:
            refs = [image_ref(data_uri(BIG_PNG, "image/png"), f"documents[{i}]") for i in range(10)]
            with pytest.raises(RequestTooLarge, match="over the limit of 10000000 per request") as info:
                await fetcher.fetch_all(refs)
            assert fetcher.pixels.used == 0  # released
            return info.value.field

    assert asyncio.run(main()) in {f"documents[{i}]" for i in range(2, 10)}


def test_the_process_pixel_budget_is_shared_and_released():
    async def main():
        fetcher = MediaFetcher(MediaLimits(max_request_pixels=5_000_000, max_process_pixels=6_000_000))
        ref = image_ref(data_uri(BIG_PNG, "image/png"), "documents[0]")
        with fetcher.budget() as first:
            await fetcher.fetch_all([ref], first)
            assert fetcher.pixels.used == 4_000_000
            with pytest.raises(MediaBusy, match="retry later"):
                await fetcher.fetch_all([ref])
        assert fetcher.pixels.used == 0
        assert len(await fetcher.fetch_all([ref])) == 1
        await fetcher.aclose()

    asyncio.run(main())


def test_parts_per_request_and_pixels_are_413_and_busy_is_503_over_http():
    config = settings(
        max_documents_per_request=100,
        media_max_parts_per_request=4,
        media_max_request_pixels=5_000_000,
        media_max_process_pixels=5_000_000,
    )
    big = {"type": "image_url", "image_url": {"url": data_uri(BIG_PNG, "image/png")}}
    with TestClient(create_app(config, make_model(multimodal=True))) as client:
        small = {"type": "image_url", "image_url": {"url": data_uri(MEDIA_FILES["small.png"], "image/png")}}
        response = client.post("/v1/rerank", json={"query": "q", "documents": ["d", *[[small]] * 5]})
        assert response.status_code == 413 and response.json()["param"] == "documents[5][0].image_url.url"
        assert "more than 4 image and video parts" in response.json()["message"]
        again = big["image_url"]["url"].replace("image/png;", "image/png;name=b;")  # another URL, the same image
        two_big = {"query": "q", "documents": [[big], [{**big, "image_url": {"url": again}}]]}
        over = client.post("/v1/rerank", json=two_big)
        assert over.status_code == 413 and "per request" in over.json()["message"]
        assert client.post("/v1/rerank", json={"query": "q", "documents": [[big]]}).status_code == 200
        assert client.app.state.media.pixels.used == 0  # released once answered
        with client.app.state.media.budget() as other_requests:
            other_requests.reserve("elsewhere", 2_000_000)
            busy = client.post("/v1/rerank", json={"query": "q", "documents": [[big]]})
            assert busy.status_code == 503 and busy.headers["retry-after"] and "retry later" in busy.json()["message"]


def test_one_request_cannot_starve_another_of_connections(media_base):
    """150 slow URLs in one request took the shared pool's 100 connections; another request's image waited."""

    async def main():
        fetcher = MediaFetcher(limits(allowed_networks=("127.0.0.1/32",), max_parts=200, fetch_timeout=5))
        slow = [image_ref(f"{media_base}/small.png?delay=3&n={i}", f"documents[{i}]") for i in range(150)]
        hog = asyncio.ensure_future(fetcher.fetch_all(slow))
        await asyncio.sleep(0.5)
        started = time.monotonic()
        await fetcher.fetch_all([image_ref(f"{media_base}/small.png", "documents[0]")])
        waited = time.monotonic() - started
        hog.cancel()
        await asyncio.gather(hog, return_exceptions=True)
        await fetcher.aclose()
        return waited

    waited = asyncio.run(main())
    assert waited < 1.0, f"an ordinary image waited {waited:.1f} s behind another request's fetches"
