"""The admin port under a pipelining flood (issue 12, item 7).

Before: 6,000 pipelined `GET /metrics` in one write, never read, were each rendered on the
event loop (~0.4 ms apiece) in one `data_received` call and their responses all buffered:
every proxied request waited seconds and the sidecar grew ~19 MiB. Now a connection is
served one request per loop turn, nothing more while a response is unsent, with bounded
input, and renders are reused while nothing changed and rationed when it does.

No timing assertions: the in-process tests count renders against a frozen clock and read
the connection's buffers; the end-to-end test checks that a proxied request completes while
the flood connection is still open and that the sidecar's memory did not grow with it.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from oshu_contract.session import SecretBinding
from oshu_sidecar.admin import MAX_INPUT, AdminApp, AdminServer
from oshu_sidecar.metrics import RENDER_BURST, RENDER_RATE, RENDER_TTL, Metrics
from oshu_testkit.scripted import tls_client
from oshu_testkit.sidecar_process import SidecarProcess
from oshu_testkit.upstreams import HOST, Upstream

FLOOD = 6000
REQUEST = b"GET /metrics HTTP/1.1\r\nHost: admin\r\n\r\n"


class FrozenClock:
    """A clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def busy_metrics(clock: FrozenClock) -> Metrics:
    m = Metrics(clock=clock)
    for i in range(40):  # a realistic number of series
        m.request(f"host{i}.example", "forwarded")
        m.observe_latency(0.001 * i)
    return m


async def wait_until(predicate, what: str, turns: int = 3000) -> None:
    for _ in range(turns):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


async def test_a_pipelined_flood_never_read_is_rendered_once_and_buffers_little() -> None:
    clock = FrozenClock()
    metrics = busy_metrics(clock)
    server = AdminServer(AdminApp(metrics, lambda: True, lambda: {}), "127.0.0.1", 0, timeout=300)
    await server.start()
    assert server.address is not None
    loop = asyncio.get_running_loop()
    client = socket.socket()
    client.setblocking(False)
    try:
        await loop.sock_connect(client, server.address)
        sending = asyncio.ensure_future(loop.sock_sendall(client, REQUEST * FLOOD))
        await wait_until(lambda: len(server.connections) == 1, "the connection is accepted")
        conn = next(iter(server.connections))
        # The client never reads: the server stops once its socket buffers are full.
        await wait_until(lambda: conn.writing_paused, "writing pauses")
        served = conn.served
        for _ in range(20):  # and stays stopped: no more renders, no more buffering
            await asyncio.sleep(0.01)
        assert conn.served == served < FLOOD
        assert metrics.renders == 1
        assert conn.transport is not None
        one_response = len(REQUEST) + 2 * len(metrics.render())
        assert conn.transport.get_write_buffer_size() <= one_response
        assert len(conn.buf) <= MAX_INPUT + 256 * 1024  # what was unserved when reading paused, plus one read
        assert conn.reading_paused

        # Reading the responses releases the rest: every request is answered, in order.
        answered, tail = 0, b""
        for _ in range(100_000):
            if answered >= FLOOD:
                break
            data = tail + await asyncio.wait_for(loop.sock_recv(client, 1 << 16), 30)
            assert data, "closed before every request was answered"
            answered += data.count(b"HTTP/1.1 200 OK\r\n")
            tail = data[-16:]  # shorter than the marker: a marker split across reads is counted once
        assert answered == FLOOD
        await asyncio.wait_for(sending, 30)
        assert conn.served == FLOOD and metrics.renders == 1
    finally:
        client.close()
        await server.stop()


