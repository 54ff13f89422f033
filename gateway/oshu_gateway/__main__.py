"""`oshu-gateway` / `python -m oshu_gateway`: exit 0 after SIGTERM/SIGINT, 1 when it cannot start, 2 bad flag.

The command's frame (signals, exit codes, uvloop) is the sidecar's: `oshu_sidecar.__main__.run_command`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from oshu_sidecar.__main__ import run_command, serve_until_signal

from .config import GatewayConfig, load_config


async def _run(cfg: GatewayConfig) -> int:
    from .app import Gateway, StartupError

    return await serve_until_signal(Gateway(cfg), StartupError)


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(load_config, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
