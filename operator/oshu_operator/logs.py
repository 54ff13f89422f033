"""Structured JSON logs (one object per line) for the operator and kopf alike."""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
#: kopf attaches its whole settings object to per-object records: noise, not information.
_KOPF_EXTRAS = {"settings"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
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


def setup(level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Response bodies (Secret data) are logged by these at DEBUG: keep them quiet at any level.
    logging.getLogger("kubernetes_asyncio").setLevel(logging.INFO)
    logging.getLogger("kubernetes_asyncio.client.rest").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
