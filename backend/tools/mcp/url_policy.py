"""Where a session's own MCP servers may be: the operator's host allow-list, and no address the service must not
call (SSRF).

A URL passes when its host matches `COPILOT_MCP_ALLOWED_HOSTS` (`mcp.example.com` exactly, `*.example.com` for its
subdomains) and every address the host resolves to is public, or inside `COPILOT_MCP_ALLOWED_NETWORKS`. Loopback,
private, link-local (cloud metadata: 169.254.169.254, fd00:ec2::254), shared, reserved and multicast addresses are
refused otherwise. The check runs when a server is added and again on every request the connection sends
(redirects included), so a name that later resolves somewhere else is refused then.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable, Sequence
from urllib.parse import urlsplit

import httpx2

_RESOLVE_SECONDS = 5.0
"""A resolver that does not answer cannot hold a request (adding a server, or each request of a connection)."""

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class UrlRefused(Exception):
    """The URL is not one a session's MCP server may have; the message says why, for the user who gave it."""


class UrlPolicy:
    def __init__(self, hosts: Iterable[str], networks: Iterable[str] = ()) -> None:
        self.hosts = [h.strip().lower().rstrip(".") for h in hosts if h.strip()]
        self.networks: list[Network] = [ipaddress.ip_network(n.strip(), strict=False) for n in networks if n.strip()]

    @property
    def enabled(self) -> bool:
        """Users may add servers at all (the operator allowed some host)."""
        return bool(self.hosts)

    def check_host(self, url: str) -> str:
        """The host of `url`, lower-cased, if `url` is an http(s) URL on an allowed host; else `UrlRefused`."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise UrlRefused("the URL must start with http:// or https://")
        host = (parts.hostname or "").lower().rstrip(".")
        if not host:
            raise UrlRefused("the URL has no host")
        if parts.username or parts.password:
            raise UrlRefused("put credentials in the headers, not in the URL")
        if not any(_host_matches(host, allowed) for allowed in self.hosts):
            raise UrlRefused(f"the host {host!r} is not among the hosts this service allows MCP servers on")
        return host

    async def check(self, url: str) -> None:
        """`check_host`, then every address the host resolves to must be one the service may call."""
        host = self.check_host(url)
        self.check_addresses(host, await _resolve(host, urlsplit(url).port))

    def check_addresses(self, host: str, addresses: Sequence[Address]) -> None:
        if not addresses:
            raise UrlRefused(f"the host {host!r} does not resolve")
        for address in addresses:
            if not address.is_global and not any(address in n for n in self.networks):
                raise UrlRefused(f"the host {host!r} resolves to an address this service may not call")

    async def guard(self, request: httpx2.Request) -> None:
        """An HTTP client's request hook: refuses (raises `UrlRefused`) a request the policy does not allow."""
        await self.check(str(request.url))


def _host_matches(host: str, allowed: str) -> bool:
    if allowed.startswith("*."):
        return host.endswith(allowed[1:])
    return host == allowed


async def _resolve(host: str, port: int | None) -> list[Address]:
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return [_unmapped(literal)]
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(_RESOLVE_SECONDS):
            infos = await loop.getaddrinfo(host, port or 443, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise UrlRefused(f"the host {host!r} does not resolve") from None
    except TimeoutError:
        raise UrlRefused(f"the host {host!r} did not resolve within {_RESOLVE_SECONDS:.0f} s") from None
    return [_unmapped(ipaddress.ip_address(info[4][0])) for info in infos]


def _unmapped(address: Address) -> Address:
    # ::ffff:127.0.0.1 is loopback in disguise.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
