"""Command line and environment: every flag `--foo-bar` can also be set as `OSHU_FOO_BAR`.

A flag given on the command line wins over the environment. Repeatable flags read
their environment variable as a list: `OSHU_UPSTREAM_CA_FILE` is split on os.pathsep
(like PATH), `OSHU_RESOLVE` and `OSHU_CONNECT_TO` on whitespace (their values contain
colons and commas).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from oshu_contract.hosts import normalize_host

ENV_PREFIX = "OSHU_"
#: The transparent listener's port (the redirect rules send agent TCP there); mirrored by the
#: operator's names.SIDECAR_TRANSPARENT_PORT.
TRANSPARENT_PORT = 15001
#: The redirect canary: the pod's rules redirect it to the transparent listener for every uid
#: (readiness). A loopback address nothing listens on: without the rules a connection is refused
#: at once and, unlike an address of any network, it cannot be anything of the machine's or leave it.
REDIRECT_CANARY = ("127.86.86.1", 9)


class ConfigError(ValueError):
    """A flag or environment value that cannot be used; the message names it."""


@dataclass(frozen=True, slots=True)
class ConnectTo:
    """curl's --connect-to HOST:PORT:CONNECT_HOST:CONNECT_PORT; empty parts match anything / keep."""

    host: str  # "" = any host
    port: int  # 0 = any port
    connect_host: str  # "" = unchanged
    connect_port: int  # 0 = unchanged


@dataclass(frozen=True, slots=True)
class Resolve:
    """curl's --resolve HOST:PORT:ADDR[,ADDR...]; HOST may be "*"."""

    host: str
    port: int
    addresses: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Config:
    listen: tuple[str, int]
    admin_listen: tuple[str, int]
    session_file: str
    ca_cert: str
    ca_key: str
    upstream_ca_files: tuple[str, ...] = ()
    resolve: tuple[Resolve, ...] = ()
    connect_to: tuple[ConnectTo, ...] = ()
    log_level: str = "info"
    header_timeout: float = 10.0
    idle_timeout: float = 60.0
    connect_timeout: float = 10.0
    upstream_timeout: float = 600.0
    max_header_size: int = 65536
    reload_interval: float = 0.5
    drain_timeout: float = 5.0
    #: /readyz fails unless a connection to `redirect_canary` is redirected to the transparent listener.
    require_redirect: bool = False
    redirect_canary: tuple[str, int] = REDIRECT_CANARY
    transparent_listen: tuple[tuple[str, int], ...] = ()  # empty: no transparent listener


def parse_addr(value: str, what: str) -> tuple[str, int]:
    """`HOST:PORT` -> (normalized host, port); `what` names the flag in the error message."""
    host, sep, port = value.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"{what}: expected HOST:PORT, got {value!r}")
    host = normalize_host(host)
    if not host:
        raise ConfigError(f"{what}: empty host in {value!r}")
    return host, int(port)


def _split_bracketed(value: str, parts: int) -> list[str]:
    """Split on ':' outside [brackets] into at most `parts` fields."""
    out: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in value:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == ":" and depth == 0 and len(out) < parts - 1:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return out


def _port(text: str, what: str, allow_empty: bool) -> int:
    if text == "" and allow_empty:
        return 0
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ConfigError(f"{what}: invalid port {text!r}")
    return int(text)


def parse_connect_to(value: str) -> ConnectTo:
    what = f"--connect-to {value!r}"
    parts = _split_bracketed(value, 4)
    if len(parts) != 4:
        raise ConfigError(f"{what}: expected HOST:PORT:CONNECT_HOST:CONNECT_PORT")
    host, port, chost, cport = parts
    return ConnectTo(normalize_host(host), _port(port, what, True), normalize_host(chost), _port(cport, what, True))


