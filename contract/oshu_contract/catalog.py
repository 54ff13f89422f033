"""The catalog of well-known secret names and their hosts (catalog.json, the one place it is kept).

A secret whose request names no hosts gets the catalog's hosts for its name, so
`{"ANTHROPIC_API_KEY": "sk-..."}` just works; any other name without hosts is refused by
the caller (a secret is never sent to a host nobody named).
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources


@cache
def catalog() -> dict[str, tuple[str, ...]]:
    """Name -> host patterns, read once from catalog.json."""
    raw = json.loads(resources.files(__package__).joinpath("catalog.json").read_text())
    return {k: tuple(v) for k, v in raw.items() if not k.startswith("_")}


def hosts_for(name: str) -> tuple[str, ...] | None:
    """The catalog's hosts for `name`, or None when the name is not well known."""
    return catalog().get(name)
