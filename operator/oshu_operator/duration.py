"""Durations as Kubernetes users write them ("8h", "90m", "1h30m"): Go's syntax, minus ns/us.

The CRD checks the same syntax with a pattern and CEL's duration(); this parser is what the
reconciler trusts, so a spec that slipped past an older CRD still gets a clear message.
"""

from __future__ import annotations

import re
from datetime import timedelta

_PART_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_WHOLE_RE = re.compile(r"^(?:[0-9]+(?:\.[0-9]+)?(?:ms|s|m|h))+$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class DurationError(ValueError):
    """Not a duration this operator understands."""


def parse_duration(text: object) -> timedelta:
    if not isinstance(text, str) or not _WHOLE_RE.match(text):
        raise DurationError(f"not a duration like 8h, 90m or 1h30m: {text!r}")
    seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in _PART_RE.findall(text))
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """Compact form for messages ("1h30m0s" -> "1h30m")."""
    total = int(value.total_seconds())
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    out = (f"{h}h" if h else "") + (f"{m}m" if m else "") + (f"{s}s" if s else "")
    return out or "0s"