def parse_resolve(value: str) -> Resolve:
    what = f"--resolve {value!r}"
    body = value[1:] if value.startswith("+") else value  # curl's "+" (lazy) prefix means the same here
    parts = _split_bracketed(body, 3)
    if len(parts) != 3 or not parts[2]:
        raise ConfigError(f"{what}: expected HOST:PORT:ADDRESS[,ADDRESS...]")
    host, port, addrs = parts
    if not host:
        raise ConfigError(f"{what}: empty host")
    addresses = tuple(normalize_host(a) for a in addrs.split(",") if a.strip())
    if not addresses:
        raise ConfigError(f"{what}: no address")
    return Resolve(normalize_host(host), _port(port, what, False), addresses)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="oshu-sidecar",
        description="TLS-intercepting HTTPS proxy that swaps sealed tokens for real keys, only for allowed hosts. "
        "Every flag can also be set by an environment variable OSHU_<FLAG_NAME>.",
    )
    _add_endpoints(p)
    _add_limits(p)
    _add_enforcement(p)
    return p


def _add_enforcement(p: argparse.ArgumentParser) -> None:
    """Readiness under the pod's redirect rules (oshu-vault-netrules, docs/enforcement.md)."""
    p.add_argument(
        "--require-redirect",
        action="store_true",
        default=None,
        help="/readyz fails unless the redirect canary reaches the transparent listener (the rules are in place)",
    )
    p.add_argument(
        "--redirect-canary",
        metavar="ADDR:PORT",
        help="address the rules redirect for every uid, answered by the transparent listener (default 127.86.86.1:9)",
    )


def _truthy(value: object) -> bool:
    """A flag (True) or its environment variable (1/true/yes/on)."""
    return value is True or str(value).strip().lower() in ("1", "true", "yes", "on")


def _check_enforcement(values: Mapping[str, object]) -> None:
    """A sidecar that requires the redirect must answer the canary itself, or it is never ready."""
    if _truthy(values.get("require_redirect")) and not values.get("transparent_listen"):
        raise ConfigError("--require-redirect needs --transparent-listen (its listener answers the redirect canary)")


def _add_endpoints(p: argparse.ArgumentParser) -> None:
    """Where the proxy listens and logs, what it reads (session, CA), how it reaches and trusts upstreams."""
    p.add_argument("--listen", metavar="HOST:PORT", help="proxy address (default 127.0.0.1:15080; port 0 picks one)")
    p.add_argument("--session-file", metavar="PATH", help="session document (JSON), hot-reloaded")
    p.add_argument("--ca-cert", metavar="PATH", help="PEM CA certificate used to mint leaf certificates")
    p.add_argument("--ca-key", metavar="PATH", help="PEM private key of that CA")
    p.add_argument(
        "--upstream-ca-file",
        metavar="PATH",
        action="append",
        help="extra CA bundle trusted for upstream servers, besides the system roots (repeatable)",
    )
    p.add_argument(
        "--resolve", metavar="HOST:PORT:ADDR", action="append", help="like curl: reach HOST:PORT at ADDR (repeatable)"
    )
    p.add_argument(
        "--connect-to",
        metavar="HOST:PORT:CONNECT_HOST:CONNECT_PORT",
        action="append",
        help="like curl: reach HOST:PORT at CONNECT_HOST:CONNECT_PORT (repeatable)",
    )
    p.add_argument(
        "--transparent-listen",
        metavar="HOST:PORT",
        action="append",
        help=f"also accept connections redirected by the pod's nftables rules here, e.g. 127.0.0.1:{TRANSPARENT_PORT} "
        f"and [::1]:{TRANSPARENT_PORT} (repeatable; default none)",
    )
    p.add_argument(
        "--admin-listen",
        metavar="HOST:PORT",
        help="admin address for /metrics, /healthz, /readyz (default 127.0.0.1:15090)",
    )
    p.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="log level; audit lines are at info (default info)",
    )


