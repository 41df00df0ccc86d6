"""Fetch and decode the images and videos a request names by URL: http(s), data: URIs, and allowed local files.

Every refusal names the request field it came from: a size limit (bytes, pixels) raises `RequestTooLarge` (HTTP 413),
anything else `InputError` (HTTP 400), including a timeout and an address the SSRF guard refuses.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import ipaddress
import math
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

import av
import httpcore
import httpx
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from rerankrt.errors import InputError
from rerankrt.runtime.engine import RequestTooLarge

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# Pillow plugins read (JPEG covers MPO); not EPS, which runs Ghostscript
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
VIDEO_FORMATS = "mov,mp4,matroska,webm,avi"  # ffmpeg demuxers; none that opens other URLs (HLS, concat)
SEEK_GAP_S = 2.0  # seek rather than decode through when the next sampled frame is this far ahead


@dataclass(frozen=True)
class MediaLimits:
    """What a request may make the server fetch and decode."""

    allowed_local_media_path: str | None = None  # a directory; None refuses local files
    allowed_networks: tuple[str, ...] = ()  # non-public networks that may be fetched from, e.g. ("10.0.0.0/8",)
    max_bytes: int = 32 * 1024 * 1024  # per item, as fetched (encoded)
    max_image_pixels: int = 50_000_000  # width * height per image or video frame; below Pillow's own bomb limit
    max_video_frames: int = 64
    video_fps: float = 1.0  # frames sampled per second of video
    fetch_timeout: float = 10.0  # seconds per http(s) item, connecting to the last byte
    max_redirects: int = 3


@dataclass(frozen=True)
class MediaRef:
    """One image or video URL of a request, and the request field that holds it (for error messages)."""

    kind: Literal["image", "video"]
    url: str
    field: str


@dataclass(frozen=True)
class Video:
    """Sampled frames, RGB uint8 [T, H, W, 3], and the rate they were sampled at (frames per second of video)."""

    frames: np.ndarray
    fps: float


class AddressRefused(Exception):
    """A host resolved to an address the SSRF guard does not allow."""


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves each host itself, checks every address, then connects to a checked address.

    httpcore calls `connect_tcp` for every new connection, redirect hops included, and passes the hostname separately
    to `start_tls`, so TLS still verifies the certificate against the hostname.
    """

    def __init__(self, allowed_networks: Sequence[IPNetwork]):
        self._allowed = tuple(allowed_networks)
        self._backend = httpcore.AnyIOBackend()

    def allows(self, address: IPAddress) -> bool:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        # is_global is False for private, loopback, link-local, reserved, unspecified and shared (100.64/10) ones.
        public = address.is_global and not address.is_multicast
        return public or any(address in network for network in self._allowed)

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc.strerror}") from exc
        addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))
        for address in addresses:
            if not self.allows(address):
                raise AddressRefused(f"{host} resolves to {address}, which is not a public address")
        error: httpcore.ConnectError | None = None
        for address in addresses:
            try:
                return await self._backend.connect_tcp(str(address), port, timeout, local_address, socket_options)
            except httpcore.ConnectError as exc:
                error = exc
        raise error or httpcore.ConnectError(f"{host} has no address")

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


class MediaFetcher:
    """Fetches and decodes the media of requests, concurrently, within `MediaLimits`; one HTTP client for all."""

    def __init__(self, limits: MediaLimits, on_fetched: Callable[[str, int], None] | None = None):
        self.limits = limits
        self.on_fetched = on_fetched  # (kind, bytes) of each item read, e.g. for metrics
        self._local_root = Path(limits.allowed_local_media_path).resolve() if limits.allowed_local_media_path else None
        backend = GuardedBackend([ipaddress.ip_network(n) for n in limits.allowed_networks])
        transport = httpx.AsyncHTTPTransport()
        # httpx takes no network backend: give its transport a pool that has one (httpx's default limits).
        transport._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=100,
            max_keepalive_connections=20,
            keepalive_expiry=5.0,
            network_backend=backend,
        )
        self._client = httpx.AsyncClient(
            transport=transport,  # an explicit transport also means no proxy from the environment
            trust_env=False,
            follow_redirects=True,
            max_redirects=limits.max_redirects,
            timeout=limits.fetch_timeout,
            headers={"Accept-Encoding": "identity"},  # media is compressed already; no gzip bombs either
        )

    async def __aenter__(self) -> MediaFetcher:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def fetch_all(self, items: Sequence[MediaRef]) -> list[Image.Image | Video]:
        """Fetches and decodes every item concurrently, in input order; the first failure cancels the rest."""
        tasks = [asyncio.create_task(self.fetch(item)) for item in items]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def fetch(self, item: MediaRef) -> Image.Image | Video:
        data = await self._read(item)
        if self.on_fetched is not None:
            self.on_fetched(item.kind, len(data))
        decode = decode_image if item.kind == "image" else decode_video
        return await asyncio.to_thread(decode, data, self.limits, item.field)

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
        try:
            return await asyncio.wait_for(self._stream(item), timeout)
        except (asyncio.TimeoutError, httpx.TimeoutException):
            raise InputError(item.field, f"fetching the {item.kind} timed out after {timeout:g} s") from None
        except AddressRefused as exc:
            raise InputError(item.field, f"refused to fetch: {exc}") from None
        except httpx.TooManyRedirects:
            raise InputError(item.field, f"more than {self.limits.max_redirects} redirects") from None
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise InputError(item.field, f"fetching the {item.kind} failed: {exc}") from None

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
        resolved = Path(path).resolve()
        if not resolved.is_relative_to(self._local_root):
            raise InputError(item.field, "the path is outside the directory allowed for local media")
        try:
            with resolved.open("rb") as file:
                data = file.read(self.limits.max_bytes + 1)
        except OSError as exc:
            raise InputError(item.field, f"cannot read the file ({exc.strerror})") from None
        self._check_size(item, len(data))
        return data

    def _check_size(self, item: MediaRef, size: int) -> None:
        if size > self.limits.max_bytes:
            raise RequestTooLarge(item.field, f"the {item.kind} is over the limit of {self.limits.max_bytes} bytes")


