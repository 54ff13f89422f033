"""A bounded memory of signatures already used, so an identical signed request is honoured once.

Entries expire when their signature could no longer be accepted anyway (the date window), so
in steady state the cache holds only the last 30 minutes' signatures; beyond `capacity` the
oldest are forgotten first (replay protection then covers the most recent `capacity` requests).
"""

from __future__ import annotations

from collections import OrderedDict

#: Signatures remembered at most (about 120 bytes each).
REPLAY_CAPACITY = 100_000


class ReplayCache:
    """`seen(key, until, now)`: True if `key` was recorded and is still live; else records it."""

    __slots__ = ("capacity", "entries")

    def __init__(self, capacity: int = REPLAY_CAPACITY) -> None:
        self.capacity = capacity
        self.entries: OrderedDict[str, float] = OrderedDict()

    def seen(self, key: str, until: float, now: float) -> bool:
        entries = self.entries
        expiry = entries.get(key)
        if expiry is not None and expiry >= now:
            return True
        entries[key] = until
        entries.move_to_end(key)
        # drop expired entries from the old end, and the oldest beyond capacity
        while entries:
            oldest_key, oldest_until = next(iter(entries.items()))
            if oldest_until >= now and len(entries) <= self.capacity:
                break
            del entries[oldest_key]
        return False

    def forget(self, key: str) -> None:
        """The request under `key` was not served (a retryable failure): its identical retry is no replay."""
        self.entries.pop(key, None)
