"""The pod's egress rules as nftables text: a pure function of the options, no sockets, no nft.

One `table inet oshu_vault` (IPv4 and IPv6 alike) with two chains on the output hook:

- `nat_output` (priority -100): the redirect canary goes to the transparent port for EVERY uid
  (the sidecar's readiness probe proves the rules are there); then loopback, the proxy's uid,
  excluded CIDRs/ports, TCP DNS to the resolvers and the metadata addresses (so that the filter
  chain rejects them rather than the proxy) stay as they are; every other TCP connection is
  redirected to the transparent port on loopback.
- `filter_output` (priority filter, policy drop): loopback, established/related, the redirected
  connections (now addressed to the loopback transparent port), DNS to the resolvers, the proxy's
  own TCP, excluded destinations and IPv6 neighbour discovery pass; the metadata addresses are
  rejected for every uid (unless allowed); everything else (other UDP, QUIC included, and other
  protocols) is rejected, so a client fails at once instead of waiting for a timeout.

Inbound traffic is untouched (no input hook), and replies to inbound connections pass as
established. `table_text` is written in the form `nft list table` prints, so `--check` can
compare what is installed with what would be rendered (`canonical` smooths the rest).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .config import REDIRECT_CANARY

TABLE = "oshu_vault"
FAMILY = "inet"
#: Cloud metadata endpoints (AWS, GCP, Azure share the IPv4 one; AWS's IPv6 one), rejected by default.
METADATA_ADDRESSES = ("169.254.169.254", "fd00:ec2::254")
DEFAULT_PROXY_UID = 65532
DEFAULT_TRANSPARENT_PORT = 15001
DEFAULT_CANARY = REDIRECT_CANARY

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class RulesError(ValueError):
    """An option that cannot become a rule; the message names it."""


@dataclass(frozen=True, slots=True)
class RuleOptions:
    """What the rules depend on; build with `options()` so every value is checked and normalized."""

    proxy_uid: int = DEFAULT_PROXY_UID
    transparent_port: int = DEFAULT_TRANSPARENT_PORT
    dns_servers: tuple[IPAddress, ...] = ()
    exclude_cidrs: tuple[IPNetwork, ...] = ()
    exclude_ports: tuple[int, ...] = ()
    allow_metadata: bool = False
    canary: tuple[IPAddress, int] = (ipaddress.ip_address(DEFAULT_CANARY[0]), DEFAULT_CANARY[1])


def _port(value: int | str, what: str) -> int:
    text = str(value).strip()
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise RulesError(f"{what}: not a port (1-65535): {value!r}")
    return int(text)


def _address(value: str, what: str) -> IPAddress:
    try:
        return ipaddress.ip_address(value.strip().strip("[]"))
    except ValueError:
        raise RulesError(f"{what}: not an IP address: {value!r}") from None


def parse_canary(value: str) -> tuple[IPAddress, int]:
    """`ADDR:PORT` or `[V6ADDR]:PORT` -> (address, port)."""
    host, sep, port = value.strip().rpartition(":")
    if not sep:
        raise RulesError(f"--canary: expected ADDR:PORT, got {value!r}")
    return _address(host, "--canary"), _port(port, "--canary")


def _networks(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    nets: list[IPNetwork] = []
    for value in values:
        try:
            net = ipaddress.ip_network(value.strip(), strict=False)
        except ValueError:
            raise RulesError(f"--exclude-cidr: not a CIDR: {value!r}") from None
        if net.prefixlen == 0:
            raise RulesError(f"--exclude-cidr {value}: excludes every address, which turns enforcement off")
        nets.append(net)
    v4 = ipaddress.collapse_addresses(n for n in nets if isinstance(n, ipaddress.IPv4Network))
    v6 = ipaddress.collapse_addresses(n for n in nets if isinstance(n, ipaddress.IPv6Network))
    return (*v4, *v6)


@dataclass(frozen=True, slots=True)
class RuleInput:
    """The options as given (flags, strings); `parse` checks and normalizes them."""

    proxy_uid: int | str = DEFAULT_PROXY_UID
    transparent_port: int | str = DEFAULT_TRANSPARENT_PORT
    dns_servers: Iterable[str] = ()
    exclude_cidrs: Iterable[str] = ()
    exclude_ports: Iterable[int | str] = ()
    allow_metadata: bool = False
    canary: str = f"{DEFAULT_CANARY[0]}:{DEFAULT_CANARY[1]}"


def parse(given: RuleInput) -> RuleOptions:
    """Checked, normalized options: sorted and de-duplicated, CIDRs collapsed (nft merges them too)."""
    uid_text = str(given.proxy_uid).strip()
    if not uid_text.isdigit() or int(uid_text) == 0 or int(uid_text) >= 2**32 - 1:
        raise RulesError(f"--proxy-uid: not a non-root uid: {given.proxy_uid!r}")
    dns = sorted({_address(s, "--dns-server") for s in given.dns_servers}, key=lambda a: (a.version, int(a)))
    return RuleOptions(
        proxy_uid=int(uid_text),
        transparent_port=_port(given.transparent_port, "--transparent-port"),
        dns_servers=tuple(dns),
        exclude_cidrs=_networks(given.exclude_cidrs),
        exclude_ports=tuple(sorted({_port(p, "--exclude-port") for p in given.exclude_ports})),
        allow_metadata=given.allow_metadata,
        canary=parse_canary(given.canary),
    )


def options(**given: Any) -> RuleOptions:
    """`parse(RuleInput(**given))`: the keyword form tests and callers use."""
    return parse(RuleInput(**given))


# -- rendering -------------------------------------------------------------------------------------


def _fam(addr: IPAddress | IPNetwork) -> str:
    return "ip" if addr.version == 4 else "ip6"


def _elem(item: IPAddress | IPNetwork | int) -> str:
    if isinstance(item, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return str(item.network_address) if item.prefixlen == item.max_prefixlen else str(item)
    return str(item)


def _set(items: Sequence[IPAddress | IPNetwork | int]) -> str:
    """One element bare, several in an anonymous set (as `nft list` prints them)."""
    return _elem(items[0]) if len(items) == 1 else "{ " + ", ".join(_elem(i) for i in items) + " }"


def _by_family(items: Sequence[IPAddress | IPNetwork]) -> list[tuple[str, Sequence[IPAddress | IPNetwork]]]:
    out: list[tuple[str, Sequence[IPAddress | IPNetwork]]] = []
    for fam in ("ip", "ip6"):
        group = [i for i in items if _fam(i) == fam]
        if group:
            out.append((fam, group))
    return out


def _metadata() -> tuple[IPAddress, ...]:
    return tuple(ipaddress.ip_address(a) for a in METADATA_ADDRESSES)


def _excluded(o: RuleOptions) -> list[str]:
    rules = [f"{fam} daddr {_set(group)} accept" for fam, group in _by_family(o.exclude_cidrs)]
    if o.exclude_ports:
        rules.append(f"tcp dport {_set(o.exclude_ports)} accept")
    return rules


def _dns(o: RuleOptions, proto: str) -> list[str]:
    return [f"{fam} daddr {_set(group)} {proto} dport 53 accept" for fam, group in _by_family(o.dns_servers)]


def nat_rules(o: RuleOptions) -> list[str]:
    """The nat output chain's rules, in order."""
    port = o.transparent_port
    canary, canary_port = o.canary
    rules = [f"{_fam(canary)} daddr {canary} tcp dport {canary_port} redirect to :{port}"]
    rules += ['oifname "lo" accept', f"meta skuid {o.proxy_uid} accept"]
    rules += _excluded(o)
    rules += _dns(o, "tcp")
    if not o.allow_metadata:  # not redirected: the filter chain rejects it outright
        rules += [f"{_fam(a)} daddr {a} accept" for a in _metadata()]
    rules.append(f"meta l4proto tcp redirect to :{port}")
    return rules


