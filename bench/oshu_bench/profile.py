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
         "--duration", str(int(seconds)), "--format", fmt, "--output", str(out), "--nonblocking"],
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


def _short(frame: str) -> str:
    func, _, loc = frame.partition(" (")
    loc = loc.rstrip(")")
    for marker in ("site-packages/", "lib/python3", "sidecar/"):
        if marker in loc:
            loc = loc.split(marker, 1)[1]
            break
    return f"{func} ({loc})"


def summarize(stacks: Path, top: int = 25) -> dict:
    self_count: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    by_file: Counter[str] = Counter()
    total = 0
    for line in stacks.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        count = int(n)
        frames = _frames(stack)
        total += count
        if not frames:
            continue
        self_count[_short(frames[-1])] += count
        for f in set(frames):
            incl[_short(f)] += count
        leaf_file = frames[-1].partition(" (")[2].split(":")[0]
        by_file[_short(f"x ({leaf_file}:0)").split(" (", 1)[1].rsplit(":", 1)[0]] += count

    def pct(c: Counter[str]) -> list[tuple[str, float]]:
        return [(k, 100 * v / total) for k, v in c.most_common(top)] if total else []

    return {"samples": total, "self": pct(self_count), "inclusive": pct(incl), "self_by_file": pct(by_file)}


def render(summary: dict, top: int = 20) -> str:
    lines = [f"py-spy samples: {summary['samples']}"]
    for key, title in (("self", "self time (where the CPU is)"),
                       ("self_by_file", "self time by file"),
                       ("inclusive", "inclusive time (what it is doing)")):
        lines.append(f"  top {title}:")
        for name, p in summary[key][:top]:
            lines.append(f"    {p:5.1f}%  {name}")
    return "\n".join(lines)
