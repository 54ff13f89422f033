"""A local TLS stand-in of the Anthropic Messages API, for running the real Claude Code CLI in tests.

It answers `POST /v1/messages` (streamed or not) only when `x-api-key` is the real key, and
its answer echoes that key (so a test sees that it came back scrubbed); every other path gets
a JSON 404. Served on 127.0.0.1 with a certificate for api.anthropic.com from its own CA;
a proxy reaches it through `--connect-to api.anthropic.com:443:127.0.0.1:PORT`.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import tempfile
import threading
from pathlib import Path
from typing import Any

from aiohttp import web

from .ca import TestCA

HOST = "api.anthropic.com"
REPLY = "Hello from the stand-in. The key you sent was "


class AnthropicStandin:
    def __init__(self, real_key: str) -> None:
        self.real_key = real_key
        self.directory = Path(tempfile.mkdtemp(prefix="oshu-anthropic-"))
        self.ca = TestCA.new("anthropic stand-in CA").write(self.directory, "ca")
        self.seen: list[dict[str, Any]] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()

    @property
    def ca_file(self) -> Path:
        assert self.ca.cert_file is not None
        return self.ca.cert_file

    def __enter__(self) -> AnthropicStandin:
        threading.Thread(target=self._run, daemon=True, name="anthropic-standin").start()
        if not self._ready.wait(20):
            raise RuntimeError("the Anthropic stand-in did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        leaf = self.ca.issue([HOST])
        (self.directory / "leaf.crt").write_bytes(leaf.cert_pem)
        (self.directory / "leaf.key").write_bytes(leaf.key_pem)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.directory / "leaf.crt", self.directory / "leaf.key")
        app = web.Application()
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_route("*", "/{tail:.*}", self._other)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=ctx)
        self._loop.run_until_complete(site.start())
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self._ready.set()
        self._loop.run_forever()

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.seen.append(
            {"path": request.path, "x-api-key": request.headers.get("x-api-key"), "stream": bool(body.get("stream"))}
        )
        if request.headers.get("x-api-key") != self.real_key:
            error = {"type": "authentication_error", "message": "invalid x-api-key"}
            return web.json_response({"type": "error", "error": error}, status=401)
        text = REPLY + self.real_key  # an upstream echoing the key: must reach the client scrubbed
        msg: dict[str, Any] = {
            "id": "msg_standin",
            "type": "message",
            "role": "assistant",
            "model": body.get("model", "claude"),
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 5, "output_tokens": 1},
        }
        if not body.get("stream"):
            msg["content"] = [{"type": "text", "text": text}]
            msg["stop_reason"] = "end_turn"
            return web.json_response(msg)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        events: list[tuple[str, dict[str, Any]]] = [
            ("message_start", {"type": "message_start", "message": msg}),
            (
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            ),
            (
                "content_block_delta",
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}},
            ),
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": 12},
                },
            ),
            ("message_stop", {"type": "message_stop"}),
        ]
        for name, data in events:
            await resp.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
        await resp.write_eof()
        return resp

    async def _other(self, request: web.Request) -> web.Response:
        self.seen.append({"path": request.path, "method": request.method})
        error = {"type": "not_found_error", "message": "not served by the stand-in"}
        return web.json_response({"type": "error", "error": error}, status=404)
