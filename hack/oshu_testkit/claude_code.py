"""The real Claude Code CLI (npm, pinned) for the tests: installed once into ~/.cache/oshu-vault,
run non-interactively (`claude -p`) with only the environment a sandbox would have."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

#: The Claude Code CLI version every test runs.
CLAUDE_CODE_VERSION = "2.1.332"

#: No telemetry, update checks or error reports: the only traffic is what the test looks at.
QUIET = {
    "DISABLE_TELEMETRY": "1",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_ERROR_REPORTING": "1",
}


def claude_binary() -> Path:
    """The pinned CLI, installed from the npm registry on first use (later runs reuse the cache)."""
    home = (
        Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        / "oshu-vault"
        / f"claude-code-{CLAUDE_CODE_VERSION}"
    )
    binary = home / "node_modules" / ".bin" / "claude"
    if not binary.exists():
        home.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", f"@anthropic-ai/claude-code@{CLAUDE_CODE_VERSION}"],
            cwd=home,
            check=True,
            capture_output=True,
            timeout=600,
        )
    return binary


def run_claude(claude: Path, env: dict[str, str], home: Path) -> subprocess.CompletedProcess[str]:
    """`claude -p "say hi"` in `home` with `env` (plus QUIET, a bare PATH and HOME=home) and nothing else."""
    return subprocess.run(
        [str(claude), "-p", "say hi"],
        env=env | QUIET | {"PATH": "/usr/bin:/bin", "HOME": str(home)},
        cwd=home,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def home_files(home: Path) -> dict[str, bytes]:
    """Whatever the CLI wrote under its home (config, transcripts), for the leak scans."""
    return {str(f): f.read_bytes() for f in home.rglob("*") if f.is_file()}
