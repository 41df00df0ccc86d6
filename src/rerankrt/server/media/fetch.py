"""Fetch the images and videos a request names by URL: http(s), data: URIs, and allowed local files; then decode them.

Every refusal names the request field it came from: a size limit (bytes, pixels) raises `RequestTooLarge` (HTTP 413),
anything else `InputError` (HTTP 400), including a timeout and an address the SSRF guard refuses.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import errno
import logging
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

import httpx
from PIL import Image

from rerankrt.errors import InputError
from rerankrt.runtime.reranker import RequestTooLarge
from rerankrt.server.media.budget import PixelBudget, PixelPool
from rerankrt.server.media.decode import Video, decode_image, decode_video
from rerankrt.server.media.limits import MediaLimits
from rerankrt.server.media.transport import AddressRefused, guarded_client

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MediaRef:
    """One image or video URL of a request, and the request field that holds it (for error messages)."""

    kind: Literal["image", "video"]
    url: str
    field: str


class MediaFetcher:
    """Fetches and decodes the media of requests, concurrently, within `MediaLimits`; one HTTP client for all."""

    def __init__(self, limits: MediaLimits, on_fetched: Callable[[str, int], None] | None = None):
        self.limits = limits
        self.on_fetched = on_fetched  # (kind, bytes) of each item read, e.g. for metrics
        root = limits.allowed_local_media_path
        self._local_root = Path(root).resolve() if root else None
        # requests may name files by the directory as configured or as resolved (its own links are the operator's)
        self._local_roots = (
            [[p for p in str(r).split("/") if p] for r in {os.path.abspath(root), str(self._local_root)}]
            if root
            else []
        )
        self._client = guarded_client(limits.allowed_networks, limits.max_redirects, limits.fetch_timeout)
        self.pixels = PixelPool(limits.max_process_pixels)

    def budget(self) -> PixelBudget:
        """A request's pixel budget: pass it to `fetch_all`, release it (`with`) once the request is answered."""
        return PixelBudget(self.pixels, self.limits.max_request_pixels)

    async def __aenter__(self) -> MediaFetcher:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def fetch_all(
        self, items: Sequence[MediaRef], budget: PixelBudget | None = None
    ) -> list[Image.Image | Video]:
        """Fetches and decodes every item, `max_concurrent_fetches` at a time (so one request cannot take the
        connection pool), in input order; the first failure cancels the rest. Decoded pixels are reserved from
        `budget` (held by the caller until it is done with the media), or from one released on return."""
        if len(items) > self.limits.max_parts:
            raise RequestTooLarge(
                items[self.limits.max_parts].field,
                f"more than {self.limits.max_parts} image and video URLs in one request",
            )
        if budget is None:
            with self.budget() as own:
                return await self.fetch_all(items, own)
        slots = asyncio.Semaphore(self.limits.max_concurrent_fetches)

        async def one(item: MediaRef) -> Image.Image | Video:
            async with slots:
                return await self.fetch(item, budget)

        tasks = [asyncio.create_task(one(item)) for item in items]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def fetch(self, item: MediaRef, budget: PixelBudget | None = None) -> Image.Image | Video:
        if budget is None:
            with self.budget() as own:
                return await self.fetch(item, own)
        data = await self._read(item)
        if self.on_fetched is not None:
            self.on_fetched(item.kind, len(data))
        decode = decode_image if item.kind == "image" else decode_video
        return await asyncio.to_thread(decode, data, self.limits, item.field, budget.reserve)

    async def _read(self, item: MediaRef) -> bytes:
        try:
            scheme = urlsplit(item.url).scheme.lower()
        except ValueError:
            raise InputError(item.field, "not a valid URL") from None
        if scheme in ("http", "https"):
            return await self._download(item)
        if scheme == "data":
            return self._read_data_uri(item)
        if scheme == "file" or (not scheme and item.url.startswith("/")):
            return await asyncio.to_thread(self._read_local, item)
        raise InputError(item.field, "must be an http(s) URL, a data: URI or an absolute file path")

    async def _download(self, item: MediaRef) -> bytes:
        timeout = self.limits.fetch_timeout
        # One answer for a refused, reset, unreadable or slow connection (details only in the debug log), so
        # requests cannot tell a closed port from a filtered one or a non-HTTP service.
        failed = f"could not fetch the {item.kind}: no complete HTTP response (refused, reset or over {timeout:g} s)"
        try:
            return await asyncio.wait_for(self._stream(item), timeout)
        except AddressRefused as exc:
            raise InputError(item.field, f"refused to fetch: {exc}") from None
        except httpx.TooManyRedirects:
            raise InputError(item.field, f"more than {self.limits.max_redirects} redirects") from None
        except httpx.InvalidURL:
            raise InputError(item.field, "not a valid URL") from None
        except (asyncio.TimeoutError, httpx.HTTPError, OSError) as exc:
            log.debug("fetching %s for %s failed: %r", item.kind, item.field, exc)
            raise InputError(item.field, failed) from None

    async def _stream(self, item: MediaRef) -> bytes:
        async with self._client.stream("GET", item.url) as response:
            if response.status_code != 200:
                raise InputError(item.field, f"fetching the {item.kind} failed: HTTP {response.status_code}")
            check_content_type(item, response.headers.get("content-type"))
            length = response.headers.get("content-length")
            if length and length.isdigit():
                self._check_size(item, int(length))
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                self._check_size(item, len(body))
            return bytes(body)

    def _read_data_uri(self, item: MediaRef) -> bytes:
        header, comma, payload = item.url[len("data:") :].partition(",")
        media_type, _, encoding = header.rpartition(";")
        if not comma or encoding.lower() != "base64":
            raise InputError(item.field, "a data: URI must be base64 (data:<type>;base64,<data>)")
        check_content_type(item, media_type)
        self._check_size(item, len(payload) * 3 // 4)
        try:
            return base64.b64decode(payload, validate=True)
        except binascii.Error:
            raise InputError(item.field, "the data: URI is not valid base64") from None

    def _read_local(self, item: MediaRef) -> bytes:
        if self._local_root is None:
            raise InputError(item.field, "local files are not enabled on this server; send an http(s) or data: URL")
        path = unquote(urlsplit(item.url).path) if item.url.lower().startswith("file:") else item.url
        parts = self._beneath_root(item, path)
        try:
            data = read_beneath(self._local_root, parts, self.limits.max_bytes + 1)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EMLINK):
                raise InputError(item.field, "the file is a symbolic link; links are not followed") from None
            if exc.errno == errno.ENOTDIR:
                raise InputError(
                    item.field, "a directory on the path is a link or a file; links are not followed"
                ) from None
            raise InputError(item.field, f"cannot read the file ({exc.strerror or exc})") from None
        except ValueError:  # a NUL in the path
            raise InputError(item.field, "not a valid file path") from None
        self._check_size(item, len(data))
        return data

    def _beneath_root(self, item: MediaRef, path: str) -> list[str]:
        """The path's components below the allowed directory (as configured or as resolved at start); no `..`."""
        parts = [p for p in path.split("/") if p not in ("", ".")]
        if ".." in parts or not path.startswith("/"):
            raise InputError(item.field, "the path is outside the directory allowed for local media")
        for root in self._local_roots:
            if parts[: len(root)] == root:
                return parts[len(root) :]
        raise InputError(item.field, "the path is outside the directory allowed for local media")

    def _check_size(self, item: MediaRef, size: int) -> None:
        if size > self.limits.max_bytes:
            raise RequestTooLarge(item.field, f"the {item.kind} is over the limit of {self.limits.max_bytes} bytes")


def read_beneath(root: Path, parts: Sequence[str], limit: int) -> bytes:
    """At most `limit` bytes of the regular file root/parts[0]/.../parts[-1], opened one component at a time
    relative to the one before and never through a symbolic link (O_NOFOLLOW), so no link, swapped in at any
    moment, can lead outside `root`. A FIFO or device is refused without blocking; OSError for any failure."""
    if not parts:
        raise IsADirectoryError(errno.EISDIR, "is a directory")
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW
    fd = os.open(root, os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECTORY)
    try:
        for name in parts[:-1]:
            next_fd = os.open(name, flags | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = next_fd
        file_fd = os.open(parts[-1], flags | os.O_NONBLOCK, dir_fd=fd)
    finally:
        os.close(fd)
    with os.fdopen(file_fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        return file.read(limit)


def check_content_type(item: MediaRef, content_type: str | None) -> None:
    """Refuses a declared type other than `<kind>/*`; an absent or octet-stream type is left to the decoder."""
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type and media_type != "application/octet-stream" and not media_type.startswith(f"{item.kind}/"):
        raise InputError(item.field, f"expected {item.kind}/* content, got content type {media_type!r}")