def filter_rules(o: RuleOptions) -> list[str]:
    """The filter output chain's rules, in order (its policy is drop)."""
    port = o.transparent_port
    rules = ['oifname "lo" accept', "ct state established,related accept"]
    if not o.allow_metadata:
        rules += [f"{_fam(a)} daddr {a} reject with icmpx admin-prohibited" for a in _metadata()]
    rules += _dns(o, "udp") + _dns(o, "tcp")
    # A redirected connection keeps its original output interface but is now addressed to loopback.
    rules += [f"ip daddr 127.0.0.1 tcp dport {port} accept", f"ip6 daddr ::1 tcp dport {port} accept"]
    rules.append(f"meta skuid {o.proxy_uid} meta l4proto tcp accept")
    rules += _excluded(o)
    rules.append("icmpv6 type { nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert } accept")
    rules += ["meta l4proto tcp reject with tcp reset", "reject with icmpx admin-prohibited"]
    return rules


def table_text(o: RuleOptions) -> str:
    """The table as `nft list table inet oshu_vault` prints it."""
    lines = [f"table {FAMILY} {TABLE} {{", '\tcomment "oshu-vault egress enforcement: see docs/enforcement.md"']
    lines += ["\tchain nat_output {", "\t\ttype nat hook output priority -100; policy accept;"]
    lines += [f"\t\t{r}" for r in nat_rules(o)]
    lines += ["\t}", "", "\tchain filter_output {", "\t\ttype filter hook output priority filter; policy drop;"]
    lines += [f"\t\t{r}" for r in filter_rules(o)]
    lines += ["\t}", "}"]
    return "\n".join(lines) + "\n"


def script(o: RuleOptions) -> str:
    """An `nft -f -` script that replaces the table in one transaction, whether or not it exists."""
    return f"table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n" + table_text(o)


_SET = re.compile(r"\{ ([^{}]*) \}")
#: nft lists protocols by name only when /etc/protocols names them (a minbase image has none).
_L4PROTO = re.compile(r"\bl4proto (\d+)\b")
_PROTOCOL_NAMES = {"1": "icmp", "6": "tcp", "17": "udp", "58": "ipv6-icmp"}


def canonical(text: str) -> list[str]:
    """Lines without indentation, blanks or handles, set elements sorted: listing order may differ."""

    def sort_set(m: re.Match[str]) -> str:
        return "{ " + ", ".join(sorted(e.strip() for e in m.group(1).split(","))) + " }"

    out = []
    for line in text.splitlines():
        line = re.sub(r"\s+# handle \d+$", "", line.strip())
        line = _L4PROTO.sub(lambda m: "l4proto " + _PROTOCOL_NAMES.get(m.group(1), m.group(1)), line)
        if line:
            out.append(_SET.sub(sort_set, line))
    return out
