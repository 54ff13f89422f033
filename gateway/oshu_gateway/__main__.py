"""`oshu-gateway` / `python -m oshu_gateway`: exit 0 after SIGTERM/SIGINT, 1 when it cannot start, 2 bad flag."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from oshu_sidecar.__main__ import raise_fd_limit
from oshu_sidecar.config import ConfigError
from oshu_sidecar.logs import log, setup_logging, sink

from .config import GatewayConfig, load_config


async def _run(cfg: GatewayConfig) -> int:
    from .app import Gateway, StartupError

    gw = Gateway(cfg)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await gw.start()
    except StartupError as e:
        log(logging.ERROR, "cannot start", error=str(e))
        await gw.stop()
        return 1
    await stop.wait()
    log(logging.INFO, "stopping")
    await gw.stop()
    return 0


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
    except ImportError:  # pragma: no cover
        code = asyncio.run(_run(cfg))
    else:
        code = uvloop.run(_run(cfg))
    sink.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
