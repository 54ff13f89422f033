"""`oshu-gateway` flags; every `--foo-bar` can also be set as `OSHU_GATEWAY_FOO_BAR` (the flag wins).

Repeatable flags read their variable as a list: `OSHU_GATEWAY_UPSTREAM_CA_FILE` split on
os.pathsep, `OSHU_GATEWAY_RESOLVE` / `OSHU_GATEWAY_CONNECT_TO` on whitespace, as the sidecar's.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from oshu_sidecar.addresses import IPNetwork, parse_networks
from oshu_sidecar.config import ConfigError, ConnectTo, Resolve, parse_addr, parse_connect_to, parse_resolve

ENV_PREFIX = "OSHU_GATEWAY_"
_DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d)?$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(value: str, what: str) -> float:
    """`90`, `30s`, `15m`, `24h`, `7d` -> seconds."""
    m = _DURATION_RE.match(value.strip())
    if not m or float(m.group(1)) <= 0:
        raise ConfigError(f"{what}: expected a positive duration such as 30s, 15m, 24h, 7d; got {value!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    listen: tuple[str, int]
    plain_listen: tuple[str, int] | None
    tls_cert: str | None
    tls_key: str | None
    public_host: str
    public_url: str | None
    state_dir: Path
    api_key_file: Path
    ca_cert: str | None
    ca_key: str | None
    encryption_key_file: Path | None
    upstream_ca_files: tuple[str, ...] = ()
    resolve: tuple[Resolve, ...] = ()
    connect_to: tuple[ConnectTo, ...] = ()
    #: Exceptions to the SSRF guard (private ranges the gateway may reach on a session's behalf).
    allow_upstream_cidrs: tuple[IPNetwork, ...] = ()
    max_ttl: float = 86400.0
    default_idle_ttl: float = 3600.0
    log_level: str = "info"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="oshu-gateway",
        description="Self-hosted secrets proxy: a session API and the proxy on one address. "
        f"Every flag can also be set as {ENV_PREFIX}<FLAG> (upper case, dashes to underscores).",
    )
    p.add_argument(
        "--listen",
        help="HOST:PORT of the TLS listener serving the session API and the proxy "
        "(default 127.0.0.1:8443; port 0 picks one)",
    )
    p.add_argument("--plain-listen", help="HOST:PORT of an optional listener doing the same without TLS")
    p.add_argument("--tls-cert", help="PEM certificate (chain) of the listener; default: minted from the gateway CA")
    p.add_argument("--tls-key", help="PEM key of --tls-cert")
    p.add_argument(
        "--public-host",
        help="name the minted listener certificate is for (default localhost; 127.0.0.1 is always included)",
    )
    p.add_argument(
        "--public-url", help="base URL used in proxy_url and ca_url of API responses (default https://<listen address>)"
    )
    p.add_argument("--state-dir", help="required: the database, the generated CA and keys")
    p.add_argument("--api-key-file", help="required: management API keys, one per line; re-read when it changes")
    p.add_argument("--ca-cert", help="interception CA certificate (default: generated into the state dir)")
    p.add_argument("--ca-key", help="interception CA key (default: generated into the state dir)")
    p.add_argument(
        "--encryption-key-file",
        help="AES-256 key (64 hex characters) for values at rest "
        "(default: <state-dir>/encryption.key, created 0600 on first start)",
    )
    p.add_argument("--upstream-ca-file", action="append", help="extra CA trusted for upstreams (repeatable)")
    p.add_argument("--resolve", action="append", help="HOST:PORT:ADDR as curl (repeatable)")
    p.add_argument("--connect-to", action="append", help="HOST:PORT:CHOST:CPORT as curl (repeatable)")
    p.add_argument(
        "--allow-upstream-cidr",
        action="append",
        help="CIDR the proxy may connect to although it is loopback, private, link-local or reserved "
        "(repeatable; by default such addresses are refused unless pinned by --resolve/--connect-to)",
    )
    p.add_argument("--max-ttl", help="longest session lifetime (default 24h)")
    p.add_argument("--default-idle-ttl", help="idle TTL of sessions that give none (default 1h)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="default info")
    return p


class _Values:
    """A flag's value from the command line, else from its `OSHU_GATEWAY_*` variable."""

    def __init__(self, args: argparse.Namespace, env: Mapping[str, str]) -> None:
        self.args, self.env = args, env

    def get(self, dest: str) -> str | None:
        v = getattr(self.args, dest)
        if v is not None:
            return str(v)
        return self.env.get(ENV_PREFIX + dest.upper()) or None

    def many(self, dest: str, sep: str | None) -> list[str]:
        v = getattr(self.args, dest)
        if v:
            return list(v)
        raw = self.env.get(ENV_PREFIX + dest.upper(), "")
        return [x for x in (raw.split(sep) if sep else raw.split()) if x]

    def required(self, dest: str) -> str:
        v = self.get(dest)
        if not v:
            flag = dest.replace("_", "-")
            raise ConfigError(f"--{flag} (or {ENV_PREFIX}{dest.upper()}) is required")
        return v

    def pair(self, a: str, b: str) -> tuple[str | None, str | None]:
        va, vb = self.get(a), self.get(b)
        if bool(va) != bool(vb):
            raise ConfigError(f"--{a.replace('_', '-')} and --{b.replace('_', '-')} go together")
        return va, vb


def load_config(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> GatewayConfig:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:
        if e.code == 0:
            raise
        raise ConfigError("invalid command line (see --help)") from None
    v = _Values(args, os.environ if environ is None else environ)
    state, keys = v.required("state_dir"), v.required("api_key_file")
    tls_cert, tls_key = v.pair("tls_cert", "tls_key")
    ca_cert, ca_key = v.pair("ca_cert", "ca_key")
    plain, enc = v.get("plain_listen"), v.get("encryption_key_file")
    max_ttl = parse_duration(v.get("max_ttl") or "24h", "--max-ttl")
    return GatewayConfig(
        listen=parse_addr(v.get("listen") or "127.0.0.1:8443", "--listen"),
        plain_listen=parse_addr(plain, "--plain-listen") if plain else None,
        tls_cert=tls_cert,
        tls_key=tls_key,
        public_host=v.get("public_host") or "localhost",
        public_url=_public_url(v.get("public_url")),
        state_dir=Path(state),
        api_key_file=Path(keys),
        ca_cert=ca_cert,
        ca_key=ca_key,
        encryption_key_file=Path(enc) if enc else None,
        upstream_ca_files=tuple(v.many("upstream_ca_file", os.pathsep)),
        resolve=tuple(parse_resolve(x) for x in v.many("resolve", None)),
        connect_to=tuple(parse_connect_to(x) for x in v.many("connect_to", None)),
        allow_upstream_cidrs=_networks(v.many("allow_upstream_cidr", None)),
        max_ttl=max_ttl,
        default_idle_ttl=min(parse_duration(v.get("default_idle_ttl") or "1h", "--default-idle-ttl"), max_ttl),
        log_level=_log_level(v.get("log_level") or "info"),
    )


def _public_url(value: str | None) -> str | None:
    if value is None:
        return None
    if not re.match(r"^https?://[^/?#@]+$", value.rstrip("/")):
        raise ConfigError(f"--public-url: expected http(s)://HOST[:PORT], got {value!r}")
    return value.rstrip("/") or None


def _log_level(level: str) -> str:
    if level not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"--log-level: expected debug, info, warning or error, got {level!r}")
    return level


def _networks(values: list[str]) -> tuple[IPNetwork, ...]:
    try:
        return parse_networks(values, "--allow-upstream-cidr")
    except ValueError as e:
        raise ConfigError(str(e)) from None
