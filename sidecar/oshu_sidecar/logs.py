"""Structured logs: JSON lines on stderr, plus one cheap audit line per proxied request.

Ordinary events go through `logging` with a JSON formatter (`log(...)` adds fields).
The audit line is built by hand from pre-escaped parts -- it runs once per request, so
it avoids `json.dumps` and datetime formatting -- and lines are batched: written at most
every few milliseconds, or at once for warnings and errors, keeping order.

Nothing here ever receives a secret value: callers pass names of secrets and the path
with query values removed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii as _q
from typing import Any

LOGGER_NAME = "oshu.sidecar"
logger = logging.getLogger(LOGGER_NAME)

_FLUSH_DELAY = 0.02


class LineSink:
    """Batches complete lines to a file descriptor; flushes on a short timer or on demand."""

    def __init__(self, fd: int | None = None) -> None:
        self.fd = sys.stderr.fileno() if fd is None else fd
        self._pending: list[str] = []
        self._scheduled = False
        self.loop: asyncio.AbstractEventLoop | None = None

    def attach(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """Batch lines on `loop` (None: write every line immediately)."""
        self.flush()
        self.loop = loop

    def write(self, line: str, urgent: bool = False) -> None:
        self._pending.append(line)
        if urgent or self.loop is None or self.loop.is_closed():
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            self.loop.call_later(_FLUSH_DELAY, self.flush)

    def flush(self) -> None:
        self._scheduled = False
        if not self._pending:
            return
        data = ("\n".join(self._pending) + "\n").encode("utf-8", "replace")
        self._pending.clear()
        try:
            while data:
                n = os.write(self.fd, data)
                data = data[n:]
        except BlockingIOError:  # stderr is a non-blocking pipe that is full: drop rather than stall
            pass
        except OSError:
            pass


sink = LineSink()


class _Clock:
    """ISO-8601 timestamps with milliseconds, formatted at most once per millisecond."""

    __slots__ = ("_ms", "_sec", "_stamp", "_text")

    def __init__(self) -> None:
        self._sec = -1
        self._text = ""
        self._ms = -1
        self._stamp = ""

    def now(self) -> str:
        ms = int(time.time() * 1000)
        if ms != self._ms:
            self._ms = ms
            sec = ms // 1000
            if sec != self._sec:
                self._sec = sec
                self._text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
            self._stamp = f"{self._text}.{ms % 1000:03d}Z"
        return self._stamp


clock = _Clock()


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, msg and any `fields` passed via `extra`."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": clock.now(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            out.update(fields)
        if record.exc_info and record.exc_info[0] is not None:
            out["error"] = f"{record.exc_info[0].__name__}: {record.exc_info[1]}"
        return json.dumps(out, default=str, separators=(",", ":"))


class SinkHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            sink.write(self.format(record), urgent=record.levelno >= logging.WARNING)
        except Exception:  # pragma: no cover - logging must never take the proxy down
            self.handleError(record)


#: Recognizers of known "exception ignored" events (`sys.unraisablehook` arguments): each logs its
#: own line and returns True, or returns False. certs.py registers the non-ASCII SNI one.
unraisable_handlers: list[Callable[[Any], bool]] = []


def _error_text(exc: BaseException | None) -> str:
    return f"{type(exc).__name__}: {exc}"[:500] if exc is not None else ""


def _log_unraisable(unraisable: Any) -> None:
    """Python's "Exception ignored in ..." (printed with a traceback on stderr) as one JSON line."""
    for handler in unraisable_handlers:
        try:
            if handler(unraisable):
                return
        except Exception:  # pragma: no cover - a recognizer must not hide the event
            break
    log(
        logging.ERROR,
        "exception ignored",
        where=unraisable.err_msg or "",
        object=type(unraisable.object).__name__,
        error=_error_text(unraisable.exc_value),
    )


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    log(
        logging.ERROR,
        "uncaught exception in a thread",
        thread=args.thread.name if args.thread else "",
        error=_error_text(args.exc_value),
    )


def setup_logging(level: str = "info") -> None:
    """JSON lines for everything the process writes on stderr: log records, warnings, and the
    exceptions Python would otherwise print with a traceback (ignored ones, threads')."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = SinkHandler()
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Third-party chatter (aiohttp access logs, asyncio debug) stays out of the audit stream.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.captureWarnings(True)
    sys.unraisablehook = _log_unraisable
    threading.excepthook = _log_thread_exception


def log(level: int, msg: str, **fields: Any) -> None:
    """Log an event with structured fields."""
    if logger.isEnabledFor(level):
        logger.log(level, msg, extra={"fields": fields})


@dataclass(slots=True)
class AuditEntry:
    """One audit line's fields: names of secrets and a path with query values removed, never a value."""

    scheme: str
    host: str
    method: str
    path: str
    status: int
    outcome: str
    bytes_in: int
    bytes_out: int
    duration: float
    secrets: list[str] | tuple[str, ...]


class AuditLog:
    """The per-request audit line; disabled when the level is above INFO."""

    __slots__ = ("_names", "_prefix", "enabled")

    def __init__(self, session: str) -> None:
        self.enabled = logger.isEnabledFor(logging.INFO)
        self._names: dict[tuple[str, ...], str] = {(): "[]"}
        self.set_session(session)

    def set_session(self, session: str) -> None:
        self._prefix = f',"level":"info","logger":"{LOGGER_NAME}.audit","msg":"request","session":{_q(session)}'

    def request(self, e: AuditEntry) -> None:
        if not self.enabled:
            return
        sink.write(
            f'{{"ts":"{clock.now()}"{self._prefix},"scheme":"{e.scheme}","host":{_q(e.host)},'
            f'"method":{_q(e.method)},"path":{_q(e.path)},"status":{e.status},"outcome":"{e.outcome}",'
            f'"bytes_in":{e.bytes_in},"bytes_out":{e.bytes_out},"duration_ms":{e.duration * 1000:.3f},'
            f'"secrets":{self._secrets_json(e.secrets)}}}'
        )

    def _secrets_json(self, secrets: list[str] | tuple[str, ...]) -> str:
        key = tuple(secrets)
        text = self._names.get(key)
        if text is None:
            if len(self._names) > 256:
                self._names.clear()
            text = self._names[key] = json.dumps(list(key))
        return text
