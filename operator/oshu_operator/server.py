"""kopf's webhook server, plus what the operator does around it: timing and registration.

`AdmissionServer` wraps every admission review to record its latency and to fill in the
object's namespace from the request (a pod created by a controller may arrive without
it), and once the server listens it calls `on_serving` with kopf's client config (the
dev mode registers the webhook configuration there, the in-cluster mode its caBundle).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import kopf

from .metrics import Metrics

if TYPE_CHECKING:
    # kopf exports WebhookFn but not the TypedDicts its signature is written with.
    from kopf._cogs.structs.reviews import Request, Response

OnServing = Callable[[dict[str, Any]], Awaitable[None]]


class AdmissionServer(kopf.WebhookServer):
    def __init__(self, *, metrics: Metrics, on_serving: OnServing, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._metrics = metrics
        self._on_serving = on_serving

    async def __call__(self, fn: kopf.WebhookFn) -> AsyncIterator[kopf.WebhookClientConfig]:
        histogram = self._metrics.admission_seconds

        async def timed(
            request: Request,
            *,
            webhook: str | None = None,
            headers: kopf.Headers | None = None,
            sslpeer: kopf.SSLPeer | None = None,
        ) -> Response:
            started = time.perf_counter()
            try:
                req = request.get("request")
                namespace = req.get("namespace") if req else None
                for obj in (req.get("object"), req.get("oldObject")) if req else ():
                    if namespace and isinstance(obj, dict):
                        meta = obj.setdefault("metadata", {})
                        meta.setdefault("namespace", namespace)
                return await fn(request, webhook=webhook, headers=headers, sslpeer=sslpeer)
            finally:
                histogram.observe(time.perf_counter() - started)

        async for client_config in super().__call__(timed):
            await self._on_serving(dict(client_config))
            yield client_config
