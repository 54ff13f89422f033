"""The sidecar's readiness under --require-redirect, in-process against local listeners (no namespace):
the canary probe (bounded, cached), /readyz's answer, the flags."""

from __future__ import annotations

import asyncio
import json

import pytest

from oshu_sidecar.admin import REDIRECT_BANNER, AdminApp, RedirectCheck, probe_canary
from oshu_sidecar.config import ConfigError, load_config
from oshu_sidecar.metrics import Metrics
from oshu_sidecar.transparent import CANARY_BANNER

REQUIRED = ["--session-file", "s.json", "--ca-cert", "c.pem", "--ca-key", "k.pem"]
TRANSPARENT = ["--transparent-listen", "127.0.0.1:15001"]


def test_the_banner_is_the_transparent_listeners() -> None:
    assert REDIRECT_BANNER == CANARY_BANNER == b"OSHU-VAULT-REDIRECT-OK\n"


def test_flags_and_environment() -> None:
    cfg = load_config(REQUIRED, environ={})
    assert (cfg.require_redirect, cfg.redirect_canary) == (False, ("127.86.86.1", 9))
    cfg = load_config(
        [*REQUIRED, *TRANSPARENT, "--require-redirect", "--redirect-canary", "[2001:db8::9]:19"], environ={}
    )
    assert (cfg.require_redirect, cfg.redirect_canary) == (True, ("2001:db8::9", 19))
    env = {"OSHU_REQUIRE_REDIRECT": "true", "OSHU_REDIRECT_CANARY": "192.0.2.7:7"}
    cfg = load_config([*REQUIRED, *TRANSPARENT], environ=env)
    assert (cfg.require_redirect, cfg.redirect_canary) == (True, ("192.0.2.7", 7))
    with pytest.raises(ConfigError, match="--require-redirect needs --transparent-listen"):
        load_config(REQUIRED, environ=env)
    assert load_config(REQUIRED, environ={"OSHU_REQUIRE_REDIRECT": "0"}).require_redirect is False
    with pytest.raises(ConfigError, match="--redirect-canary"):
        load_config([*REQUIRED, "--redirect-canary", "192.0.2.1"], environ={})


async def _server(answer: bytes | None, delay: float = 0.0) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(delay)
        if answer is not None:
            writer.write(answer)
            await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def _addr(server: asyncio.Server) -> tuple[str, int]:
    host, port = server.sockets[0].getsockname()[:2]
    return host, port


async def test_probe_needs_the_banner_within_the_bound() -> None:
    good, wrong, silent, slow = (
        await _server(REDIRECT_BANNER),
        await _server(b"HTTP/1.1 400 Bad Request\r\n\r\n"),
        await _server(None),
        await _server(REDIRECT_BANNER, delay=5),
    )
    try:
        assert await probe_canary(_addr(good), 1.0) is True
        assert await probe_canary(_addr(wrong), 1.0) is False
        assert await probe_canary(_addr(silent), 1.0) is False
        assert await probe_canary(_addr(slow), 0.2) is False  # bounded: no answer in time is a failure
        closed = _addr(silent)
        silent.close()
        await silent.wait_closed()
        assert await probe_canary(closed, 1.0) is False
    finally:
        for s in (good, wrong, slow):
            s.close()


async def test_check_answers_from_cache_and_refreshes() -> None:
    server = await _server(REDIRECT_BANNER)
    check = RedirectCheck(_addr(server), timeout=1.0, ttl=60.0, retry=0.0)
    try:
        assert check.ok() is False  # no probe yet: not ready, one started
        for _ in range(100):
            await asyncio.sleep(0.01)
            if check.probes:
                break
        assert check.ok() is True and check.probes == 1
        assert check.ok() is True and check.probes == 1  # cached: no new probe within ttl
        server.close()
        await server.wait_closed()
        check.ttl = 0.0
        check.ok()
        for _ in range(100):
            await asyncio.sleep(0.01)
            if check.probes > 1:
                break
        assert check.ok() is False  # the rules (here: the listener) went away
    finally:
        await check.stop()


async def test_readyz_fails_while_the_redirect_is_missing() -> None:
    check = RedirectCheck(("127.0.0.1", 9), timeout=0.2)
    app = AdminApp(Metrics(), lambda: True, lambda: {"session": "s"}, check)
    check.result, check.checked_at = False, float("inf")
    response = app.handle(b"GET", b"/readyz")
    assert response.startswith(b"HTTP/1.1 503 ")
    assert json.loads(response.split(b"\r\n\r\n", 1)[1]) == {"status": "redirect_missing"}
    check.result = True
    assert app.handle(b"GET", b"/readyz").startswith(b"HTTP/1.1 200 ")
    not_started = AdminApp(Metrics(), lambda: False, dict, check)
    assert b'"starting"' in not_started.handle(b"GET", b"/readyz")
    without = AdminApp(Metrics(), lambda: True, dict)
    assert without.handle(b"GET", b"/readyz").startswith(b"HTTP/1.1 200 ")
    await check.stop()
