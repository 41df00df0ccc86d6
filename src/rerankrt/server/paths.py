"""ASGI middleware: repeated slashes in a request path collapse to one (`//v1/models` is `/v1/models`), as some
clients' URL joining produces them. Outermost, so the API key and metrics see the path the routes see."""

from __future__ import annotations

import re

SLASHES = re.compile(r"/{2,}")


class CollapseSlashes:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and "//" in scope["path"]:
            path = SLASHES.sub("/", scope["path"])
            scope = {**scope, "path": path, "raw_path": path.encode()}
        await self.app(scope, receive, send)
