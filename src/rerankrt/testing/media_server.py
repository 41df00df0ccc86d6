"""A local HTTP server for media files, with routes that exercise a fetcher's limits (delays, redirects, huge or
endless bodies): the tests' media server, and the benchmarks' (bench/media_fetch.py, bench/multimodal_request.py)."""

from __future__ import annotations

import contextlib
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

MEDIA_TYPES = {"png": "image/png", "jpg": "image/jpeg", "mp4": "video/mp4", "txt": "text/plain"}


class MediaHandler(BaseHTTPRequestHandler):
    """Serves `files` (set by serve_media), plus routes that exercise the fetcher's limits.

    /<name>[?type=<content type>&delay=<s>]   files[name], typed by its extension unless `type` is given
    /redirect?to=<url>                        a 302 to <url>
    /hops/<n>?to=<path>                       n redirects in a row, then <path>
    /huge-length                              a Content-Length of 1 TB
    /endless                                  a chunked body of up to 64 MiB
    Every route waits `delay` seconds first.
    """

    protocol_version = "HTTP/1.1"
    files: dict[str, bytes] = {}

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = {key: values[0] for key, values in parse_qs(url.query).items()}
        time.sleep(float(query.get("delay", 0)))
        name = url.path.lstrip("/")
        with contextlib.suppress(ConnectionError):  # clients that stop reading early
            if name in self.files:
                self.reply(200, self.files[name], query.get("type", MEDIA_TYPES[name.rsplit(".", 1)[1]]))
            elif url.path == "/redirect":
                self.reply(302, b"", "text/plain", Location=query["to"])
            elif url.path.startswith("/hops/"):
                hops = int(url.path[6:])
                self.reply(
                    302, b"", "text/plain", Location=f"/hops/{hops - 1}?to={query['to']}" if hops > 1 else query["to"]
                )
            elif url.path == "/huge-length":
                self.reply(200, b"\x89PNG", "image/png", **{"Content-Length": str(10**12)})
            elif url.path == "/endless":
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                chunk = b"\0" * 65536
                for _ in range(1024):  # 64 MiB at most, should the client not stop reading
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.write(b"0\r\n\r\n")
            else:
                self.reply(404, b"not found", "text/plain")

    def reply(self, status: int, body: bytes, content_type: str, **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        headers.setdefault("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


@contextlib.contextmanager
def serve_media(files: dict[str, bytes], host: str = "127.0.0.1"):
    """A MediaHandler for `files` on a free port of `host`, in a thread; yields its base URL."""
    handler = type("FilesHandler", (MediaHandler,), {"files": files})
    server = ThreadingHTTPServer((host, 0), handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield f"http://{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
