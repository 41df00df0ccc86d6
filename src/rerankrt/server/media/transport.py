"""The SSRF guard: an HTTP client that resolves each host itself and connects only to allowed addresses.

An address is public when it is in none of the special-purpose ranges below (IANA's registries, spelled out here
rather than taken from `ipaddress.is_global`, whose answer differs between Python versions) and Python agrees.
An IPv6 address that carries an IPv4 address (IPv4-mapped, -compatible, -translated, NAT64 `64:ff9b::/96`, 6to4
`2002::/16`) is judged by that IPv4 address as well, since a gateway may deliver it there; the forms whose IPv4
part cannot be read back safely (local-use NAT64, Teredo) are refused.

Refusals never say what a host resolved to, and every failure to connect or read reads the same, so the guard
cannot be used to map DNS or probe the ports of networks the server can reach.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Iterable, Sequence

import httpcore
import httpx

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

NOT_PUBLIC = tuple(
    ipaddress.ip_network(n)
    for n in (
        # IPv4
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
        "192.0.0.0/24", "192.0.2.0/24", "192.31.196.0/24", "192.52.193.0/24", "192.88.99.0/24", "192.168.0.0/16",
        "192.175.48.0/24", "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
        # IPv6 (the forms that embed IPv4 are judged by their IPv4 address too: EMBEDDED_IPV4)
        "::/128", "::1/128", "100::/64", "2001::/23", "2001:db8::/32", "2620:4f:8000::/48", "3fff::/20",
        "5f00::/16", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8", "64:ff9b:1::/48",
    )
)  # fmt: skip
# IPv6 ranges whose last 32 bits are an IPv4 address: IPv4-mapped, IPv4-translated, NAT64, IPv4-compatible
EMBEDDED_IPV4 = tuple(ipaddress.ip_network(n) for n in ("::ffff:0:0/96", "::ffff:0:0:0/96", "64:ff9b::/96", "::/96"))
SIXTOFOUR = ipaddress.ip_network("2002::/16")


class AddressRefused(Exception):
    """A host resolved to an address the SSRF guard does not allow (or did not resolve)."""


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, translated, NAT64, compatible, 6to4), if any."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address in SIXTOFOUR:
        return address.sixtofour
    if any(address in network for network in EMBEDDED_IPV4) and int(address) > 1:  # not :: or ::1
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_public(address: IPAddress) -> bool:
    """True for an address in no special-purpose range, that Python also calls global, and that is no multicast."""
    if any(address in network for network in NOT_PUBLIC if network.version == address.version):
        return False
    return address.is_global and not address.is_multicast


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves each host itself, checks every address, then connects to a checked address.

    httpcore calls `connect_tcp` for every new connection, redirect hops included, and passes the hostname separately
    to `start_tls`, so TLS still verifies the certificate against the hostname.
    """

    def __init__(self, allowed_networks: Sequence[IPNetwork]):
        self._allowed = tuple(allowed_networks)
        self._backend = httpcore.AnyIOBackend()

    def allows(self, address: IPAddress) -> bool:
        """Public, or in an allowed network; an IPv6 address that carries an IPv4 one is judged by that IPv4 address,
        where a gateway would deliver it (so a network allowed for it also allows its IPv6 forms)."""
        address = embedded_ipv4(address) or address
        return is_public(address) or any(address in network for network in self._allowed)

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        refused = AddressRefused(f"{host} does not resolve to an address this server may fetch from")
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:  # the same answer as a private address: no DNS oracle
            log.debug("media host %r does not resolve: %s", host, exc)
            raise refused from None
        addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos))
        for address in addresses:
            if not self.allows(address):
                log.debug("media host %r resolves to %s, which is not allowed", host, address)
                raise refused
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
