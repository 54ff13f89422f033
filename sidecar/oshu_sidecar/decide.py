"""Every security decision about a request, as side-effect-free functions.

`decide(head, policy, facts)` takes a parsed request head, the session policy chosen for
the connection and what the connection itself establishes (intercepted or plain, the
CONNECT target, whether the TLS SNI agreed) and returns a `Decision`: either a refusal
(`ProxyError`, with whether the connection must close) or the rewrite plan for the
upstream head (edits for `http1.edit_head`, the secrets substituted, the body
substitutions). `decide_connect` does the same for a CONNECT. No I/O, no clock other than
the policy's expiry check: tested table-driven without sockets (tests/sidecar/test_decide.py).
"""

from __future__ import annotations

import functools
import re

from oshu_contract.hosts import HostPatternError, is_ip, normalize_host, split_host_port

from .credentials import Claim, claim
from .errors import ProxyError, bad_request
from .http1 import NO_BODY, Edit, RequestHead
from .policy import SEALED_MARK, HostPlan, Policy, Substitution, egress_refusal, plaintext_refusal
from .substitute import substitute_head, substitute_query, tokens_in_request

_HOSTNAME_RE = re.compile(r"[a-z0-9_](?:[a-z0-9_.-]{0,251}[a-z0-9_])?")
_ACCEPT_IDENTITY = b"Accept-Encoding: identity\r\n"
_WS_UPGRADE = b"Connection: Upgrade\r\nUpgrade: websocket\r\n"


class Facts:
    """What the connection establishes before any request: plain proxy port, or an intercepted
    CONNECT to host:port whose client TLS SNI did (`sni_ok`) or did not name the same host."""

    __slots__ = ("host", "port", "sni_ok", "tls")

    def __init__(self, tls: bool, host: str = "", port: int = 0, sni_ok: bool = True) -> None:
        self.tls = tls
        self.host = host
        self.port = port
        self.sni_ok = sni_ok


class Decision:
    """The outcome for one request: `refusal` set, or the plan to rewrite and forward it."""

    __slots__ = (
        "audit_path",
        "body_subs",
        "claim",
        "close",
        "edits",
        "extra",
        "extra_tail",
        "host",
        "inactive",
        "path",
        "plan",
        "port",
        "refusal",
        "routed",
        "secrets",
    )

    def __init__(self, head: RequestHead) -> None:
        self.host = ""
        self.port = 0
        self.path = head.target  # origin-form target sent upstream (query substituted); the raw target until checked
        self.audit_path = head.target  # the same before substitution (the audit line drops query values anyway)
        self.plan: HostPlan | None = None
        self.refusal: ProxyError | None = None
        self.close = False  # the refusal ends the connection whatever the framing
        self.routed = True  # False: no host could be told (plain proxy request): refuse the connection
        self.edits: list[Edit] = []  # head edits except framing (Content-Length / Transfer-Encoding)
        self.extra = b""  # field lines appended to the upstream head before the framing ones (Host)...
        self.extra_tail = b""  # ...and after them (Accept-Encoding, the WebSocket upgrade)
        self.secrets: list[str] = []  # names of the secrets substituted (head, query; body adds later)
        self.body_subs: tuple[Substitution, ...] = ()
        self.claim: Claim | None = None  # a credential handler took the request (credentials.py)
        self.inactive: ProxyError | None = None  # why body substitution is off although the host allows it

    def refuse(self, error: ProxyError, close: bool = False) -> Decision:
        self.refusal = error
        self.close = close
        return self


def decide(head: RequestHead, policy: Policy, facts: Facts) -> Decision:
    """Refusal or rewrite plan for one request on a connection with `facts`, under `policy`."""
    d = Decision(head)
    if not _route(d, head, policy, facts):
        return d
    plan = d.plan
    assert plan is not None
    if not plan.egress_allowed:
        return d.refuse(egress_refusal(d.host, d.port))
    if SEALED_MARK in head.raw or head.authorization is not None:
        carried = tokens_in_request(policy, head.raw, head.authorization)
        if carried:
            if not facts.tls:
                return d.refuse(plaintext_refusal(carried))
            inactive = policy.inactive()
            if inactive is not None:
                return d.refuse(inactive)
            if plan.header_subs:
                d.edits = substitute_head(head.raw, head.line_end + 2, head.authorization, plan.header_subs, d.secrets)
            if plan.query_subs:
                d.path = substitute_query(d.path, plan.query_subs, d.secrets)
    if facts.tls and plan.credentials:
        try:
            d.claim = claim(plan.credentials, head, d.host, d.port, d.audit_path)
        except ProxyError as e:
            return d.refuse(e)
        if d.claim is not None:
            inactive = policy.inactive()
            if inactive is not None:
                return d.refuse(inactive)
    if facts.tls and plan.body_subs and d.claim is None:  # (a handler's body is its own: no static body swap)
        d.inactive = policy.inactive()
        if d.inactive is None:
            d.body_subs = plan.body_subs
    _head_edits(d, head, facts)
    return d


