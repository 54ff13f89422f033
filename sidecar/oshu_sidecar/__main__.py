"""`oshu-sidecar` / `python -m oshu_sidecar`: parse config, run until SIGTERM/SIGINT.

Exit codes: 0 after a clean stop, 2 for a bad flag or environment value, 1 when the
sidecar cannot start (session file, CA or listen address unusable). The reason is
always one JSON log line on stderr.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Protocol, TypeVar

from .config import Config, ConfigError, load_config
from .logs import log, setup_logging, sink

C = TypeVar("C", bound="_Logged")


class Service(Protocol):
    """What `serve_until_signal` runs: the sidecar's `Sidecar`, the gateway's `Gateway`."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...


class _Logged(Protocol):
    @property
    def log_level(self) -> str: ...


async def serve_until_signal(service: Service, startup_error: type[Exception]) -> int:
    """Start `service`, serve until SIGTERM/SIGINT, stop it: 0, or 1 when start raises `startup_error` (logged)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await service.start()
    except startup_error as e:
        log(logging.ERROR, "cannot start", error=str(e))
        await service.stop()
        return 1
    await stop.wait()
    log(logging.INFO, "stopping")
    await service.stop()
    return 0


async def _run(cfg: Config) -> int:
    from .app import Sidecar, StartupError

    return await serve_until_signal(Sidecar(cfg), StartupError)


def raise_fd_limit() -> None:
    """Lift the soft limit on open files to the hard one.

    Every client connection and its upstream cost a descriptor each; container runtimes
    often start processes with a soft limit of 1024, which an agent holding a few hundred
    idle connections would exhaust, locking everyone else out until it lets go.
    """
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):  # pragma: no cover - not POSIX, or not allowed: keep going
        pass


def run_command(
    load: Callable[[Sequence[str] | None], C], run: Callable[[C], Coroutine[Any, Any, int]], argv: Sequence[str] | None
) -> int:
    """A service command's `main`: config from `load` (ConfigError: exit 2), then `run(cfg)` on uvloop."""
    setup_logging("info")
    raise_fd_limit()
    try:
        cfg = load(argv)
    except ConfigError as e:
        log(logging.ERROR, "invalid configuration", error=str(e))
        return 2
    setup_logging(cfg.log_level)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; plain asyncio still works
        code = asyncio.run(run(cfg))
    else:
        code = uvloop.run(run(cfg))
    sink.flush()
    return code


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(load_config, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
