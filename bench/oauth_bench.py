"""CPU the sidecar spends per request for OAuth2 and Google service-account secrets, against a
plain static header swap.

Not a test; prints a table and one JSON object.

    .venv/bin/python bench/oauth_bench.py [--n 2000] [--n-exchange 100]

One real sidecar (`python -m oshu_sidecar`) with a session holding a static secret, an oauth2
binding and a gcpServiceAccount binding; every host is pinned to the test kit's TokenServer
(token endpoints and an API that answers 200 only for a live token: the static secret's real
value is made one of its live tokens, so every case gets the same 200 answer). Requests go
sequentially on one keep-alive TLS connection through the proxy; the number is the sidecar
process's CPU time (utime + stime from /proc, 10 ms ticks) divided by the request count.

Cases: the static swap; the oauth2 sealed bearer (the cached access token injected); a minted
sealed Google access token (swapped back); a google-auth self-signed JWT bearer (re-signed once,
then from the cache); and the Google token exchange itself (each assertion unique: an RSA
verify with the throwaway key and an RSA signature with the real one, plus the token endpoint's
own round trip; a client does this once an hour).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlencode

from google.auth import crypt
from google.auth import jwt as gjwt

from oshu_contract.hosts import HostPattern
from oshu_contract.kinds import Kind, service_account_fields
from oshu_contract.pki import new_rsa_key_pem, rsa_public_pem
from oshu_contract.session import new_kind_binding, new_sealed_token
from oshu_testkit.oauth_standins import API_HOST, AUTH_HOST, GOOGLE_TOKEN_HOST, VERTEX_HOST, TokenServer
from oshu_testkit.sessions import new_secret, new_session
from oshu_testkit.sidecar_process import SidecarProcess

STATIC = "static.oshu.test"
EMAIL = "bench@oshu-test.iam.gserviceaccount.com"
Request = tuple[str, str, list[tuple[str, str]], bytes]  # method, target, headers, body


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Client:
    """One keep-alive TLS connection through the sidecar to `host`."""

    def __init__(self, sc: SidecarProcess, host: str) -> None:
        assert sc.listen is not None
        ctx = ssl.create_default_context(cafile=str(sc.ca_cert_file))
        self.conn = http.client.HTTPSConnection(sc.listen[0], sc.listen[1], context=ctx, timeout=60)
        self.conn.set_tunnel(host, 443)
        self.host = host

    def send(self, req: Request) -> tuple[int, bytes]:
        method, target, headers, body = req
        self.conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        for k, v in [("Host", self.host), *headers, ("Content-Length", str(len(body)))]:
            self.conn.putheader(k, v)
        self.conn.endheaders(body)
        r = self.conn.getresponse()
        return r.status, r.read()


def run_case(sc: SidecarProcess, host: str, make: Callable[[int], Request], n: int) -> float:
    """The sidecar's CPU seconds per request over `n` requests (one warm-up first)."""
    assert sc.proc is not None
    client = Client(sc, host)
    status, body = client.send(make(-1))
    if status != 200:
        raise SystemExit(f"warm-up to {host}: {status} {body[:200]!r}")
    reqs = [make(i) for i in range(n)]
    t0 = _cpu(sc.proc.pid)
    for req in reqs:
        status, body = client.send(req)
        if status != 200:
            raise SystemExit(f"{req[0]} {host}{req[1]}: {status} {body[:200]!r}")
    used = _cpu(sc.proc.pid) - t0
    client.conn.close()
    return used / n


def _assertion(signer: crypt.RSASigner, i: int) -> bytes:
    now = int(time.time())
    claims = {
        "iss": EMAIL,
        "aud": "https://oauth2.googleapis.com/token",
        "iat": now,
        "exp": now + 3600,
        "scope": f"s{i}",
    }
    return gjwt.encode(signer, claims)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000, help="requests per cheap case")
    ap.add_argument("--n-exchange", type=int, default=100, help="Google token exchanges")
    args = ap.parse_args()
    real, throwaway = new_rsa_key_pem(), new_rsa_key_pem()
    real_kid = "bench-real-key-id-0123456789"
    with TokenServer(names=(AUTH_HOST, API_HOST, GOOGLE_TOKEN_HOST, VERTEX_HOST, STATIC), lifetime=3600) as ts:
        ts.google_public_pem, ts.google_kid, ts.google_email = rsa_public_pem(real), real_kid, EMAIL
        static = new_secret("STATIC_KEY", [STATIC], value=ts.issue())
        oauth = new_kind_binding(
            "API_TOKEN",
            Kind.OAUTH2,
            new_sealed_token(),
            [HostPattern.parse(API_HOST)],
            {
                "tokenUrl": f"https://{AUTH_HOST}/oauth/token",
                "clientId": ts.client_id,
                "clientSecret": ts.client_secret,
            },
        )
        doc = {"private_key": real.decode(), "private_key_id": real_kid, "client_email": EMAIL}
        gcp_fields = service_account_fields(doc, rsa_public_pem(throwaway).decode())
        gcp = new_kind_binding("GOOGLE_SA", Kind.GCP, new_sealed_token(), [HostPattern.parse(VERTEX_HOST)], gcp_fields)
        signer = crypt.RSASigner.from_string(throwaway.decode(), key_id=gcp.sealed)
        sc = SidecarProcess(new_session(static, oauth, gcp), connect_to=ts.connect_to(), upstream_ca_files=[ts.ca_file])
        results: dict[str, float] = {}
        with sc:
            form = {"Content-Type": "application/x-www-form-urlencoded"}

            def exchange(i: int) -> Request:
                body = urlencode(
                    {
                        "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
                        "assertion": _assertion(signer, i).decode(),
                    }
                ).encode()
                return ("POST", "/token", list(form.items()), body)

            status, body = Client(sc, GOOGLE_TOKEN_HOST).send(exchange(-2))
            minted = json.loads(body)["access_token"]
            assert status == 200 and minted.startswith("SEALED_"), body
            self_signed = gjwt.encode(
                signer,
                {
                    "iss": EMAIL,
                    "sub": EMAIL,
                    "aud": "https://aiplatform.googleapis.com/",
                    "iat": int(time.time()),
                    "exp": int(time.time()) + 3600,
                },
            ).decode()

            def bearer(token: str) -> Callable[[int], Request]:
                return lambda i: ("GET", f"/v1/whoami?i={i}", [("Authorization", f"Bearer {token}")], b"")

            cheap = {
                "static header swap": (STATIC, bearer(static.sealed)),
                "oauth2 sealed bearer (cached access token)": (API_HOST, bearer(oauth.sealed)),
                "google minted sealed access token": (VERTEX_HOST, bearer(minted)),
                "google self-signed JWT bearer (cached re-sign)": (VERTEX_HOST, bearer(self_signed)),
            }
            for name, (host, make) in cheap.items():
                results[name] = run_case(sc, host, make, args.n)
            results["google token exchange (RSA verify + sign)"] = run_case(
                sc, GOOGLE_TOKEN_HOST, exchange, args.n_exchange
            )
    base = results["static header swap"]
    print(f"{'case':50} {'CPU/request':>12} {'vs swap':>8}")
    for name, cpu in results.items():
        print(f"{name:50} {cpu * 1e6:9.0f} us {cpu / base:7.2f}x")
    print(json.dumps({"cpu_us_per_request": {k: round(v * 1e6, 1) for k, v in results.items()}, "n": args.n}))


if __name__ == "__main__":
    main()
