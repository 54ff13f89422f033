"""Health and metrics endpoints: /healthz, /readyz, /metrics on one small aiohttp server."""

from __future__ import annotations

import json
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .metrics import Metrics


class HealthServer:
    """Explicit lifecycle: `await start()`, `await stop()` (or `async with`)."""

    def __init__(self, host: str, port: int, metrics: Metrics, readiness: Callable[[], dict[str, bool]]) -> None:
        self.host, self.port = host, port
        self._metrics = metrics
        self._readiness = readiness
        self._runner: web.AppRunner | None = None
        self.bound_port: int | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics_view)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        addresses = self._runner.addresses  # (host, port, ...) of every bound socket
        self.bound_port = addresses[0][1] if addresses else self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> HealthServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, _: web.Request) -> web.Response:
        parts = self._readiness()
        ok = all(parts.values())
        return web.Response(
            status=200 if ok else 503, content_type="application/json", text=json.dumps({"ready": ok, **parts})
        )

    async def _metrics_view(self, _: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self._metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})
