"""Run one request with a stock Python HTTP client configured only by the environment.

Usage: python pyclient.py CLIENT URL [METHOD] [HEADERS_JSON] [BODY]
CLIENT is requests, httpx or aiohttp. Proxy and CA come from HTTPS_PROXY/HTTP_PROXY and
SSL_CERT_FILE/REQUESTS_CA_BUNDLE exactly as a user's environment would provide them; this
script knows nothing about the proxy. Prints {"status", "headers", "body"} as JSON.
"""

import asyncio
import json
import sys


def main() -> None:
    client, url = sys.argv[1], sys.argv[2]
    method = sys.argv[3] if len(sys.argv) > 3 else "GET"
    headers = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
    body = sys.argv[5].encode() if len(sys.argv) > 5 else None
    if client == "requests":
        import requests

        r = requests.request(method, url, headers=headers, data=body, allow_redirects=False, timeout=20)
        out = {"status": r.status_code, "headers": dict(r.headers), "body": r.text}
    elif client == "httpx":
        import httpx

        with httpx.Client(trust_env=True, timeout=20, follow_redirects=False) as c:
            resp = c.request(method, url, headers=headers, content=body)
            out = {"status": resp.status_code, "headers": dict(resp.headers), "body": resp.text}
    elif client == "aiohttp":
        import aiohttp

        async def go() -> dict:
            timeout = aiohttp.ClientTimeout(total=20)
            async with (
                aiohttp.ClientSession(trust_env=True, timeout=timeout) as s,
                s.request(method, url, headers=headers, data=body, allow_redirects=False) as r,
            ):
                return {"status": r.status, "headers": dict(r.headers), "body": await r.text()}

        out = asyncio.run(go())
    else:
        raise SystemExit(f"unknown client {client}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
