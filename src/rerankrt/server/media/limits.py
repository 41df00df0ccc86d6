"""The limits on what a request may make the server fetch and decode (`--media-*` settings)."""

from __future__ import annotations

from dataclasses import dataclass


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
    max_frame_pixels: int = 1024 * 1024  # video frames larger are scaled down while decoding (aspect kept)
    max_parts: int = 64  # image and video parts per request
    max_request_pixels: int = 128_000_000  # decoded pixels per request: images, and video frames after downscaling
    max_process_pixels: int = 512_000_000  # decoded pixels held by all requests together
    max_concurrent_fetches: int = 8  # items of one request fetched and decoded at once
