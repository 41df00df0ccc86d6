"""Media fetching, concurrent vs one at a time: 8 images from a local server that delays each response by 0.2 s.

.venv/bin/python -m bench.media_fetch
"""

from __future__ import annotations

import asyncio
import io
import statistics
import time

from PIL import Image

from rerankrt.server.media import MediaFetcher, MediaLimits, MediaRef
from rerankrt.testing.media_server import serve_media

IMAGES, DELAY_S, REPEATS = 8, 0.2, 5


def jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (448, 448), (40, 90, 200)).save(buffer, format="JPEG")
    return buffer.getvalue()


async def fetch_seconds(fetcher: MediaFetcher, refs: list[MediaRef], concurrent: bool) -> float:
    started = time.perf_counter()
    if concurrent:
        await fetcher.fetch_all(refs)
    else:
        for ref in refs:
            await fetcher.fetch_all([ref])
    return time.perf_counter() - started


async def measure(base: str) -> None:
    refs = [MediaRef("image", f"{base}/{i}.jpg?delay={DELAY_S}", f"documents[{i}]") for i in range(IMAGES)]
    async with MediaFetcher(MediaLimits(allowed_networks=("127.0.0.1/32",))) as fetcher:
        await fetch_seconds(fetcher, refs, concurrent=True)  # warm-up
        times = {
            mode: [await fetch_seconds(fetcher, refs, mode == "concurrent") for _ in range(REPEATS)]
            for mode in ("concurrent", "sequential")
        }
    concurrent, sequential = (statistics.median(times[mode]) for mode in ("concurrent", "sequential"))
    print(f"{IMAGES} images, {DELAY_S} s server delay each, median of {REPEATS}")
    print(f"concurrent: {concurrent:.3f} s   sequential: {sequential:.3f} s   ratio: {sequential / concurrent:.1f}x")


def main() -> None:
    picture = jpeg()
    with serve_media({f"{i}.jpg": picture for i in range(IMAGES)}) as base:
        asyncio.run(measure(base))


if __name__ == "__main__":
    main()
