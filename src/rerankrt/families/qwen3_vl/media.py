"""Qwen3-VL pixels in numpy/Pillow: the official reranker's resize, normalisation and patch layout.

No torchvision and no transformers processor at serving time. What this module
reproduces, and from where:

- resize: qwen-vl-utils' `smart_resize` (sides rounded to multiples of
  patch_size * merge_size, area kept within [min_pixels, max_pixels]) with
  Pillow's bicubic filter, as the Qwen3-VL-Reranker script does before calling
  the processor with `do_resize=False`. Its pixel bounds are the reranker's own
  constants (`MediaConfig` defaults), not the preprocessor config's.
- normalisation: rescale by 1/255 and (x - mean) / std with the preprocessor
  config's mean and std (0.5 for Qwen3-VL).
- patches: transformers' Qwen2-VL image processor order, one row per patch
  [grid_t * grid_h * grid_w, C * T * P * P], rows grouped by merge window; an
  image is repeated to fill the temporal patch, a video with an odd number of
  frames repeats its last frame.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

MEDIA_CONFIG_FILE = "media_config.json"  # written into artifacts; optional in a model folder
PREPROCESSOR_FILE = "preprocessor_config.json"

# The Qwen3-VL-Reranker script's constants (image factor 32 = patch 16 x merge 2).
_FACTOR = 32
IMAGE_MIN_PIXELS = 4 * _FACTOR * _FACTOR  # 4 tokens
IMAGE_MAX_PIXELS = 1800 * _FACTOR * _FACTOR  # 1800 tokens
VIDEO_FRAME_MIN_PIXELS = 128 * _FACTOR * _FACTOR  # qwen-vl-utils' per-frame floor
VIDEO_FRAME_MAX_PIXELS = 768 * _FACTOR * _FACTOR
VIDEO_TOTAL_PIXELS = 10 * VIDEO_FRAME_MAX_PIXELS  # 7680 tokens over all frames
MAX_ASPECT_RATIO = 200


@dataclass(frozen=True)
class MediaConfig:
    """Geometry and pixel bounds of the preprocessing; the defaults are Qwen3-VL-Reranker's."""

    patch_size: int = 16
    merge_size: int = 2
    temporal_patch_size: int = 2
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_min_pixels: int = IMAGE_MIN_PIXELS
    image_max_pixels: int = IMAGE_MAX_PIXELS
    video_frame_min_pixels: int = VIDEO_FRAME_MIN_PIXELS
    video_frame_max_pixels: int = VIDEO_FRAME_MAX_PIXELS
    video_total_pixels: int = VIDEO_TOTAL_PIXELS
    extra: dict = field(default_factory=dict, compare=False)  # unknown keys, kept for round trips

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size

    @property
    def patch_dim(self) -> int:
        return 3 * self.temporal_patch_size * self.patch_size * self.patch_size

    @classmethod
    def load(cls, folder: Path) -> MediaConfig:
        """`media_config.json` if the folder has one, else the reranker defaults with the
        preprocessor config's geometry, mean and std."""
        folder = Path(folder)
        if (folder / MEDIA_CONFIG_FILE).is_file():
            return cls.from_dict(json.loads((folder / MEDIA_CONFIG_FILE).read_text()))
        values = {}
        if (folder / PREPROCESSOR_FILE).is_file():
            pre = json.loads((folder / PREPROCESSOR_FILE).read_text())
            for key in ("patch_size", "merge_size", "temporal_patch_size", "image_mean", "image_std"):
                if key in pre:
                    values[key] = pre[key]
        return cls.from_dict(values)

    @classmethod
    def from_dict(cls, values: dict) -> MediaConfig:
        known = {f.name for f in fields(cls)} - {"extra"}
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in known}
        return cls(**kwargs, extra={k: v for k, v in values.items() if k not in known})

    def save(self, folder: Path) -> str:
        data = {k: v for k, v in asdict(self).items() if k != "extra"}
        (Path(folder) / MEDIA_CONFIG_FILE).write_text(json.dumps(data, indent=2) + "\n")
        return MEDIA_CONFIG_FILE


@dataclass(frozen=True)
class VisualItem:
    """One preprocessed image or video: patch rows and the grid in patches (t, h, w)."""

    kind: str  # "image" | "video"
    pixel_values: np.ndarray  # float32 [t * h * w, 3 * T * P * P]
    grid_thw: tuple[int, int, int]
    timestamps: tuple[float, ...] = ()  # videos: seconds of each temporal patch (mean of its frames)


