"""py-spy profile of a proxy under the 32-connection load.

Three recordings, each under its own run of the same load:
- Python stacks (`stacks.txt`, collapsed format), summarised here as the
  functions and lines holding the most samples, self and inclusive;
- native stacks (`native.txt`): where the time goes below Python, i.e. in
  the event loop, OpenSSL and system calls (idle waits are set apart);
- an SVG flamegraph of the Python stacks for a human to open.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from pathlib import Path

from . import procstat
from .loadgen import Loadgen, Route

# (format, file, extra flags). --nonblocking keeps py-spy from pausing the
# process, which would make every thread look busy and count idle waits (the
# executor's queue, epoll) as work; --native cannot run non-blocking, so the
# native pass filters idle stacks itself.
PASSES = (
    ("raw", "stacks.txt", ["--nonblocking"]),
    ("raw", "native.txt", ["--native"]),
    ("flamegraph", "flamegraph.svg", ["--nonblocking"]),
)


def record(
    py_spy: Path,
    pid: int,
    lg: Loadgen,
    route: Route,
    outdir: Path,
    seconds: float = 6,
    conns: int = 32,
    rate: int = 250,
) -> dict:
    results: dict = {}
    for fmt, name, flags in PASSES:
        out = outdir / name
        spy = subprocess.Popen(
            [
                str(py_spy),
                "record",
                "--pid",
                str(pid),
                "--subprocesses",
                "--rate",
                str(rate),
                "--duration",
                str(int(seconds)),
                "--format",
                fmt,
                "--output",
                str(out),
                *flags,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        cpu0 = procstat.cpu_times(pid)
        load = lg.run("load", route, "-conns", str(conns), "-duration", f"{seconds}s", timeout=seconds + 60)
        user, system = (b - a for a, b in zip(cpu0, procstat.cpu_times(pid), strict=True))
        cpu = user + system
        spy_out, _ = spy.communicate(timeout=seconds + 30)
        if spy.returncode != 0 or not out.exists():
            raise RuntimeError(f"py-spy failed: {spy_out.strip()}")
        results[name] = {
            "file": str(out),
            "rps": load["rps"],
            "requests": load["requests"],
            "proxy_cpu_s": cpu,
            "cpu_share_of_one_core": cpu / load["elapsed_s"],
            "sys_share": system / cpu if cpu else 0.0,
            "errors": load["errors"]["count"],
        }
    results["summary"] = summarize(outdir / "stacks.txt")
    results["native"] = summarize_native(outdir / "native.txt")
    return results


def _frames(stack: str) -> list[str]:
    # py-spy raw lines: "process/thread;func (file:line);func (file:line) COUNT"
    return [f for f in stack.split(";") if "(" in f]


def _short(frame: str, line: bool = True) -> str:
    func, _, loc = frame.partition(" (")
    loc = loc.rstrip(")")
    for marker in ("site-packages/", "lib/python3.", "sidecar/"):
        if marker in loc:
            loc = loc.split(marker, 1)[1]
            if marker == "lib/python3.":
                loc = loc.split("/", 1)[-1]
            break
    if not line:
        loc = loc.rsplit(":", 1)[0]
    return f"{func} ({loc})"


def summarize(stacks: Path, top: int = 25) -> dict:
    """Self and inclusive sample shares by function, and self by source line."""
    by_line: Counter[str] = Counter()
    by_func: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for text in stacks.read_text(errors="replace").splitlines():
        stack, _, n = text.rpartition(" ")
        if not n.isdigit():
            continue
        count = int(n)
        frames = _frames(stack)
        total += count
        if not frames:
            continue
        by_line[_short(frames[-1])] += count
        by_func[_short(frames[-1], line=False)] += count
        for f in {_short(f, line=False) for f in frames}:
            incl[f] += count

    def pct(c: Counter[str]) -> list[tuple[str, float]]:
        return [(k, 100 * v / total) for k, v in c.most_common(top)] if total else []

    return {"samples": total, "self_by_function": pct(by_func), "self_by_line": pct(by_line), "inclusive": pct(incl)}


_ROOTS = (
    "<frozen runpy>",
    "asyncio/runners.py",
    "asyncio/base_events.py",
    "asyncio/events.py",
    "uvloop/__init__.py",
    "threading.py",
    "__main__.py",
    "main.py",
)


def _is_root(name: str) -> bool:
    """Frames every sample passes through (interpreter start, event loop): no information."""
    return name.startswith("<module>") or any(f"({r})" in name or f"/{r})" in name for r in _ROOTS)


def render(summary: dict, top: int = 15) -> str:
    lines = [f"py-spy samples: {summary['samples']}"]
    for key, title in (
        ("self_by_function", "self time by function (where the CPU goes)"),
        ("self_by_line", "self time by line"),
        ("inclusive", "inclusive time by function, event-loop roots left out"),
    ):
        lines.append(f"  top {title}:")
        shown = [(n, p) for n, p in summary[key] if not (key == "inclusive" and _is_root(n))]
        for name, p in shown[:top]:
            lines.append(f"    {p:5.1f}%  {name}")
    return "\n".join(lines)


_IDLE_MARKS = (
    "PyThread_acquire_lock_timed",
    "pthread_cond_wait",
    "pthread_cond_timedwait",  # a worker thread waiting for work (the gateway's store writer)
    "sem_wait",
    "epoll_wait",
    "epoll_pwait",
    "select (",
    "poll (",
)


def _name(frame: str) -> str:
    name, _, loc = frame.partition(" (")
    if name.startswith("0x"):
        return f"?({loc.rstrip(')')})"
    return name


def summarize_native(stacks: Path, top: int = 12) -> dict:
    """Leaf native frames with their two nearest named callers; idle waits counted apart."""
    leaves: Counter[str] = Counter()
    idle: Counter[str] = Counter()
    total = 0
    for text in stacks.read_text(errors="replace").splitlines():
        stack, _, n = text.rpartition(" ")
        if not n.isdigit():
            continue
        count = int(n)
        total += count
        frames = stack.split(";")[1:]
        if not frames:
            continue
        mark = next((m for m in _IDLE_MARKS if any(m in f for f in frames[-6:])), None)
        named = [_name(f) for f in reversed(frames)]
        chain = " < ".join(named[:3])
        (idle if mark else leaves)[chain] += count

    def pct(c: Counter[str], of: int) -> list[tuple[str, float]]:
        return [(k, 100 * v / of) for k, v in c.most_common(top)] if of else []

    busy = sum(leaves.values())
    return {
        "samples": total,
        "busy": pct(leaves, busy),
        "idle": pct(idle, total),
        "idle_share": 100 * sum(idle.values()) / total if total else 0.0,
    }


def render_native(summary: dict, top: int = 10) -> str:
    lines = [
        f"native samples: {summary['samples']} ({summary['idle_share']:.0f}% idle waits, left out below)",
        "  top native leaves, share of busy samples (leaf < caller < caller):",
    ]
    for name, p in summary["busy"][:top]:
        lines.append(f"    {p:5.1f}%  {name}")
    return "\n".join(lines)
