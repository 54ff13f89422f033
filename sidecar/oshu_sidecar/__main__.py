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
from collections.abc import Sequence

from .config import Config, ConfigError, load_config
from .logs import log, setup_logging, sink


async def _run(cfg: Config) -> int:
    from .app import Sidecar, StartupError

    sidecar = Sidecar(cfg)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await sidecar.start()
    except StartupError as e:
        log(logging.ERROR, "cannot start", error=str(e))
        await sidecar.stop()
        return 1
    await stop.wait()
    log(logging.INFO, "stopping")
    await sidecar.stop()
    return 0


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


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging("info")
    raise_fd_limit()
    try:
        cfg = load_config(argv)
    except ConfigError as e:
        log(logging.ERROR, "invalid configuration", error=str(e))
        return 2
    setup_logging(cfg.log_level)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; plain asyncio still works
        code = asyncio.run(_run(cfg))
    else:
        code = uvloop.run(_run(cfg))
    sink.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
