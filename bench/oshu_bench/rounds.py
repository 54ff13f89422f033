"""Combines repeated rounds of one target into one result: the median of each number.

The machine is shared, so any single phase can be slowed by a neighbour.
Targets are measured round-robin and each number is the median over rounds;
errors are summed instead, since one failing round must stay visible.
"""

from __future__ import annotations

import statistics
from typing import Any


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _errors(logs: list[dict]) -> dict:
    out: dict[str, Any] = {"count": 0, "by_kind": {}, "samples": []}
    for e in logs:
        out["count"] += e.get("count", 0)
        for k, v in (e.get("by_kind") or {}).items():
            out["by_kind"][k] = out["by_kind"].get(k, 0) + v
        out["samples"] = (out["samples"] + (e.get("samples") or []))[:5]
    return out


def combine(values: list[Any], key: str = "") -> Any:
    present = [v for v in values if v is not None]
    if not present:
        return None
    if key == "errors" and all(isinstance(v, dict) for v in present):
        return _errors(present)
    if all(_is_num(v) for v in present):
        return statistics.median(present)
    if all(isinstance(v, dict) for v in present):
        keys = dict.fromkeys(k for v in present for k in v)
        return {k: combine([v.get(k) for v in present], k) for k in keys}
    return present[0]


def merge(rounds: list[dict]) -> dict:
    """One result from several rounds of the same target, keeping the spread of req/s."""
    merged = combine(rounds)
    merged["rounds"] = len(rounds)
    merged["spread"] = {phase: [r[phase]["rps"] for r in rounds if r.get(phase)] for phase in ("low", "high")}
    return merged
