"""Decoded pixels, the memory media cost: budgeted per request and per process before anything is decoded.

An image costs width x height pixels (3 bytes each as RGB), a video its sampled frames times their size after
downscaling; each is reserved from the request's budget and the process's before it is decoded, from the sizes in
its header. A request over its own budget can never be served (413); one that does not fit the process's budget
now gets 503 with Retry-After. A request's pixels are held until it is answered, since its decoded media are.
"""

from __future__ import annotations

import threading

from rerankrt.errors import RerankrtError
from rerankrt.runtime.reranker import RequestTooLarge


class MediaBusy(RerankrtError):
    """The process holds as many decoded pixels as it may; retry later (HTTP 503)."""


class PixelPool:
    """The process's budget of decoded pixels, shared by every request (thread-safe)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def take(self, pixels: int) -> bool:
        with self._lock:
            if self.used + pixels > self.limit:
                return False
            self.used += pixels
            return True

    def give(self, pixels: int) -> None:
        with self._lock:
            self.used -= pixels


class PixelBudget:
    """One request's decoded pixels: reserved item by item, released together when the request is done."""

    def __init__(self, pool: PixelPool, limit: int):
        self.pool = pool
        self.limit = limit
        self.pixels = 0
        self._lock = threading.Lock()

    def reserve(self, field: str, pixels: int) -> None:
        """Before decoding the item of `field`: RequestTooLarge past the request's limit, MediaBusy past the pool."""
        with self._lock:
            if self.pixels + pixels > self.limit:
                raise RequestTooLarge(
                    field,
                    f"decoding it would bring the request's media to {self.pixels + pixels} pixels, over the limit "
                    f"of {self.limit} per request (images, and video frames after downscaling)",
                )
            if not self.pool.take(pixels):
                raise MediaBusy(f"{field}: the server is decoding as much media as it may; retry later")
            self.pixels += pixels

    def release(self) -> None:
        with self._lock:
            self.pool.give(self.pixels)
            self.pixels = 0

    def __enter__(self) -> PixelBudget:
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()
