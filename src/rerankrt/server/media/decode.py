"""Decode fetched bytes: an image to upright RGB, a video to frames sampled at a fixed rate; sizes checked first.

A size limit (pixels) raises `RequestTooLarge` (HTTP 413), anything undecodable `InputError` (HTTP 400), both naming
the request field the item came from. Before decoding, the pixels the result will hold are reserved through
`reserve(field, pixels)` (the request's and the process's budgets, `media.budget`). Video frames larger than
`max_frame_pixels` are scaled down by the decoder itself (aspect kept) and written into one preallocated array:
no full-resolution RGB frame and no second copy of the clip.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import av
import numpy as np
from PIL import Image, ImageOps

from rerankrt.errors import InputError, RerankrtError
from rerankrt.runtime.reranker import RequestTooLarge
from rerankrt.server.media.limits import MediaLimits

# Pillow plugins read (JPEG covers MPO); not EPS, which runs Ghostscript
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
VIDEO_FORMATS = "mov,mp4,matroska,webm,avi"  # ffmpeg demuxers; none that opens other URLs (HLS, concat)
log = logging.getLogger(__name__)
SEEK_GAP_S = 2.0  # seek rather than decode through when the next sampled frame is this far ahead

Reserve = Callable[[str, int], None]  # (field, pixels) before decoding; raises when over a budget


def _no_budget(field: str, pixels: int) -> None:
    pass


@dataclass(frozen=True)
class Video:
    """Sampled frames, RGB uint8 [T, H, W, 3], and the rate they were sampled at (frames per second of video)."""

    frames: np.ndarray
    fps: float


def check_pixels(field: str, width: int, height: int, limits: MediaLimits) -> None:
    if width * height > limits.max_image_pixels:
        raise RequestTooLarge(field, f"{width}x{height} is over the limit of {limits.max_image_pixels} pixels")


def decode_image(data: bytes, limits: MediaLimits, field: str, reserve: Reserve = _no_budget) -> Image.Image:
    """Decodes to RGB, upright per its EXIF orientation; the size is checked and reserved from the header first."""
    try:
        image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
        check_pixels(field, *image.size, limits)
        reserve(field, image.size[0] * image.size[1])
        return ImageOps.exif_transpose(image).convert("RGB")
    except Image.DecompressionBombError:
        raise RequestTooLarge(field, "the image is over Pillow's decompression bomb limit") from None
    except RerankrtError:  # our own refusals: a size limit, a budget
        raise
    except Exception as exc:  # noqa: BLE001 - a decoder fed hostile bytes may fail any way; it is the client's file
        log.debug("image for %s not decodable: %r", field, exc)
        raise InputError(field, "not a decodable image") from None


def sample_times(duration: float | None, limits: MediaLimits) -> list[float]:
    """Times (s) to take frames at: every 1/video_fps s, spread evenly over the video when more than the limit."""
    if duration is None:  # length unknown: the first frames at video_fps
        return [i / limits.video_fps for i in range(limits.max_video_frames)]
    count = max(1, math.ceil(duration * limits.video_fps - 1e-6))
    indices = np.linspace(0, count - 1, min(count, limits.max_video_frames)).round()
    return [float(i) / limits.video_fps for i in indices]


def frame_size(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """(width, height) scaled down to at most `max_pixels` pixels, aspect kept, even sides; unchanged if within."""
    if width * height <= max_pixels:
        return width, height
    scale = math.sqrt(max_pixels / (width * height))
    return max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2)


def decode_video(data: bytes, limits: MediaLimits, field: str, reserve: Reserve = _no_budget) -> Video:
    """Decodes only the frames it samples, seeking ahead rather than decoding a long video through; frames are
    scaled down to `max_frame_pixels` as they are converted, into one array reserved before the first frame."""
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
            times = sample_times(duration, limits)
            width, height = frame_size(stream.codec_context.width, stream.codec_context.height, limits.max_frame_pixels)
            if width < 1 or height < 1:
                raise InputError(field, "the video has no frame size")
            reserve(field, len(times) * width * height)
            frames = np.empty((len(times), height, width, 3), dtype=np.uint8)
            count, decoded, position = 0, container.decode(stream), start
            for time in (start + t for t in times):
                if time - position > SEEK_GAP_S:
                    container.seek(int(time / stream.time_base), stream=stream)
                    decoded = container.decode(stream)
                frame = next((f for f in decoded if f.time is not None and f.time >= time - 1e-3), None)
                if frame is None:  # the stream ended early
                    break
                position = frame.time
                check_pixels(field, frame.width, frame.height, limits)
                frames[count] = frame.to_ndarray(format="rgb24", width=width, height=height)
                count += 1
    except RerankrtError:  # our own refusals: a size limit, a budget, no video stream
        raise
    except Exception as exc:  # noqa: BLE001 - PyAV fed hostile bytes fails in many ways (FFmpegError, but also
        # UnicodeDecodeError on metadata, a stream without a codec context, ...); it is the client's file
        log.debug("video for %s not decodable: %r", field, exc)
        raise InputError(field, "not a decodable video") from None
    if not count:
        raise InputError(field, "the video has no decodable frames")
    fps = count / duration if duration else limits.video_fps
    return Video(frames=frames[:count], fps=fps)
