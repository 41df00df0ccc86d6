"""The media of multimodal requests: fetched (`fetch`) through an SSRF-guarded client (`transport`), then decoded
(`decode`), each refusal naming the request field it came from.
"""

from rerankrt.server.media.budget import MediaBusy, PixelBudget
from rerankrt.server.media.decode import Video, decode_image, decode_video
from rerankrt.server.media.fetch import MediaFetcher, MediaRef
from rerankrt.server.media.limits import MediaLimits
from rerankrt.server.media.transport import AddressRefused, GuardedBackend

__all__ = [
    "AddressRefused",
    "GuardedBackend",
    "MediaBusy",
    "MediaFetcher",
    "MediaLimits",
    "MediaRef",
    "PixelBudget",
    "Video",
    "decode_image",
    "decode_video",
]
