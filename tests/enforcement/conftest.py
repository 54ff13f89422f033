"""Fixtures for the enforcement tests: namespaces, recorders outside, the rules, probes as the agent's uid.

Everything runs in namespaces created here (oshu_testkit.netns): the agent's pod namespace, and
an "outside" one holding the upstreams, resolvers and the metadata address. Requires root.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from oshu_testkit.netns import (
    METADATA_V4,
    METADATA_V6,
    OTHER_RESOLVER,
    OUTSIDE_V4,
    OUTSIDE_V6,
    RESOLVER,
    Recorder,
    Topology,
)
from oshu_testkit.redirect import StandIn


@pytest.fixture(scope="session")
def root() -> None:
    if os.geteuid() != 0:
        pytest.fail("the enforcement tests create network namespaces and need root")


@pytest.fixture(scope="module")
def topo(root: None) -> Iterator[Topology]:
    with Topology(prefix="oshu-t2", hosts=["api.oshu.test", "other.oshu.test", "tunnel.oshu.test"]) as t:
        yield t


@pytest.fixture(scope="module")
def recorder(topo: Topology) -> Iterator[Recorder]:
    """Listeners outside: TCP 8080 (both families), metadata :80, both resolvers (UDP+TCP 53), UDP 443."""
    rec = Recorder(topo.outside)
    for host in (OUTSIDE_V4, OUTSIDE_V6):
        rec.tcp(host, 8080)
        rec.tcp(host, 2222)
        rec.udp(host, 443)
    for host in (METADATA_V4, METADATA_V6):
        rec.tcp(host, 80)
    for host in (RESOLVER, OTHER_RESOLVER):
        rec.udp(host, 53)
        rec.tcp(host, 53)
    yield rec
    rec.close()


@pytest.fixture
def standin(topo: Topology) -> Iterator[StandIn]:
    s = StandIn(topo.agent)
    yield s
    s.close()
