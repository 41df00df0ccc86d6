"""Media fetching, concurrent vs one at a time: 8 images from a local server that delays each response by 0.2 s.

.venv/bin/python bench/media_fetch.py
"""

from __future__ import annotations

import asyncio
import io
import statistics
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image

from rerankrt.server.media import MediaFetcher, MediaLimits, MediaRef

IMAGES, DELAY_S, REPEATS = 8, 0.2, 5
buffer = io.BytesIO()
Image.new("RGB", (448, 448), (40, 90, 200)).save(buffer, format="JPEG")
JPEG = buffer.getvalue()


class DelayedImage(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        time.sleep(DELAY_S)
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(JPEG)))
        self.end_headers()
        self.wfile.write(JPEG)


async def timed(fetcher: MediaFetcher, refs: list[MediaRef], concurrent: bool) -> float:
    started = time.perf_counter()
    if concurrent:
        await fetcher.fetch_all(refs)
    else:
        for ref in refs:
            await fetcher.fetch_all([ref])
    return time.perf_counter() - started


async def main(base: str) -> None:
    refs = [MediaRef("image", f"{base}/{i}.jpg", f"documents[{i}]") for i in range(IMAGES)]
    async with MediaFetcher(MediaLimits(allowed_networks=("127.0.0.1/32",))) as fetcher:
        await timed(fetcher, refs, concurrent=True)  # warm-up
        times = {
            mode: [await timed(fetcher, refs, mode == "concurrent") for _ in range(REPEATS)]
            for mode in ("concurrent", "sequential")
        }
    concurrent, sequential = (statistics.median(times[mode]) for mode in ("concurrent", "sequential"))
    print(f"{IMAGES} images, {DELAY_S} s server delay each, median of {REPEATS}")
    print(f"concurrent: {concurrent:.3f} s   sequential: {sequential:.3f} s   ratio: {sequential / concurrent:.1f}x")


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", 0), DelayedImage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        asyncio.run(main(f"http://127.0.0.1:{server.server_address[1]}"))
    finally:
        server.shutdown()
