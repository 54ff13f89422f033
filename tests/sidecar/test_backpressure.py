"""Resources per connection stay bounded when a client sends and never reads (issue 12, item 8).

The proxy must stop reading the next pipelined request, and so stop fetching from the
upstream, while the client is not taking what it was already sent. Asserted on what the
upstream was asked for, never on timing: the bounded waits only give the old behaviour
(every request fetched and buffered) the chance to show.
"""

from __future__ import annotations

import socket

import pytest

from oshu_contract.session import SecretBinding
from oshu_testkit.rawclient import RawClient
from oshu_testkit.sidecar_process import SidecarProcess
from oshu_testkit.upstreams import HOST, Upstream

TIMEOUT = 30.0
BIG = 1_000_000
COUNT = 64
#: Responses that may be in flight while the client reads nothing: one being written, one
#: fetched, and what the kernel's socket buffers hold between proxy and client (the proxy's
#: send buffer autotunes up to tcp_wmem's maximum, 4 MiB by default; the client's receive
#: buffer is pinned small below). The old behaviour fetched all 64.
IN_FLIGHT = 10


def rss_kib(sc: SidecarProcess) -> int:
    assert sc.proc is not None
    with open(f"/proc/{sc.proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize("tls", [True, False], ids=["tunnel", "plain"])
def test_pipelined_big_responses_are_not_buffered_without_bound(
    tls: bool, sidecar: SidecarProcess, upstream: Upstream, keys: dict[str, SecretBinding]
) -> None:
    """64 pipelined GETs of 1 MB in one write, nothing read.

    Before: all 64 were fetched and buffered for the client (RSS +75 MiB, linear in the count).
    """
    target = f"/bytes?n={BIG}" if tls else f"http://{HOST}/bytes?n={BIG}"
    one = b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target.encode(), HOST.encode())
    with RawClient(sidecar.listen, timeout=TIMEOUT) as c:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        if tls:
            assert c.connect(f"{HOST}:443").status == 200
            c.start_tls(HOST, sidecar.ca_cert_file)
        for _ in range(2):  # warm: leaf minted, buffers of this size allocated once
            assert len(c.request("GET", target, {"Host": HOST}).body) == BIG
        upstream.clear()
        rss_before = rss_kib(sidecar)
        c.send(one * COUNT)
        # Give an unbounded proxy every chance to fetch them all.
        upstream.wait_for(lambda u: len(u.requests) > IN_FLIGHT, timeout=5.0)
        fetched = len(upstream.requests)
        grown = rss_kib(sidecar) - rss_before
        assert fetched <= IN_FLIGHT, f"{fetched} responses of 1 MB fetched for a client that reads nothing"
        assert grown < 16 * 1024, f"RSS grew {grown} KiB"
        for i in range(COUNT):  # and nothing was lost: the client then gets every response in order
            resp = c.response()
            assert resp.status == 200 and len(resp.body) == BIG, i
    assert len(upstream.requests) == COUNT
