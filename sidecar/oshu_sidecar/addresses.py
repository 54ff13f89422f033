"""Which upstream IP addresses a proxy may connect to on a client's behalf (SSRF guard).

A shared gateway connects from its own network position: without a guard, any session could
reach the gateway's loopback, a cloud metadata address or internal services just by naming
them (or a DNS name that resolves to them). The guard is a pure decision over one address;
the upstream pool applies it to every address a name resolves to and connects to a vetted
address itself, so a second DNS answer cannot swap in another (no rebinding window).

Addresses the operator pinned with `--resolve` / `--connect-to` are the operator's choice and
are not vetted.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Never a public API: loopback, private, shared (CGNAT), link-local (cloud metadata lives at
#: 169.254.169.254 and fd00:ec2::254), multicast, reserved and "this network" ranges.
DENIED: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "::/128",
        "::1/128",
        "100::/64",
        "2001:db8::/32",
        "fc00::/7",
        "fe80::/10",
        "ff00::/8",
    )
)

#: IPv6 forms that carry an IPv4 address a packet may end up at (mapped, NAT64, 6to4).
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_SIX_TO_FOUR = ipaddress.ip_network("2002::/16")


def parse_networks(values: Iterable[str], what: str) -> tuple[IPNetwork, ...]:
    """CIDRs from flags; a clear error naming the flag and the value otherwise."""
    out: list[IPNetwork] = []
    for v in values:
        try:
            out.append(ipaddress.ip_network(v.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{what}: expected a CIDR such as 10.1.0.0/16 or fd00::/8, got {v!r}") from None
    return tuple(out)


def _embedded(ip: IPAddress) -> tuple[IPAddress, ...]:
    """The address itself plus any IPv4 address an IPv6 form routes to."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return (ip,)
    found: list[IPAddress] = [ip]
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    if ip in _NAT64:
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    return tuple(found)


class AddressGuard:
    """Permits an address unless it (or the IPv4 address it carries) is in a denied range.

    `allowed` ranges are exceptions the operator chose (an internal API the gateway should
    reach); they win over `DENIED`.
    """

    __slots__ = ("allowed", "denied")

    def __init__(self, allowed: tuple[IPNetwork, ...] = (), denied: tuple[IPNetwork, ...] = DENIED) -> None:
        self.allowed = allowed
        self.denied = denied

    def permits(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False  # not an address: never connect to something we could not vet
        forms = _embedded(ip)
        if any(form in net for form in forms for net in self.allowed):
            return True
        return not any(form in net for form in forms for net in self.denied)
