"""pytest plugin of the test kit (loaded by tests/conftest.py): assertion rewriting and shared fixtures.

The kit's helpers assert (leak scans, client checks); registering the package for pytest's
assertion rewriting gives those failures the same detail as asserts written in a test.
"""

from __future__ import annotations

import pkgutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

# Every module of the kit but this one (already imported, as is the package itself).
pytest.register_assert_rewrite(
    *(f"oshu_testkit.{m.name}" for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if m.name != "plugin")
)

from .upstreams import DEFAULT_HOST, Upstream  # noqa: E402  (after the rewrite registration)


@pytest.fixture
def make_upstream() -> Iterator[Callable[..., Upstream]]:
    """make_upstream(names=...) -> a started local upstream of the test's own; all stopped afterwards."""
    started: list[Upstream] = []

    def make(names: Sequence[str] = (DEFAULT_HOST, "*.oshu.test")) -> Upstream:
        up = Upstream(names=names).start()
        started.append(up)
        return up

    yield make
    for up in started:
        up.stop()
