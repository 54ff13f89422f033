"""Structured JSON logs (one object per line) for the operator and kopf alike."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
#: kopf attaches its whole settings object to per-object records: noise, not information.
_KOPF_EXTRAS = {"settings"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        ref = getattr(record, "k8s_ref", None)
        if isinstance(ref, dict) and ref.get("name"):
            out["object"] = f"{ref.get('namespace') or ''}/{ref['name']}".lstrip("/")
        for key, value in vars(record).items():
            if key in _STANDARD or key in _KOPF_EXTRAS or key.startswith("k8s_") or key.startswith("_"):
                continue
            out[key] = value if isinstance(value, (str, int, float, bool, type(None), list, dict)) else str(value)
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class ExpectedOutcomes(logging.Filter):
    """Keep kopf from logging the operator's deliberate outcomes as errors.

    kopf logs every handler that raises at ERROR: an admission refusal is "Webhook 'inject'
    failed permanently: <why>", a retry the handler asked for is "Handler 'revoke' failed
    temporarily: <why>". A refused pod and a revoked session waiting out its grace period are
    the product working, not failing, and the operator logs each of them itself at INFO with
    structured fields ("pod refused", "revoked session kept for kubelets"). So kopf's record
    of them goes to DEBUG: refusals by the `refusing` webhooks, and retries of the `waiting`
    handlers (handler id -> the start of their message).

    Anything else kopf says (an exception in a handler, an API error retried, a refusal by a
    webhook not listed) stays at ERROR. kopf builds these messages itself (f-strings, no
    args), so they are matched on their text, anchored on the handler id.
    """

    def __init__(self, refusing: Iterable[str], waiting: Mapping[str, str]) -> None:
        super().__init__()
        self._refusals = tuple(f"Webhook {hid!r} failed permanently: " for hid in refusing)
        self._waits = tuple(f"Handler {hid!r} failed temporarily: {why}" for hid, why in waiting.items())

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.ERROR or not isinstance(record.msg, str):
            return True
        if not record.msg.startswith(self._refusals + self._waits):
            return True
        record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        # The logger let the record through as an ERROR; drop it unless DEBUG is logged.
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def expect_outcomes(refusing: Iterable[str], waiting: Mapping[str, str]) -> ExpectedOutcomes:
    """Install an ExpectedOutcomes filter on kopf's per-object logger (replacing an earlier one)."""
    logger = logging.getLogger("kopf.objects")
    for old in [f for f in logger.filters if isinstance(f, ExpectedOutcomes)]:
        logger.removeFilter(old)
    installed = ExpectedOutcomes(refusing, waiting)
    logger.addFilter(installed)
    return installed


def setup(level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if fmt == "json" else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Response bodies (Secret data) are logged by these at DEBUG: keep them quiet at any level.
    logging.getLogger("kubernetes_asyncio").setLevel(logging.INFO)
    logging.getLogger("kubernetes_asyncio.client.rest").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
