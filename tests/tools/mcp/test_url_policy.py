"""The URL policy of sessions' own MCP servers: allowed hosts, and the addresses the service may not call."""

from __future__ import annotations

import ipaddress

import pytest

from backend.tools.mcp.url_policy import UrlPolicy, UrlRefused

POLICY = UrlPolicy(["mcp.example.com", "*.tools.example.com"])


@pytest.mark.parametrize(
    "url", ["https://mcp.example.com/mcp", "https://MCP.example.com./mcp", "http://a.b.tools.example.com:8080/x"]
)
def test_an_allowed_host_passes(url: str) -> None:
    POLICY.check_host(url)


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/mcp",
        "https://evil-mcp.example.com/mcp",
        "https://tools.example.com/mcp",  # `*.` means subdomains only
        "https://tools.example.com.evil.net/mcp",
        "file:///etc/passwd",
        "https:///mcp",
        "https://u:p@mcp.example.com/mcp",
    ],
)
def test_any_other_url_is_refused(url: str) -> None:
    with pytest.raises(UrlRefused):
        POLICY.check_host(url)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",  # shared (carrier-grade NAT)
        "0.0.0.0",
        "::1",
        "fd00:ec2::254",  # AWS metadata over IPv6
        "fe80::1",
        "::ffff:127.0.0.1",
    ],
)
def test_an_address_that_is_not_public_is_refused_unless_its_network_is_allowed(address: str) -> None:
    ip = ipaddress.ip_address(address)
    unmapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped else ip
    with pytest.raises(UrlRefused, match="may not call"):
        POLICY.check_addresses("h", [ipaddress.ip_address("93.184.215.14"), unmapped])
    UrlPolicy(["h"], [f"{unmapped}/128" if unmapped.version == 6 else f"{unmapped}/32"]).check_addresses(
        "h", [unmapped]
    )


async def test_a_literal_loopback_address_is_refused_without_resolving() -> None:
    with pytest.raises(UrlRefused, match="may not call"):
        await UrlPolicy(["127.0.0.1"]).check("http://127.0.0.1:8000/mcp")
    await UrlPolicy(["127.0.0.1"], ["127.0.0.0/8"]).check("http://127.0.0.1:8000/mcp")


async def test_a_name_resolving_to_loopback_is_refused() -> None:
    with pytest.raises(UrlRefused, match="may not call"):
        await UrlPolicy(["localhost"]).check("http://localhost/mcp")


def test_a_public_address_passes() -> None:
    POLICY.check_addresses("h", [ipaddress.ip_address("93.184.215.14"), ipaddress.ip_address("2606:4700::1")])


async def test_a_host_that_does_not_resolve_is_refused() -> None:
    with pytest.raises(UrlRefused, match="does not resolve"):
        await UrlPolicy(["nothing.invalid"]).check("https://nothing.invalid/mcp")  # RFC 6761: never resolves
