"""The SSRF guard's decision over one address (addresses.py), and the router applying it."""

from __future__ import annotations

import asyncio

import pytest

from oshu_sidecar.addresses import AddressGuard, parse_networks
from oshu_sidecar.config import parse_connect_to, parse_resolve
from oshu_sidecar.errors import ProxyError
from oshu_sidecar.upstream import Router

DENIED = [
    "127.0.0.1",
    "127.1.2.3",
    "0.0.0.0",
    "10.0.0.1",
    "172.16.5.4",
    "192.168.1.1",
    "100.64.0.1",
    "169.254.169.254",  # cloud metadata
    "224.0.0.1",
    "255.255.255.255",
    "::1",
    "::",
    "fe80::1",
    "fe80::1%eth0",
    "fd00:ec2::254",  # AWS metadata over IPv6
    "::ffff:127.0.0.1",  # IPv4-mapped loopback
    "::ffff:169.254.169.254",
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "2002:7f00:1::",  # 6to4 of 127.0.0.1
    "not-an-address",
]
PERMITTED = ["93.184.216.34", "1.1.1.1", "8.8.8.8", "2606:4700:4700::1111", "::ffff:93.184.216.34"]


@pytest.mark.parametrize("address", DENIED)
def test_denied_by_default(address: str) -> None:
    assert not AddressGuard().permits(address)


@pytest.mark.parametrize("address", PERMITTED)
def test_public_addresses_permitted(address: str) -> None:
    assert AddressGuard().permits(address)


def test_allowed_ranges_are_exceptions() -> None:
    guard = AddressGuard(parse_networks(["10.1.0.0/16", "fd12::/16"], "--allow-upstream-cidr"))
    assert guard.permits("10.1.2.3") and guard.permits("fd12::5") and guard.permits("::ffff:10.1.0.9")
    assert not guard.permits("10.2.0.1") and not guard.permits("127.0.0.1")


def test_bad_cidr_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"--allow-upstream-cidr: expected a CIDR .* got 'ten'"):
        parse_networks(["ten"], "--allow-upstream-cidr")


async def test_router_vets_resolved_names_and_trusts_pins() -> None:
    loop = asyncio.get_running_loop()
    guarded = Router(guard=AddressGuard())
    for host in ("localhost", "127.0.0.1", "169.254.169.254"):
        with pytest.raises(ProxyError) as e:
            await guarded.destination(loop, host, 443)
        assert e.value.code == "upstream_address_denied" and e.value.status == 403
    pinned = Router(
        connect_to=(parse_connect_to("api.test:443:127.0.0.1:8443"),),
        resolve=(parse_resolve("b.test:443:127.0.0.2"),),
        guard=AddressGuard(),
    )
    assert await pinned.destination(loop, "api.test", 443) == ("127.0.0.1", 8443)
    assert await pinned.destination(loop, "b.test", 443) == ("127.0.0.2", 443)
    allowed = Router(guard=AddressGuard(parse_networks(["127.0.0.0/8"], "x")))
    assert await allowed.destination(loop, "localhost", 80) == ("127.0.0.1", 80)
    assert await Router().destination(loop, "localhost", 80) == ("localhost", 80)  # no guard: unchanged
