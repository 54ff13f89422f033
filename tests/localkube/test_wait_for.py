"""`wait_for`, the one polling helper of the tests, the demo and oshu_e2e: returns what it waited
for, and is bounded in time."""

from __future__ import annotations

import time

import pytest

from oshu_localkube.cluster import wait_for


def test_returns_the_first_truthy_value() -> None:
    answers = iter([None, {}, {"phase": "Ready"}, {"phase": "later"}])
    assert wait_for(lambda: next(answers), timeout=5, what="readiness", interval=0.001) == {"phase": "Ready"}


def test_times_out_naming_what_it_waited_for() -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="timed out after 0s waiting for the impossible"):
        wait_for(lambda: False, timeout=0.2, what="the impossible", interval=0.01)
    assert time.monotonic() - started < 5
