"""The SSRF guard: an HTTP client that resolves each host itself and connects only to allowed addresses."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable, Sequence

import httpcore
import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class AddressRefused(Exception):
    """A host resolved to an address the SSRF guard does not allow."""


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves each host itself, checks every address, then connects to a checked address.

    httpcore calls `connect_tcp` for every new connection, redirect hops included, and passes the hostname separately
    to `start_tls`, so TLS still verifies the certificate against the hostname.
    """

    def __init__(self, allowed_networks: Sequence[IPNetwork]):
        self._allowed = tuple(allowed_networks)
        self._backend = httpcore.AnyIOBackend()

    def allows(self, address: IPAddress) -> bool:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        # is_global is False for private, loopback, link-local, reserved, unspecified and shared (100.64/10) ones.
        public = address.is_global and not address.is_multicast
        return public or any(address in network for network in self._allowed)

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc.strerror}") from exc
        addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))
        for address in addresses:
            if not self.allows(address):
                raise AddressRefused(f"{host} resolves to {address}, which is not a public address")
        error: httpcore.ConnectError | None = None
        for address in addresses:
            try:
                return await self._backend.connect_tcp(str(address), port, timeout, local_address, socket_options)
            except httpcore.ConnectError as exc:
                error = exc
        raise error or httpcore.ConnectError(f"{host} has no address")

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


def guarded_client(allowed_networks: Sequence[str], max_redirects: int, timeout: float) -> httpx.AsyncClient:
    """An httpx client whose every connection, redirect hops included, goes through a `GuardedBackend`."""
    backend = GuardedBackend([ipaddress.ip_network(n) for n in allowed_networks])
    transport = httpx.AsyncHTTPTransport()
    # httpx takes no network backend: give its transport a pool that has one (httpx's default limits).
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=httpx.create_ssl_context(),
        max_connections=100,
        max_keepalive_connections=20,
        keepalive_expiry=5.0,
        network_backend=backend,
    )
    return httpx.AsyncClient(
        transport=transport,  # an explicit transport also means no proxy from the environment
        trust_env=False,
        follow_redirects=True,
        max_redirects=max_redirects,
        timeout=timeout,
        headers={"Accept-Encoding": "identity"},  # media is compressed already; no gzip bombs either
    )