def _route(d: Decision, head: RequestHead, policy: Policy, facts: Facts) -> bool:
    """Host, port, plan and origin-form path of the request, or a refusal on `d` (False)."""
    if not facts.tls:
        if facts.port:  # plain HTTP redirected to the transparent listener
            return _route_transparent(d, head, policy, facts.port)
        parts = split_absolute(head.target, b"http")
        if parts is None:
            d.routed = False
            d.refuse(
                ProxyError(
                    "not_a_proxy_request", "this is a forward proxy: send CONNECT host:port or an absolute http:// URL"
                ),
                True,
            )
            return False
        try:
            d.host, d.port = parse_authority(parts[0], 80)
        except ProxyError as e:
            d.routed = False
            d.refuse(e, True)
            return False
        d.path = d.audit_path = parts[1]
        d.plan = policy.plan(d.host, d.port)
        return True
    d.host, d.port = facts.host, facts.port
    d.plan = policy.plan(d.host, d.port)
    checked = check_authority(head, facts)
    if isinstance(checked, ProxyError):
        d.refuse(checked)
        return False
    d.path = d.audit_path = checked
    if head.method == b"CONNECT":
        d.refuse(bad_request("CONNECT inside an intercepted connection"), True)
        return False
    return True


def _route_transparent(d: Decision, head: RequestHead, policy: Policy, port: int) -> bool:
    """Plain HTTP a redirect rule sent to the transparent listener, routed as an absolute-form request
    would be: the Host header names the host, the original destination's port is the port (a Host
    or absolute URL naming another port is refused, as is CONNECT: this is not a proxy port)."""
    d.routed = False
    if head.method == b"CONNECT":
        d.refuse(bad_request("CONNECT on a redirected connection: this is not a proxy port"), True)
        return False
    if head.host is None:
        d.refuse(bad_request("missing Host header"), True)
        return False
    try:
        host, host_port = parse_authority(head.host, port)
        path = head.target
        if path[:1] != b"/" and not (path == b"*" and head.method == b"OPTIONS"):
            parts = split_absolute(path, b"http")
            if parts is None:
                raise bad_request("request target must be origin-form or an http:// URL")
            if parse_authority(parts[0], 80) != (host, host_port):
                raise ProxyError("host_mismatch", "request URL and Host header name different hosts")
            path = parts[1]
    except ProxyError as e:
        d.refuse(e, True)
        return False
    d.routed = True
    d.host, d.port, d.path, d.audit_path = host, port, path, path
    d.plan = policy.plan(host, port)
    if host_port != port:
        d.refuse(ProxyError("host_mismatch", f"Host header names port {host_port}, the connection port {port}"), True)
        return False
    return True


def check_authority(head: RequestHead, facts: Facts) -> bytes | ProxyError:
    """The origin-form path if CONNECT target, SNI and Host agree; otherwise why not."""
    host, port = facts.host, facts.port
    path = head.target
    try:
        if path[:1] != b"/":
            parts = split_absolute(path, b"https")
            if parts is None:
                if path != b"*" or head.method != b"OPTIONS":
                    return bad_request("request target must be origin-form or an https:// URL")
                parts = (head.host or b"", b"*")
            if parse_authority(parts[0], 443) != (host, port):
                return _mismatch(host, port, "request URL")
            path = parts[1]
        if head.host is None:
            return bad_request("missing Host header")
        if parse_authority(head.host, 443) != (host, port):
            return _mismatch(host, port, "Host header")
    except ProxyError as e:
        return e
    if not facts.sni_ok:
        return _mismatch(host, port, "TLS SNI")
    return path


