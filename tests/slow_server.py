"""Making the server slow on purpose: a real backend held until the test releases it, and an in-process client."""

import threading
from contextlib import asynccontextmanager

import httpx


class HeldBackend:
    def __init__(self, inner):
        self.inner = inner
        self.name, self.device = inner.name, inner.device
        self.release = threading.Event()
        self.entered = threading.Event()
        self.batches = 0

    def run(self, batch):
        self.entered.set()
        assert self.release.wait(30), "the test never released the backend"
        self.batches += 1
        return self.inner.run(batch)


@asynccontextmanager
async def asgi_client(app):
    """The app with its lifespan (warm-up, scheduler shutdown) and an httpx client talking to it in-process."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as http:
            yield http
