"""The HTTP server: uvicorn, with the connection limits it lacks (header and body read timeouts, a cap on open
connections), so slow or idle clients cannot hold the server's file descriptors.

uvicorn 0.54 closes idle keep-alive connections (`timeout_keep_alive`) and bounds header size (h11's 16 KiB), but
a client that sends its headers a byte at a time is never timed out, and connections are never refused, so
~1000 such clients exhaust the descriptors and nothing else gets in. `GuardedH11Protocol` is uvicorn's own h11
protocol with three additions:

- a request's headers must arrive within `header_timeout` of the connection opening (or of the previous
  response), else it gets 408 and is closed;
- its body must arrive within `body_timeout` of its headers, else it is closed (the app sees a disconnect);
- past `max_connections` open connections, the one that has waited longest for its client (idle, or sending
  headers or a body) is closed to make room, so new clients still get in; when every connection has a request
  being answered, the new one is refused (503) instead.

Per-client limits (connections or requests per address) need a reverse proxy in front; docs/security.md has an
nginx configuration.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

FD_RESERVE = 128  # descriptors kept for everything but client connections (model files, media fetches, threads)
ACCEPT_BATCH = 128  # the listen backlog, which is also how many connections asyncio accepts in one go
# asyncio accepts a batch before any connection_made can evict, and a few batches may be in flight: room for them
FD_HEADROOM = FD_RESERVE + 3 * ACCEPT_BATCH
TIMED_OUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: %d\r\n\r\n"
)
BUSY = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\n"


def _json_error(status: int, kind: str, message: str) -> bytes:
    return b'{"object":"error","message":"%s","type":"%s","param":null,"code":%d}' % (
        message.encode(),
        kind.encode(),
        status,
    )


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with header/body read timeouts and a connection cap that evicts waiting clients."""

    header_timeout: float = 10.0
    body_timeout: float = 60.0
    max_connections: int = 512

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._phase = "new"  # headers (waiting for a request), body (reading it), busy (being answered)
        self._phase_since = 0.0
        self._received = 0  # bytes received in this phase
        self._timer: asyncio.TimerHandle | None = None

    # --- uvicorn's hooks -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._update()
        if len(self.connections) > self.max_connections:
            waiting = [
                c for c in self.connections if c is not self and isinstance(c, GuardedH11Protocol) and c._evictable()
            ]
            if waiting:  # the one that has waited longest; idle connections (nothing received) first
                min(waiting, key=lambda c: (c._received > 0, c._phase_since))._close("evicted")
            else:
                log.warning("refusing a connection: %d open, all being answered", len(self.connections) - 1)
                self._close("refused")

    def data_received(self, data: bytes) -> None:
        self._received += len(data)
        super().data_received(data)
        self._update()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._update()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        super().connection_lost(exc)

    # --- phases and timers -----------------------------------------------------------------------

    def _update(self) -> None:
        state = self.conn.their_state
        phase = "headers" if state is h11.IDLE else "body" if state is h11.SEND_BODY else "busy"
        if phase == self._phase:
            return
        self._phase, self._phase_since, self._received = phase, self.loop.time(), 0
        self._cancel_timer()
        if phase == "headers":
            self._timer = self.loop.call_later(self.header_timeout, self._expired)
        elif phase == "body":
            self._timer = self.loop.call_later(self.body_timeout, self._expired)

    def _evictable(self) -> bool:
        return self._phase in ("headers", "body") and self.transport is not None and not self.transport.is_closing()

    def _expired(self) -> None:
        self._timer = None
        if self.transport is None or self.transport.is_closing():
            return
        if self._phase == "headers" and self._received:  # a request was started but its headers never finished
            self._close("timeout")
        elif self._phase in ("headers", "body"):
            log.debug("closing a connection that sent no complete %s in time", self._phase)
            self._close("drop")

    def _close(self, why: str) -> None:
        """Close this connection; a client that has not been answered hears why when there is something to say."""
        if self.transport is None or self.transport.is_closing():
            return
        if why == "timeout" and self.conn.our_state is h11.IDLE:
            body = _json_error(408, "RequestTimeout", f"request headers not received within {self.header_timeout:g} s")
            self.transport.write(TIMED_OUT % len(body) + body)
        elif why == "refused":
            body = _json_error(503, "ServiceUnavailable", "too many open connections; retry later")
            self.transport.write(BUSY + b"content-length: %d\r\n\r\n" % len(body) + body)
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        self.transport.close()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def raise_fd_limit(wanted: int) -> int:
    """Raise the soft limit on open files towards `wanted` (up to the hard limit); returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def protocol_for(settings) -> type[GuardedH11Protocol]:
    """The protocol class with the settings' limits, the connection cap fitted to the descriptors there are."""
    soft = raise_fd_limit(settings.max_connections + FD_HEADROOM)
    connections = settings.max_connections
    if soft != resource.RLIM_INFINITY and connections > soft - FD_HEADROOM:
        connections = max(1, soft - FD_HEADROOM)
        log.warning(
            "max_connections %d lowered to %d: the open-file limit is %d (raise it with ulimit -n)",
            settings.max_connections, connections, soft,
        )  # fmt: skip
    attributes = {
        "header_timeout": settings.header_timeout,
        "body_timeout": settings.body_timeout,
        "max_connections": connections,
    }
    return type("RerankrtH11Protocol", (GuardedH11Protocol,), attributes)


def quiet_accept_errors(loop: asyncio.AbstractEventLoop) -> None:
    """Out of descriptors, asyncio logs a traceback for every failed accept of a batch (thousands a second under a
    flood, which starves the loop it is reporting on): log those once every 10 s, with a count."""
    default = loop.get_exception_handler()
    state = {"last": 0.0, "count": 0}

    def handler(loop: asyncio.AbstractEventLoop, context: dict) -> None:
        if "out of system resource" not in str(context.get("message", "")):
            return default(loop, context) if default else loop.default_exception_handler(context)
        state["count"] += 1
        if loop.time() - state["last"] >= 10:
            log.warning("out of file descriptors: %d connections could not be accepted", state["count"])
            state["last"], state["count"] = loop.time(), 0

    loop.set_exception_handler(handler)


def serve(app, settings) -> None:
    """Run `app` with uvicorn on the settings' host and port, within its connection limits, until SIGTERM."""
    import uvicorn

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=protocol_for(settings),
        backlog=ACCEPT_BATCH,
        log_config=None,  # keep our handlers (text or JSON); rerankrt.access logs each request
        access_log=False,
        server_header=False,  # no software name in every response
        timeout_keep_alive=settings.keep_alive_timeout,
        timeout_graceful_shutdown=int(settings.request_timeout),  # in-flight (admitted to finish within it) first
    )
    server = uvicorn.Server(config)

    async def run() -> None:
        quiet_accept_errors(asyncio.get_running_loop())
        await server.serve()

    asyncio.run(run())
