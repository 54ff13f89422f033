"""py-spy profile of a proxy under the 32-connection load.

Two recordings of the same load: collapsed stacks (summarised here into the
functions that hold the most samples, self and inclusive, with file:line) and
an SVG flamegraph for a human to open.
"""

from __future__ import annotations

import subprocess
import threading
from collections import Counter
from pathlib import Path

from . import procstat
from .loadgen import Loadgen, Route


def _record(py_spy: Path, pid: int, out: Path, fmt: str, seconds: float, rate: int) -> subprocess.Popen:
    return subprocess.Popen(
        [str(py_spy), "record", "--pid", str(pid), "--subprocesses", "--rate", str(rate),
         "--duration", str(int(seconds)), "--format", fmt, "--output", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def record(py_spy: Path, pid: int, lg: Loadgen, route: Route, outdir: Path,
           seconds: float = 6, conns: int = 32, rate: int = 250) -> dict:
    results: dict = {}
    for fmt, name in (("raw", "stacks.txt"), ("flamegraph", "flamegraph.svg")):
        out = outdir / name
        spy = _record(py_spy, pid, out, fmt, seconds, rate)
        cpu0 = procstat.cpu_seconds(pid)
        load: dict = {}
        t = threading.Thread(target=lambda: load.update(
            lg.run("load", route, "-conns", str(conns), "-duration", f"{seconds}s", timeout=seconds + 60)))
        t.start()
        t.join()
        cpu = procstat.cpu_seconds(pid) - cpu0
        spy_out, _ = spy.communicate(timeout=seconds + 30)
        if spy.returncode != 0 or not out.exists():
            raise RuntimeError(f"py-spy failed: {spy_out.strip()}")
        results[fmt] = {"file": str(out), "rps": load["rps"], "requests": load["requests"],
                        "proxy_cpu_s": cpu, "cpu_share_of_one_core": cpu / load["elapsed_s"],
                        "errors": load["errors"]["count"]}
    results["summary"] = summarize(outdir / "stacks.txt")
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

    return {"samples": total, "self_by_function": pct(by_func), "self_by_line": pct(by_line),
            "inclusive": pct(incl)}


def render(summary: dict, top: int = 15) -> str:
    lines = [f"py-spy samples: {summary['samples']}"]
    for key, title in (("self_by_function", "self time by function (where the CPU goes)"),
                       ("self_by_line", "self time by line"),
                       ("inclusive", "inclusive time by function, event-loop roots left out")):
        lines.append(f"  top {title}:")
        shown = [(n, p) for n, p in summary[key] if not (key == "inclusive" and p >= 95)]
        for name, p in shown[:top]:
            lines.append(f"    {p:5.1f}%  {name}")
    return "\n".join(lines)