def _head_edits(d: Decision, head: RequestHead, facts: Facts) -> None:
    """Edits of the upstream head other than framing: hop-by-hop dropped, origin-form, Host, identity."""
    edits = d.edits
    for start, end in head.drop:
        edits.append((start, end, b""))
    if not facts.tls or d.path is not head.target or head.version != b"HTTP/1.1":
        edits.append((0, head.line_end, head.method + b" " + d.path + b" HTTP/1.1"))
    tail = b""
    if not facts.tls:  # Host comes from the absolute URL
        edits.extend((start, end, b"") for start, end in head.host_spans)
        d.extra = b"Host: " + display(d.host, d.port, 80).encode() + b"\r\n"
    else:
        # Every response from an intercepted host must arrive uncompressed to be scrubbable: not
        # only those to requests that carried a key (a streamed body is substituted after the head
        # is sent, and a key an upstream stored earlier can be asked for without any token).
        edits.extend((start, end, b"") for start, end in head.accept_encoding)
        tail = _ACCEPT_IDENTITY
    if head.websocket:
        tail += _WS_UPGRADE
    d.extra_tail = tail


def body_refusal(d: Decision, policy: Policy, body: bytes) -> ProxyError | None:
    """A buffered body carrying sealed tokens while the session is not live is refused."""
    if d.inactive is not None and policy.tokens_in(body):
        return d.inactive
    return None


def refusal_closes(head: RequestHead, d: Decision) -> bool:
    """Whether answering a refusal must end the connection: only when framing could fall out of step."""
    return d.close or not head.keep_alive or head.framing != NO_BODY or head.websocket


def decide_connect(target: bytes, policy: Policy) -> tuple[str, int, HostPlan, ProxyError | None]:
    """host, port and plan of a CONNECT (intercept or blind tunnel) and why it is refused, if it is.

    Raises ProxyError when the target is unusable (no host to account the refusal to).
    """
    host, port = parse_authority(target, None)
    plan = policy.plan(host, port)
    return host, port, plan, None if plan.egress_allowed else egress_refusal(host, port)


def sni_matches(sni: str | None, host: str) -> bool:
    """A client that sends no SNI is only accepted for an IP-address target."""
    if sni is None:
        return is_ip(host)
    return normalize_host(sni) == host


@functools.lru_cache(maxsize=1024)
def parse_authority(text: bytes, default_port: int | None) -> tuple[str, int]:
    """host[:port] from a request target or Host field; ProxyError(400) if unusable."""
    try:
        value = text.decode("ascii")
    except UnicodeDecodeError:
        raise bad_request("non-ASCII authority") from None
    if "@" in value:
        raise bad_request("user information in the authority is not accepted")
    try:
        host, port = split_host_port(value, default_port=default_port if default_port is not None else -1)
    except HostPatternError as e:
        raise bad_request(f"invalid authority: {e}") from None
    if port < 0:
        raise bad_request("CONNECT target must be host:port")
    if not _HOSTNAME_RE.fullmatch(host) and not is_ip(host):
        raise bad_request("invalid host name")
    return host, port


def split_absolute(target: bytes, scheme: bytes) -> tuple[bytes, bytes] | None:
    """(authority, origin-form path) of an absolute-form target with `scheme`, else None."""
    prefix = scheme + b"://"
    if target[: len(prefix)].lower() != prefix:
        return None
    rest = target[len(prefix) :]
    cut = len(rest)
    for sep in (b"/", b"?", b"#"):
        i = rest.find(sep)
        if 0 <= i < cut:
            cut = i
    authority, path = rest[:cut], rest[cut:]
    if path.startswith(b"?"):
        path = b"/" + path
    path = path.split(b"#", 1)[0] or b"/"
    return authority, path


@functools.lru_cache(maxsize=1024)
def display(host: str, port: int, default: int) -> str:
    h = f"[{host}]" if ":" in host else host
    return h if port == default else f"{h}:{port}"


def _mismatch(host: str, port: int, what: str) -> ProxyError:
    return ProxyError(
        "host_mismatch",
        f"{what} does not name {display(host, port, 443)}: the CONNECT target, TLS SNI and Host "
        "header must all name the same host",
    )
