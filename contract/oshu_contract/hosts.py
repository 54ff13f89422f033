"""Host patterns: the one syntax for `hosts` and `egress` entries.

Used by the sidecar to decide what to intercept and where a secret may go, and by
the operator to validate a VaultSession before it ever reaches a sidecar.

Syntax: an exact name (``api.anthropic.com``) or a ``*.suffix`` wildcard that matches
subdomains only (``*.github.com`` matches ``api.github.com``, not ``github.com``),
optionally followed by ``:port``; without a port the pattern means port 443.
Matching is case-insensitive and ignores one trailing dot.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

DEFAULT_PORT = 443

_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_NAME_RE = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")


class HostPatternError(ValueError):
    """A host or host pattern that cannot be used; the message says why."""


def normalize_host(host: str) -> str:
    """Lower-case, strip one trailing dot and IPv6 brackets: the form all comparisons use."""
    host = host.strip().lower()
    if host.endswith("."):
        host = host[:-1]
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host


def split_host_port(value: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """Split ``host[:port]`` (``[v6]:port`` for IPv6) into a normalized host and a port."""
    value = value.strip()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise HostPatternError(f"unbalanced brackets in {value!r}")
        host, rest = value[1:end], value[end + 1 :]
        if rest and not rest.startswith(":"):
            raise HostPatternError(f"unexpected text after ']' in {value!r}")
        port_text = rest[1:] if rest else ""
        if rest == ":":
            raise HostPatternError(f"empty port in {value!r}")
    elif value.count(":") == 1:
        host, port_text = value.split(":")
        if not port_text:
            raise HostPatternError(f"empty port in {value!r}")
    else:
        host, port_text = value, ""
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise HostPatternError(f"invalid port in {value!r}")
        port = int(port_text)
    else:
        port = default_port
    host = normalize_host(host)
    if not host:
        raise HostPatternError(f"empty host in {value!r}")
    return host, port


def is_ip(host: str) -> bool:
    """Whether `host` (normalized, no brackets) is an IPv4 or IPv6 address rather than a name."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class HostPattern:
    """One parsed entry of a `hosts` or `egress` list."""

    host: str  # normalized; for a wildcard, the suffix without "*."
    port: int
    wildcard: bool = False

    @classmethod
    def parse(cls, text: str) -> HostPattern:
        if not isinstance(text, str) or not text.strip():
            raise HostPatternError("host pattern must be a non-empty string")
        wildcard = text.strip().startswith("*.")
        host, port = split_host_port(text.strip()[2:] if wildcard else text)
        if is_ip(host):
            if wildcard:
                raise HostPatternError(f"wildcard over an IP address: {text!r}")
        elif not _NAME_RE.match(host) or len(host) > 253:
            raise HostPatternError(f"not a valid DNS name pattern: {text!r}")
        if wildcard and "." not in host:
            raise HostPatternError(f"wildcard must cover a domain with a dot, not a TLD: {text!r}")
        return cls(host=host, port=port, wildcard=wildcard)

    def matches(self, host: str, port: int) -> bool:
        """True if the (already normalized) host and port fall under this pattern."""
        if port != self.port:
            return False
        if self.wildcard:
            return host.endswith("." + self.host)
        return host == self.host

    def __str__(self) -> str:
        name = f"*.{self.host}" if self.wildcard else self.host
        if ":" in name:
            name = f"[{name}]"
        return name if self.port == DEFAULT_PORT else f"{name}:{self.port}"


def parse_patterns(values: object, what: str) -> tuple[HostPattern, ...]:
    """Parse a JSON list of host patterns, naming `what` in errors."""
    if not isinstance(values, list):
        raise HostPatternError(f"{what} must be a list of host patterns")
    out = []
    for i, v in enumerate(values):
        try:
            out.append(HostPattern.parse(v))
        except HostPatternError as e:
            raise HostPatternError(f"{what}[{i}]: {e}") from None
    return tuple(out)


def any_match(patterns: tuple[HostPattern, ...], host: str, port: int) -> bool:
    return any(p.matches(host, port) for p in patterns)
