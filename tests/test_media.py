"""Media fetching: http(s) from a real local server, data: URIs, local files, limits and the SSRF guard."""

from __future__ import annotations

import io
import ipaddress
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image, ImageFile

from rerankrt.errors import InputError
from rerankrt.runtime.reranker import RequestTooLarge
from rerankrt.server.media import GuardedBackend, MediaLimits, MediaRef, Video
from tests.support import (
    MEDIA_FIELD,
    data_uri,
    fetch,
    fetch_refused,
    image_bytes,
    image_ref,
    mp4_bytes,
    png,
    serve_media,
)

LOCAL = MediaLimits(allowed_networks=("127.0.0.1/32",))  # the test server; everything else is guarded as usual
SIZES = [(10, 20), (30, 15), (7, 7), (64, 33)]


def rotated_jpeg() -> bytes:
    """40x20 pixels stored, with EXIF orientation 6: upright it is 20x40."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return image_bytes(Image.new("RGB", (40, 20), (200, 10, 10)), "JPEG", exif=exif)


def mp4(seconds: int = 3, fps: int = 10) -> bytes:
    """32x32 frames; frame i is gray level i * step, so a sampled frame tells its time."""
    step = 240 // (seconds * fps)
    return mp4_bytes((np.full((32, 32, 3), i * step, np.uint8) for i in range(seconds * fps)), fps)


MEDIA_FILES = {  # served by the `media_base` fixture (conftest)
    **{f"{w}x{h}.png": png((w, h)) for w, h in SIZES},
    "rotated.jpg": rotated_jpeg(),
    "clip.mp4": mp4(),
    "bomb.png": png((5000, 5000), mode="L"),
    "notes.txt": b"not an image",
}


def test_concurrent_fetch_keeps_input_order(media_base):
    names = [f"{w}x{h}.png" for w, h in SIZES] * 2
    results = fetch(
        LOCAL, *(image_ref(f"{media_base}/{name}?delay=0.05", f"documents[{i}]") for i, name in enumerate(names))
    )
    assert [r.size for r in results] == SIZES * 2
    assert all(isinstance(r, Image.Image) and r.mode == "RGB" for r in results)


def test_image_is_upright_rgb_and_octet_stream_is_sniffed(media_base):
    upright, sniffed = fetch(
        LOCAL, image_ref(f"{media_base}/rotated.jpg"), image_ref(f"{media_base}/7x7.png?type=application/octet-stream")
    )
    assert upright.size == (20, 40) and upright.mode == "RGB"
    assert sniffed.size == (7, 7)


def test_video_frames_are_sampled_at_fps_then_spread_evenly(media_base):
    (video,) = fetch(LOCAL, MediaRef("video", f"{media_base}/clip.mp4", MEDIA_FIELD))
    assert isinstance(video, Video) and video.frames.shape == (3, 32, 32, 3) and video.frames.dtype == np.uint8
    assert video.fps == pytest.approx(1.0)
    np.testing.assert_allclose(video.frames[:, 16, 16, 0], [0, 80, 160], atol=12)  # frames 0, 10, 20

    (spread,) = fetch(
        MediaLimits(max_video_frames=2), MediaRef("video", data_uri(MEDIA_FILES["clip.mp4"], "video/mp4"), MEDIA_FIELD)
    )
    assert spread.frames.shape == (2, 32, 32, 3) and spread.fps == pytest.approx(2 / 3)
    np.testing.assert_allclose(spread.frames[:, 16, 16, 0], [0, 160], atol=12)  # the first and the last of 0, 1, 2 s


def test_long_video_is_sampled_by_seeking():
    """20 s at 2 fps, 3 frames at most: the frames at 0, 10 and 19 s (frames 0, 20, 38, gray level 6 per frame)."""
    clip = data_uri(mp4(seconds=20, fps=2), "video/mp4")
    (video,) = fetch(MediaLimits(max_video_frames=3), MediaRef("video", clip, MEDIA_FIELD))
    assert video.frames.shape == (3, 32, 32, 3) and video.fps == pytest.approx(3 / 20)
    np.testing.assert_allclose(video.frames[:, 16, 16, 0], [0, 120, 228], atol=12)


def test_data_uris():
    (img,) = fetch(MediaLimits(), image_ref(data_uri(MEDIA_FILES["30x15.png"], "image/png")))
    assert img.size == (30, 15)
    fetch_refused(MediaLimits(), image_ref("data:image/png;base64,not base64!"), "not valid base64")
    fetch_refused(MediaLimits(), image_ref("data:image/png,rawbytes"), "must be base64")
    fetch_refused(
        MediaLimits(), image_ref(data_uri(MEDIA_FILES["30x15.png"], "text/plain")), "content type 'text/plain'"
    )
    ppm = io.BytesIO()
    Image.new("RGB", (4, 4)).save(ppm, format="PPM")  # a format Pillow reads but the fetcher does not accept
    fetch_refused(
        MediaLimits(), image_ref(data_uri(ppm.getvalue(), "image/x-portable-pixmap")), "not a decodable image"
    )
    playlist = b"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\nhttp://127.0.0.1/a.ts\n#EXT-X-ENDLIST\n"
    fetch_refused(
        MediaLimits(), MediaRef("video", data_uri(playlist, "video/mp2t"), MEDIA_FIELD), "not a decodable video"
    )
    fetch_refused(
        MediaLimits(max_bytes=100),
        image_ref(data_uri(MEDIA_FILES["64x33.png"], "image/png")),
        "100 bytes",
        RequestTooLarge,
    )


def test_local_files_only_inside_the_allowed_directory(tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    (media / "in.png").write_bytes(MEDIA_FILES["10x20.png"])
    (tmp_path / "secret.png").write_bytes(MEDIA_FILES["7x7.png"])
    (media / "escape.png").symlink_to(tmp_path / "secret.png")
    allowed = MediaLimits(allowed_local_media_path=str(media))

    inside = fetch(allowed, image_ref(str(media / "in.png")), image_ref((media / "in.png").as_uri()))
    assert [i.size for i in inside] == [(10, 20), (10, 20)]
    for url in (str(tmp_path / "secret.png"), f"{media}/../secret.png"):
        fetch_refused(allowed, image_ref(url), "outside the directory allowed")
    for url in (str(media / "escape.png"), (media / "escape.png").as_uri()):
        fetch_refused(allowed, image_ref(url), "the file is a symbolic link; links are not followed")
    fetch_refused(allowed, image_ref(str(media / "missing.png")), "cannot read the file")
    fetch_refused(allowed, image_ref("in.png"), "absolute file path")  # relative
    fetch_refused(MediaLimits(), image_ref(str(media / "in.png")), "local files are not enabled")
    fetch_refused(MediaLimits(), image_ref((media / "in.png").as_uri()), "local files are not enabled")


def test_unsupported_schemes_are_refused():
    fetch_refused(MediaLimits(), image_ref("ftp://example.com/a.png"), "must be an http")
    fetch_refused(MediaLimits(), image_ref("gopher://127.0.0.1/"), "must be an http")
    fetch_refused(MediaLimits(), image_ref("http://[bad"), "not a valid URL")


def test_http_refusals_name_the_field(media_base):
    fetch_refused(LOCAL, image_ref(f"{media_base}/10x20.png?type=text/html"), "content type 'text/html'")
    fetch_refused(
        LOCAL,
        MediaRef("video", f"{media_base}/10x20.png", MEDIA_FIELD),
        "expected video/\\* content, got content type 'image/png'",
    )
    fetch_refused(LOCAL, image_ref(f"{media_base}/notes.txt?type=image/png"), "not a decodable image")
    fetch_refused(
        LOCAL, MediaRef("video", f"{media_base}/notes.txt?type=video/mp4", MEDIA_FIELD), "not a decodable video"
    )
    fetch_refused(LOCAL, image_ref(f"{media_base}/missing.png"), "HTTP 404")
    fetch_refused(
        MediaLimits(allowed_networks=LOCAL.allowed_networks, fetch_timeout=0.3),
        image_ref(f"{media_base}/7x7.png?delay=1.5"),
        r"no complete HTTP response \(refused, reset or over 0.3 s\)",
    )


def test_byte_limit_from_content_length_and_while_streaming(media_base):
    fetch_refused(LOCAL, image_ref(f"{media_base}/huge-length"), "over the limit of", RequestTooLarge)
    # No Content-Length and 64 MiB on offer: reading stops at the limit (reading it all would time out instead).
    limits = MediaLimits(allowed_networks=LOCAL.allowed_networks, max_bytes=1_000_000, fetch_timeout=30)
    fetch_refused(limits, image_ref(f"{media_base}/endless"), "over the limit of 1000000 bytes", RequestTooLarge)


def test_decompression_bomb_is_refused_before_decoding(media_base, monkeypatch):
    def no_decoding(self):
        raise AssertionError("the image was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    limits = MediaLimits(allowed_networks=LOCAL.allowed_networks, max_image_pixels=1_000_000)
    fetch_refused(limits, image_ref(f"{media_base}/bomb.png"), "5000x5000 is over the limit", RequestTooLarge)
    fetch_refused(limits, image_ref(data_uri(MEDIA_FILES["bomb.png"], "image/png")), "5000x5000", RequestTooLarge)


def test_redirects_are_followed_up_to_the_limit(media_base):
    limits = MediaLimits(allowed_networks=LOCAL.allowed_networks, max_redirects=2)
    assert fetch(limits, image_ref(f"{media_base}/hops/2?to=/10x20.png"))[0].size == (10, 20)
    fetch_refused(limits, image_ref(f"{media_base}/hops/3?to=/10x20.png"), "more than 2 redirects")


def test_private_addresses_are_refused_by_default(media_base):
    port = urlsplit(media_base).port
    fetch_refused(
        MediaLimits(), image_ref(f"{media_base}/7x7.png"), "127.0.0.1 does not resolve to an address this server"
    )
    fetch_refused(
        MediaLimits(), image_ref(f"http://localhost:{port}/7x7.png"), "localhost does not resolve to an address"
    )


def test_a_redirect_into_a_disallowed_network_is_refused(media_base):
    """127.0.0.1 is allowed, 127.0.0.2 (a second server, that answers when allowed) is not."""
    with serve_media(MEDIA_FILES, "127.0.0.2") as other:
        hop = f"{media_base}/redirect?to={other}/7x7.png"
        fetch_refused(LOCAL, image_ref(hop), "127.0.0.2 does not resolve to an address this server may fetch from")
        both = MediaLimits(allowed_networks=("127.0.0.1/32", "127.0.0.2/32"))
        assert fetch(both, image_ref(hop))[0].size == (7, 7)


@pytest.mark.parametrize(
    "address, allowed",
    [
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # cloud metadata, link-local
        ("100.64.0.1", False),  # shared address space
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("240.0.0.1", False),
        ("::1", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("ff02::1", False),
        ("::ffff:127.0.0.1", False),
    ],
)
def test_guard_allows_only_public_addresses(address, allowed):
    assert GuardedBackend([]).allows(ipaddress.ip_address(address)) is allowed
    assert GuardedBackend([ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")]).allows(
        ipaddress.ip_address(address)
    )


def test_the_first_failure_cancels_the_rest(media_base):
    refs = [image_ref(f"{media_base}/7x7.png?delay=2", "documents[0]"), image_ref("ftp://x/a.png", "documents[1]")]
    with pytest.raises(InputError) as info:
        fetch(LOCAL, *refs)
    assert info.value.field == "documents[1]"