def _round_by(value: float, factor: int) -> int:
    return round(value / factor) * factor


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """qwen-vl-utils' resize target: sides divisible by `factor`, area within [min_pixels, max_pixels],
    aspect ratio kept as nearly as possible."""
    if min(height, width) < 1:
        raise ValueError(f"an image of {width}x{height} pixels has no area")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ValueError(f"aspect ratio of {width}x{height} is over {MAX_ASPECT_RATIO}:1")
    h_bar = max(factor, _round_by(height, factor))
    w_bar = max(factor, _round_by(width, factor))
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def to_rgb(image):
    """RGB Pillow image; transparency is composited on white (as qwen-vl-utils does)."""
    from PIL import Image

    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.split()[3])
        return background
    return image.convert("RGB")


def resize_rgb(image, height: int, width: int) -> np.ndarray:
    """uint8 [height, width, 3], resized with Pillow's bicubic filter (a no-op when the size already fits)."""
    from PIL import Image

    if image.size != (width, height):
        image = image.resize((width, height), resample=Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.uint8)


def normalize(frames: np.ndarray, config: MediaConfig) -> np.ndarray:
    """uint8 [T, H, W, 3] -> float32 [T, 3, H, W]: x / 255, then (x - mean) / std (as transformers rounds)."""
    scaled = (frames.astype(np.float64) * (1 / 255)).astype(np.float32)
    mean = np.asarray(config.image_mean, dtype=np.float32)
    std = np.asarray(config.image_std, dtype=np.float32)
    return ((scaled - mean) / std).transpose(0, 3, 1, 2)


def patchify(frames: np.ndarray, config: MediaConfig) -> tuple[np.ndarray, tuple[int, int, int]]:
    """float32 [T, 3, H, W] -> ([grid_t * grid_h * grid_w, 3 * T * P * P], grid), in transformers' row order."""
    tps, p, m = config.temporal_patch_size, config.patch_size, config.merge_size
    if frames.shape[0] % tps:
        repeat = np.repeat(frames[-1:], tps - frames.shape[0] % tps, axis=0)
        frames = np.concatenate([frames, repeat])
    t, c, h, w = frames.shape
    gt, gh, gw = t // tps, h // p, w // p
    patches = frames.reshape(gt, tps, c, gh // m, m, p, gw // m, m, p)
    patches = patches.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return np.ascontiguousarray(patches.reshape(gt * gh * gw, c * tps * p * p)), (gt, gh, gw)


def preprocess_image(image, config: MediaConfig) -> VisualItem:
    """A Pillow image -> its patches, resized within the image pixel bounds."""
    rgb = to_rgb(image)
    height, width = smart_resize(rgb.height, rgb.width, config.factor, config.image_min_pixels, config.image_max_pixels)
    frames = resize_rgb(rgb, height, width)[None]
    pixel_values, grid = patchify(normalize(frames, config), config)
    return VisualItem("image", pixel_values, grid)


def video_frame_size(frames: int, height: int, width: int, config: MediaConfig) -> tuple[int, int]:
    """qwen-vl-utils' per-frame size: within the frame bounds and a share of the total pixel budget."""
    min_pixels = config.video_frame_min_pixels
    budget = config.video_total_pixels / max(frames, 1) * config.temporal_patch_size
    max_pixels = max(min(config.video_frame_max_pixels, budget), int(min_pixels * 1.05))
    return smart_resize(height, width, config.factor, min_pixels, int(max_pixels))


def preprocess_video(frames: np.ndarray, fps: float, config: MediaConfig) -> VisualItem:
    """Already sampled frames (uint8 [T, H, W, 3]) at `fps` frames per second -> patches and timestamps.

    Each temporal patch's timestamp is the mean of its frames' times (frame i at i / fps), as
    transformers' Qwen3-VL processor writes them into the prompt.
    """
    from PIL import Image

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise ValueError(f"video frames must be uint8 [T, H, W, 3], got shape {frames.shape}")
    if not fps or fps <= 0:
        raise ValueError(f"video fps must be positive, got {fps}")
    count, height, width = frames.shape[:3]
    new_h, new_w = video_frame_size(count, height, width, config)
    resized = np.stack([resize_rgb(Image.fromarray(f.astype(np.uint8), "RGB"), new_h, new_w) for f in frames])
    pixel_values, grid = patchify(normalize(resized, config), config)
    tps = config.temporal_patch_size
    times = [i / fps for i in range(count)] + [(count - 1) / fps] * (-count % tps)
    stamps = tuple((times[i] + times[i + tps - 1]) / 2 for i in range(0, len(times), tps))
    return VisualItem("video", pixel_values, grid, stamps)