def _add_limits(p: argparse.ArgumentParser) -> None:
    """Timeouts and size limits: how long and how much a client or upstream may take."""
    p.add_argument(
        "--header-timeout",
        type=float,
        metavar="SECONDS",
        help="time a client has to finish sending a request head (default 10)",
    )
    p.add_argument(
        "--idle-timeout",
        type=float,
        metavar="SECONDS",
        help="idle keep-alive client connections are closed after this (default 60)",
    )
    p.add_argument(
        "--connect-timeout", type=float, metavar="SECONDS", help="upstream TCP+TLS connect timeout (default 10)"
    )
    p.add_argument(
        "--upstream-timeout",
        type=float,
        metavar="SECONDS",
        help="time to wait for an upstream response head (default 600)",
    )
    p.add_argument(
        "--max-header-size",
        type=int,
        metavar="BYTES",
        help="largest request head accepted; larger gets 431 (default 65536)",
    )
    p.add_argument(
        "--reload-interval",
        type=float,
        metavar="SECONDS",
        help="how often the session file is checked for changes (default 0.5)",
    )


_LIST_SPLIT = {"upstream_ca_file": os.pathsep, "resolve": None, "connect_to": None, "transparent_listen": None}


def _env(dest: str, environ: Mapping[str, str]) -> str | None:
    value = environ.get(ENV_PREFIX + dest.upper())
    return value if value not in (None, "") else None


def load_config(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Parse flags and OSHU_* variables; raises ConfigError with a message naming the problem."""
    env: Mapping[str, str] = os.environ if environ is None else environ
    ns = build_parser().parse_args(argv)
    values = vars(ns)
    for dest in list(values):
        if values[dest] is None:
            raw = _env(dest, env)
            if raw is None:
                continue
            if dest in _LIST_SPLIT:
                values[dest] = [v for v in raw.split(_LIST_SPLIT[dest]) if v.strip()]
            else:
                values[dest] = raw

    def num(dest: str, default: float, kind: Callable[[str], float] = float) -> float:
        raw = values.get(dest)
        if raw is None:
            return default
        try:
            out = kind(str(raw))
        except ValueError:
            raise ConfigError(f"--{dest.replace('_', '-')}: not a number: {raw!r}") from None
        if out <= 0:
            raise ConfigError(f"--{dest.replace('_', '-')}: must be positive")
        return out

    missing = [
        f"--{d.replace('_', '-')} (or {ENV_PREFIX}{d.upper()})"
        for d in ("session_file", "ca_cert", "ca_key")
        if not values.get(d)
    ]
    if missing:
        raise ConfigError("missing required setting(s): " + ", ".join(missing))
    log_level = (values.get("log_level") or "info").lower()
    if log_level not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"--log-level: unknown level {log_level!r}")
    _check_enforcement(values)
    return Config(
        listen=parse_addr(values.get("listen") or "127.0.0.1:15080", "--listen"),
        admin_listen=parse_addr(values.get("admin_listen") or "127.0.0.1:15090", "--admin-listen"),
        session_file=values["session_file"],
        ca_cert=values["ca_cert"],
        ca_key=values["ca_key"],
        upstream_ca_files=tuple(values.get("upstream_ca_file") or ()),
        resolve=tuple(parse_resolve(v) for v in values.get("resolve") or ()),
        connect_to=tuple(parse_connect_to(v) for v in values.get("connect_to") or ()),
        log_level=log_level,
        header_timeout=num("header_timeout", 10.0),
        idle_timeout=num("idle_timeout", 60.0),
        connect_timeout=num("connect_timeout", 10.0),
        upstream_timeout=num("upstream_timeout", 600.0),
        max_header_size=int(num("max_header_size", 65536, int)),
        reload_interval=num("reload_interval", 0.5),
        require_redirect=_truthy(values.get("require_redirect")),
        redirect_canary=parse_addr(
            values.get("redirect_canary") or "{}:{}".format(*REDIRECT_CANARY), "--redirect-canary"
        ),
        transparent_listen=tuple(parse_addr(v, "--transparent-listen") for v in values.get("transparent_listen") or ()),
    )