def check_content_type(item: MediaRef, content_type: str | None) -> None:
    """Refuses a declared type other than `<kind>/*`; an absent or octet-stream type is left to the decoder."""
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type and media_type != "application/octet-stream" and not media_type.startswith(f"{item.kind}/"):
        raise InputError(item.field, f"expected {item.kind}/* content, got content type {media_type!r}")


def check_pixels(field: str, width: int, height: int, limits: MediaLimits) -> None:
    if width * height > limits.max_image_pixels:
        raise RequestTooLarge(field, f"{width}x{height} is over the limit of {limits.max_image_pixels} pixels")


def decode_image(data: bytes, limits: MediaLimits, field: str) -> Image.Image:
    """Decodes to RGB, upright per its EXIF orientation; the size is checked from the header before decoding."""
    try:
        image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
        check_pixels(field, *image.size, limits)
        return ImageOps.exif_transpose(image).convert("RGB")
    except Image.DecompressionBombError:
        raise RequestTooLarge(field, "the image is over Pillow's decompression bomb limit") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise InputError(field, "not a decodable image") from None


def sample_times(duration: float | None, limits: MediaLimits) -> list[float]:
    """Times (s) to take frames at: every 1/video_fps s, spread evenly over the video when more than the limit."""
    if duration is None:  # length unknown: the first frames at video_fps
        return [i / limits.video_fps for i in range(limits.max_video_frames)]
    count = max(1, math.ceil(duration * limits.video_fps - 1e-6))
    indices = np.linspace(0, count - 1, min(count, limits.max_video_frames)).round()
    return [float(i) / limits.video_fps for i in indices]


def decode_video(data: bytes, limits: MediaLimits, field: str) -> Video:
    """Decodes only the frames it samples, seeking ahead rather than decoding a long video through."""
    try:
        options = {"format_whitelist": VIDEO_FORMATS, "protocol_whitelist": "none"}
        with av.open(io.BytesIO(data), container_options=options) as container:
            if not container.streams.video:
                raise InputError(field, "the video has no video stream")
            stream = container.streams.video[0]
            check_pixels(field, stream.codec_context.width, stream.codec_context.height, limits)
            duration = float(stream.duration * stream.time_base) if stream.duration else None
            if duration is None and container.duration:
                duration = container.duration / av.time_base
            start = float(stream.start_time * stream.time_base) if stream.start_time else 0.0
            frames: list[np.ndarray] = []
            decoded, position = container.decode(stream), start
            for time in (start + t for t in sample_times(duration, limits)):
                if time - position > SEEK_GAP_S:
                    container.seek(int(time / stream.time_base), stream=stream)
                    decoded = container.decode(stream)
                frame = next((f for f in decoded if f.time is not None and f.time >= time - 1e-3), None)
                if frame is None:  # the stream ended early
                    break
                position = frame.time
                check_pixels(field, frame.width, frame.height, limits)
                size = frames[0].shape[1::-1] if frames else (frame.width, frame.height)
                frames.append(frame.to_ndarray(format="rgb24", width=size[0], height=size[1]))
    except av.FFmpegError:
        raise InputError(field, "not a decodable video") from None
    if not frames:
        raise InputError(field, "the video has no decodable frames")
    fps = len(frames) / duration if duration else limits.video_fps
    return Video(frames=np.stack(frames), fps=fps)
