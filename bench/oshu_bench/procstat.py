"""CPU time and memory of a process tree, read from /proc.

A proxy may fork workers (proxy.py does, one per core), so every number here
is summed over the root process and all its live descendants.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            text = Path(f"/proc/{pid}/task/{task}/children").read_text()
            kids.extend(int(k) for k in text.split())
    except (FileNotFoundError, ProcessLookupError):
        pass
    return kids


def tree(pid: int) -> list[int]:
    """The pid and all its live descendants."""
    seen: list[int] = []
    todo = [pid]
    while todo and len(seen) < 1000:
        p = todo.pop()
        seen.append(p)
        todo.extend(_children(p))
    return seen


def cpu_times(pid: int) -> tuple[float, float]:
    """(utime, stime) of the whole tree, in seconds."""
    user = system = 0
    for p in tree(pid):
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        user += int(fields[11])  # utime (field 14)
        system += int(fields[12])  # stime (field 15)
    return user / _TICK, system / _TICK


def machine_busy_seconds() -> float:
    """CPU seconds spent by every process on the machine (all cores), from /proc/stat."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _TICK


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole tree, in seconds."""
    return sum(cpu_times(pid))


def memory_bytes(pid: int) -> dict[str, int]:
    """RSS summed over the tree (double-counts shared pages) and PSS (does not)."""
    rss = pss = 0
    for p in tree(pid):
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1]) * 1024
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1]) * 1024
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return {"rss": rss, "pss": pss, "processes": len(tree(pid))}


class PeakMemory:
    """Samples memory_bytes in a thread while a load runs; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid, self.interval = pid, interval
        self.peak = {"rss": 0, "pss": 0, "processes": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            m = memory_bytes(self.pid)
            if m["rss"] > self.peak["rss"]:
                self.peak = m

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
