"""AWS Signature Version 4, as pure functions: parse a signed request, verify it, sign it again.

The agent signs with sealed credentials (a sealed access key id and a sealed secret); the
proxy checks that signature with the sealed secret and signs the request once more with the
real key. Both computations run over the request as it is on the wire, exactly as the AWS
service canonicalizes it: S3 takes the path as sent, every other service normalizes the path
and percent-encodes it once more; the query is decoded and re-encoded (RFC 3986 unreserved
characters kept). No I/O and no clock: callers pass `now` (tests/sidecar/test_sigv4.py checks
every form against botocore's own signers).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from urllib.parse import quote, unquote

from .errors import ProxyError

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
STREAMING_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
#: Payload hash values that are not a hash of the body (the body is not buffered for them).
UNHASHED_PAYLOADS = frozenset({UNSIGNED_PAYLOAD, STREAMING_UNSIGNED_TRAILER})
STREAMING_PAYLOADS = frozenset({STREAMING_SIGNED, STREAMING_SIGNED_TRAILER})
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
#: How far X-Amz-Date may be from the proxy's clock (AWS allows the same 15 minutes).
DATE_WINDOW = 15 * 60
#: Longest validity AWS accepts for a presigned URL (7 days).
MAX_EXPIRES = 7 * 24 * 3600
_AMZ_DATE_RE = re.compile(r"[0-9]{8}T[0-9]{6}Z")
_EXPIRES_RE = re.compile(r"[0-9]{1,6}")  # ASCII digits only (str.isdigit takes "²", int() does not)
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True, slots=True)
class Credentials:
    """One access key: what signs (the sealed set for verification, the real set for re-signing)."""

    access_key_id: str
    secret: str = ""
    token: str | None = None

    def __repr__(self) -> str:  # never the secret or the token, even in a traceback
        return f"Credentials(access_key_id={self.access_key_id[:4]}...)"


@dataclass(frozen=True, slots=True)
class Signature:
    """The signature a request carries, from its Authorization header or its presigned query."""

    presigned: bool
    access_key_id: str
    date: str  # YYYYMMDD of the credential scope
    region: str
    service: str
    amz_date: str  # YYYYMMDDTHHMMSSZ
    signed_headers: tuple[str, ...]
    signature: str
    expires: int = 0  # presigned only: X-Amz-Expires seconds
    token: str | None = None  # X-Amz-Security-Token (header or query)

    @property
    def scope(self) -> str:
        return f"{self.date}/{self.region}/{self.service}/aws4_request"


def sigv4_error(code: str, message: str) -> ProxyError:
    return ProxyError(code, f"AWS SigV4: {message}")


def invalid(message: str) -> ProxyError:
    return sigv4_error("signature_invalid", message)


# -- reading a request ----------------------------------------------------------------------
Index = dict[str, list[str]]


def index(headers: list[tuple[str, str]]) -> Index:
    """Lower-case field name -> its values in order (built once per request, looked up many times)."""
    out: Index = {}
    for n, v in headers:
        out.setdefault(n.lower(), []).append(v)
    return out


def header(headers: list[tuple[str, str]] | Index, name: str) -> str | None:
    """The one value of field `name` (lower-case), None if absent; more than one is refused."""
    idx = headers if isinstance(headers, dict) else index(headers)
    values = idx.get(name, ())
    if len(values) > 1:
        raise invalid(f"more than one {name} header")
    return values[0] if values else None


def parse_query(query: str) -> list[tuple[str, str]]:
    """(name, value) pairs of a raw query string, percent-decoded (`+` stays a plus, as AWS reads it)."""
    if not query:
        return []
    pairs = []
    for part in query.split("&"):
        name, _, value = part.partition("=")
        pairs.append((unquote(name), unquote(value)))
    return pairs


def parse_signature(headers: list[tuple[str, str]], query: str) -> Signature | None:
    """The SigV4 signature the request carries, None if it carries none; ProxyError if malformed."""
    idx = index(headers)
    auth = header(idx, "authorization")
    pairs = parse_query(query)
    names = {n for n, _ in pairs}
    if "X-Amz-Signature" in names or "X-Amz-Credential" in names:
        if auth is not None:
            raise invalid("both an Authorization header and a presigned query")
        return _presigned(pairs)
    if auth is None:
        if "AWSAccessKeyId" in names and "Signature" in names:
            raise invalid("signature version 2 presigned URLs are not accepted; presign with SigV4 (s3v4)")
        return None
    if not auth.startswith(ALGORITHM + " "):
        if auth[:4].upper() == "AWS " or auth.upper().startswith("AWS4-"):
            raise invalid("only AWS4-HMAC-SHA256 signatures are accepted")
        return None  # another scheme altogether (a Bearer token...): not SigV4
    parts = {}
    for item in auth[len(ALGORITHM) + 1 :].split(","):
        key, sep, value = item.strip().partition("=")
        if not sep or key in parts:
            raise invalid("malformed Authorization header")
        parts[key] = value
    if set(parts) != {"Credential", "SignedHeaders", "Signature"}:
        raise invalid("Authorization header needs exactly Credential, SignedHeaders and Signature")
    amz_date = header(idx, "x-amz-date")
    if amz_date is None:
        raise invalid("X-Amz-Date header missing (a Date header alone is not accepted)")
    auth_parts = (parts["Credential"], parts["SignedHeaders"], parts["Signature"])
    return _signature(False, auth_parts, amz_date, 0, header(idx, "x-amz-security-token"))


def _presigned(pairs: list[tuple[str, str]]) -> Signature:
    q: dict[str, str] = {}
    for name, value in pairs:
        if name.startswith("X-Amz-"):
            if name in q:
                raise invalid(f"{name} more than once in the query")
            q[name] = value
    if q.get("X-Amz-Algorithm") != ALGORITHM:
        raise invalid("presigned URL needs X-Amz-Algorithm=AWS4-HMAC-SHA256")
    missing = [k for k in ("X-Amz-Credential", "X-Amz-Date", "X-Amz-SignedHeaders", "X-Amz-Signature") if k not in q]
    if missing:
        raise invalid(f"presigned URL lacks {', '.join(missing)}")
    expires_text = q.get("X-Amz-Expires", "")
    if not _EXPIRES_RE.fullmatch(expires_text) or not 1 <= int(expires_text) <= MAX_EXPIRES:
        raise invalid("presigned URL needs X-Amz-Expires between 1 and 604800")
    auth_parts = (q["X-Amz-Credential"], q["X-Amz-SignedHeaders"], q["X-Amz-Signature"])
    return _signature(True, auth_parts, q["X-Amz-Date"], int(expires_text), q.get("X-Amz-Security-Token"))


def _signature(
    presigned: bool, auth_parts: tuple[str, str, str], amz_date: str, expires: int, token: str | None
) -> Signature:
    """The checked signature from (Credential, SignedHeaders, Signature) and the date fields."""
    credential, signed, signature = auth_parts
    scope = credential.split("/")
    if len(scope) != 5 or scope[4] != "aws4_request" or not all(scope):
        raise invalid("credential must be ACCESS_KEY_ID/YYYYMMDD/region/service/aws4_request")
    if len(signature) != 64 or not set(signature) <= _HEX:
        raise invalid("signature must be 64 lower-case hex digits")
    names = tuple(signed.split(";"))
    if not signed or list(names) != sorted(set(names)) or any(n != n.lower() or not n for n in names):
        raise invalid("SignedHeaders must be sorted, distinct, lower-case names")
    if "host" not in names:
        raise invalid("the host header must be signed")
    parse_amz_date(amz_date)
    if amz_date[:8] != scope[1]:
        raise invalid("credential scope date differs from X-Amz-Date")
    return Signature(presigned, scope[0], scope[1], scope[2], scope[3], amz_date, names, signature, expires, token)


def parse_amz_date(amz_date: str) -> float:
    """Seconds since the epoch of a YYYYMMDDTHHMMSSZ stamp (strptime is ten times slower)."""
    if not _AMZ_DATE_RE.fullmatch(amz_date):
        raise invalid("X-Amz-Date must be YYYYMMDDTHHMMSSZ")
    try:
        when = datetime(int(amz_date[:4]), int(amz_date[4:6]), int(amz_date[6:8]), tzinfo=UTC)
    except ValueError:
        raise invalid("X-Amz-Date is not a calendar date") from None
    h, m, sec = int(amz_date[9:11]), int(amz_date[11:13]), int(amz_date[13:15])
    if h > 23 or m > 59 or sec > 59:
        raise invalid("X-Amz-Date is not a time of day")
    return when.timestamp() + h * 3600 + m * 60 + sec


def check_date(sig: Signature, now: float) -> None:
    """Raises signature_expired unless the request is inside its validity window at `now`."""
    at = parse_amz_date(sig.amz_date)
    if at - now > DATE_WINDOW:
        raise sigv4_error("signature_expired", f"X-Amz-Date {sig.amz_date} is more than 15 minutes in the future")
    if sig.presigned:
        if now > at + sig.expires:
            raise sigv4_error(
                "signature_expired", f"presigned URL expired (X-Amz-Date {sig.amz_date} + {sig.expires} s)"
            )
    elif now - at > DATE_WINDOW:
        raise sigv4_error("signature_expired", f"X-Amz-Date {sig.amz_date} is more than 15 minutes old")


# -- canonical request -----------------------------------------------------------------------
def canonical_uri(path: str, service: str) -> str:
    """The path as the service canonicalizes it: S3 as sent, others normalized and encoded again."""
    if service == "s3":
        return path or "/"
    return quote(remove_dot_segments(path) if path else "/", safe="/~")


def remove_dot_segments(path: str) -> str:
    """RFC 3986 5.2.4 plus the empty segments AWS drops (botocore's normalize_url_path)."""
    out: list[str] = []
    for seg in path.split("/"):
        if seg == "..":
            if out:
                out.pop()
        elif seg and seg != ".":
            out.append(seg)
    first = "/" if path.startswith("/") else ""
    last = "/" if path.endswith("/") and out else ""
    return first + "/".join(out) + last


def canonical_query(pairs: list[tuple[str, str]]) -> str:
    """Sorted, RFC 3986-encoded name=value pairs (X-Amz-Signature excluded)."""
    encoded = sorted((quote(n, safe="-_.~"), quote(v, safe="-_.~")) for n, v in pairs if n != "X-Amz-Signature")
    return "&".join(f"{n}={v}" for n, v in encoded)


def canonical_headers(headers: list[tuple[str, str]], signed: tuple[str, ...]) -> str:
    idx = index(headers)
    lines = []
    for name in signed:
        values = idx.get(name)
        if not values:
            raise invalid(f"signed header {name} is not in the request")
        lines.append(name + ":" + ",".join(" ".join(v.split()) for v in values))
    return "\n".join(lines) + "\n"


def canonical_request(
    method: str,
    path: str,
    pairs: list[tuple[str, str]],
    headers: list[tuple[str, str]],
    sig: Signature,
    payload_hash: str,
) -> str:
    return "\n".join(
        (
            method,
            canonical_uri(path, sig.service),
            canonical_query(pairs),
            canonical_headers(headers, sig.signed_headers),
            ";".join(sig.signed_headers),
            payload_hash,
        )
    )


def string_to_sign(sig: Signature, creq: str) -> str:
    return "\n".join((ALGORITHM, sig.amz_date, sig.scope, hashlib.sha256(creq.encode()).hexdigest()))


# -- keys and signatures ---------------------------------------------------------------------------
@functools.lru_cache(maxsize=64)
def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    """kSigning for one day/region/service (cached: the chain is four HMACs)."""
    k = hmac.new(("AWS4" + secret).encode(), date.encode(), hashlib.sha256).digest()
    for part in (region, service, "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    return k


def sign(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


# -- a request: verify, then sign again --------------------------------------------------------------
@dataclass(slots=True)
class Wire:
    """A request as it is on the wire: method, raw path, raw query and header fields in order."""

    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]

    @classmethod
    def of(cls, method: str, target: str, headers: list[tuple[str, str]]) -> Wire:
        path, _, query = target.partition("?")
        return cls(method, path, query, headers)

    @property
    def target(self) -> str:
        return self.path + ("?" + self.query if self.query else "")


def declared_payload(wire: Wire, sig: Signature) -> str | None:
    """The payload hash the request names (x-amz-content-sha256; UNSIGNED-PAYLOAD for an S3 presigned
    URL); None when it names none and the hash is that of the body (a service other than S3)."""
    declared = header(wire.headers, "x-amz-content-sha256")
    if sig.presigned and sig.service == "s3":
        return declared or UNSIGNED_PAYLOAD
    known = declared is None or declared in UNHASHED_PAYLOADS or declared in STREAMING_PAYLOADS
    if not known and (len(declared or "") != 64 or not set(declared or "") <= _HEX):
        raise invalid("x-amz-content-sha256 must be a lower-case hex SHA-256 or a known keyword")
    return declared


def signature_of(wire: Wire, sig: Signature, creds: Credentials, payload_hash: str) -> str:
    """The signature `creds` give `wire` under the scope, date and signed headers of `sig`."""
    creq = canonical_request(wire.method, wire.path, parse_query(wire.query), wire.headers, sig, payload_hash)
    key = signing_key(creds.secret, sig.date, sig.region, sig.service)
    return sign(key, string_to_sign(sig, creq))


def verify(wire: Wire, sig: Signature, sealed: Credentials, payload_hash: str) -> None:
    """Raises signature_invalid unless `sig` is what the sealed credentials give this request."""
    if not same(sig.access_key_id, sealed.access_key_id):
        raise invalid("the request is not signed with this session's access key id")
    if (sig.token is None) != (sealed.token is None) or (
        sig.token is not None and sealed.token is not None and not same(sig.token, sealed.token)
    ):
        raise invalid("the session token is not this session's")
    if not same(signature_of(wire, sig, sealed, payload_hash), sig.signature):
        raise invalid("signature does not match (signed with another secret, or the request was altered)")


def resign_headers(wire: Wire, sig: Signature, real: Credentials, payload_hash: str) -> tuple[Signature, str]:
    """(signature, Authorization value) of `wire` (the head as forwarded, real token in place) under
    the real key; signed headers the proxy dropped (hop-by-hop) are left out of the list."""
    present = {n.lower() for n, _ in wire.headers}
    signed = tuple(n for n in sig.signed_headers if n in present)
    new = Signature(
        False, real.access_key_id, sig.date, sig.region, sig.service, sig.amz_date, signed, "", 0, real.token
    )
    value = signature_of(wire, new, real, payload_hash)
    auth = (
        f"{ALGORITHM} Credential={real.access_key_id}/{new.scope}, SignedHeaders={';'.join(signed)}, Signature={value}"
    )
    return replace(new, signature=value), auth


def resign_query(wire: Wire, sig: Signature, real: Credentials, payload_hash: str) -> str:
    """The presigned query of `wire` with the real credential, token and a new signature."""
    present = {n.lower() for n, _ in wire.headers}
    signed = tuple(n for n in sig.signed_headers if n in present)
    new = Signature(
        True, real.access_key_id, sig.date, sig.region, sig.service, sig.amz_date, signed, "", sig.expires, real.token
    )
    swap = {
        "X-Amz-Credential": f"{real.access_key_id}/{new.scope}",
        "X-Amz-SignedHeaders": ";".join(signed),
    }
    if real.token is not None:
        swap["X-Amz-Security-Token"] = real.token
    parts = []
    for part in wire.query.split("&") if wire.query else []:
        name = unquote(part.partition("=")[0])
        if name == "X-Amz-Signature":
            continue
        parts.append(f"{name}={quote(swap[name], safe='-_.~')}" if name in swap else part)
    query = "&".join(parts)
    value = signature_of(Wire(wire.method, wire.path, query, wire.headers), new, real, payload_hash)
    return query + "&X-Amz-Signature=" + value