async def test_pipelined_requests_take_turns_with_other_work() -> None:
    """One request per loop turn: other callbacks (the proxy's) run between two admin requests."""
    metrics = busy_metrics(FrozenClock())
    server = AdminServer(AdminApp(metrics, lambda: True, lambda: {}), "127.0.0.1", 0, timeout=300)
    await server.start()
    assert server.address is not None
    reader, writer = await asyncio.open_connection(*server.address)
    ticks: list[int] = []
    stop = asyncio.Event()

    async def other_work() -> None:
        for _ in range(10_000):
            if stop.is_set():
                return
            conns = list(server.connections)
            ticks.append(conns[0].served if conns else -1)
            await asyncio.sleep(0)

    worker = asyncio.ensure_future(other_work())
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n" * 200)
        for _ in range(200):
            await asyncio.wait_for(reader.readuntil(b'{"status":"ok"}\n'), 30)
    finally:
        stop.set()
        await worker
        writer.close()
        await server.stop()
    served_while_other_work_ran = {t for t in ticks if t >= 0}
    assert len(served_while_other_work_ran) > 20  # interleaved, not 200 served in one go


def test_renders_are_reused_while_nothing_changed_and_rationed_when_it_does() -> None:
    clock = FrozenClock()
    m = busy_metrics(clock)
    first = m.render()
    assert all(m.render() is first for _ in range(1000)) and m.renders == 1
    m.request("api.example", "forwarded")  # a change: the next scrape shows it
    assert b'host="api.example"' in m.render() and m.renders == 2
    for i in range(1000):  # a scrape after every change, as fast as the loop goes
        m.refused(f"r{i % 3}")
        m.render()
    assert m.renders == RENDER_BURST  # the burst, then the last output (at most a moment old)
    clock.now += 1.0
    m.refused("later")
    assert b'reason="later"' in m.render()
    assert m.renders == RENDER_BURST + 1
    for _ in range(1000):
        m.refused("r0")
        m.render()
    assert m.renders <= RENDER_BURST + 1 + RENDER_RATE * 1.0
    clock.now += RENDER_TTL  # nothing changed, but the expiry gauge moves with time: rendered again
    before = m.renders
    m.render()
    assert m.renders == before + 1


def test_session_gauges_set_directly_are_never_served_stale() -> None:
    clock = FrozenClock()
    m = busy_metrics(clock)
    assert b"oshu_session_revoked 0.0" in m.render()
    m.session_revoked = 1
    assert b"oshu_session_revoked 1.0" in m.render()
    m.session_load_error = 1
    assert b"oshu_session_load_error 1.0" in m.render()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_flood_on_the_admin_port_does_not_hold_up_proxied_requests(
    sidecar: SidecarProcess, upstream: Upstream, keys: dict[str, SecretBinding]
) -> None:
    assert sidecar.proc is not None and sidecar.admin is not None
    key = keys["API_KEY"]

    def proxied(path: str) -> None:
        with tls_client(sidecar, f"{HOST}:443") as c:
            resp = c.request("GET", path, {"Host": HOST, "x-api-key": key.sealed})
        assert resp.status == 200

    proxied("/echo/warm-up")  # leaf minted (cryptography imported), pools and buffers in use
    sidecar.admin_get("/metrics")  # prometheus-client imported, first render done
    before = rss_kib(sidecar.proc.pid)
    with socket.create_connection(sidecar.admin, timeout=30) as flood:
        flood.sendall(REQUEST * FLOOD)  # never read
        proxied("/echo/during-the-flood")
        assert upstream.last.header("x-api-key") == key.value
        status, body = sidecar.admin_get("/metrics")  # another admin client is served too
        assert status == 200 and b"oshu_requests_total" in body
        grown = rss_kib(sidecar.proc.pid) - before
    assert grown < 8 * 1024, f"RSS grew {grown} KiB with the flood"
    assert sidecar.admin_get("/healthz")[0] == 200


@pytest.mark.parametrize("head", [b"GET /metrics HTTP/1.1\r\nHost: a\r\n", b"x" * (MAX_INPUT * 4)])
async def test_an_unfinished_or_oversized_head_is_still_refused(head: bytes) -> None:
    metrics = busy_metrics(FrozenClock())
    server = AdminServer(AdminApp(metrics, lambda: True, lambda: {}), "127.0.0.1", 0, timeout=0.5)
    await server.start()
    assert server.address is not None
    reader, writer = await asyncio.open_connection(*server.address)
    try:
        writer.write(head)
        data = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
        await server.stop()
    assert data.split(b"\r\n")[0] in (b"HTTP/1.1 408 Request Timeout", b"HTTP/1.1 431 Request Header Fields Too Large")
