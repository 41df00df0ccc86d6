"""Decode fetched bytes: an image to upright RGB, a video to frames sampled at a fixed rate; sizes checked first.

A size limit (pixels) raises `RequestTooLarge` (HTTP 413), anything undecodable `InputError` (HTTP 400), both naming
the request field the item came from.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import av
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from rerankrt.errors import InputError
from rerankrt.runtime.engine import RequestTooLarge

if TYPE_CHECKING:
    from rerankrt.server.media.fetch import MediaLimits

# Pillow plugins read (JPEG covers MPO); not EPS, which runs Ghostscript
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
VIDEO_FORMATS = "mov,mp4,matroska,webm,avi"  # ffmpeg demuxers; none that opens other URLs (HLS, concat)
SEEK_GAP_S = 2.0  # seek rather than decode through when the next sampled frame is this far ahead


@dataclass(frozen=True)
class Video:
    """Sampled frames, RGB uint8 [T, H, W, 3], and the rate they were sampled at (frames per second of video)."""

    frames: np.ndarray
    fps: float


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
