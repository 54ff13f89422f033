"""Channel: a lean byte stream over one transport, read by a single coroutine.

asyncio's StreamReader/StreamWriter pair costs several Python frames and a future per
read; the proxy's hot path reads a request head, writes it on, reads a response head
and writes it back, so it uses this smaller Protocol instead: data lands in one
bytearray, at most one coroutine waits on it, writes go straight to the transport and
`drain()` honours the transport's flow control. Two channels can also be `link`ed into a
callback-driven byte pump (tunnels, WebSockets) that never wakes a coroutine.

Timeouts are deadlines (`deadline`, loop time) checked by a `Deadlines` sweeper rather
than a timer per read, so an idle keep-alive connection costs nothing per request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

#: Pause reading from the socket once this much unread data is buffered.
READ_LIMIT = 256 * 1024


class ChannelClosed(ConnectionError):
    """The peer went away (or the channel was aborted) while we waited on it."""


class DeadlineExpired(TimeoutError):
    """The channel's deadline passed while a coroutine waited on it."""


class HeadTooLarge(ValueError):
    """No end of the header block within the allowed size."""


class Channel(asyncio.Protocol):
    """One connection's bytes: a read buffer, one waiting reader, flow-controlled writes."""

    __slots__ = (
        "_drain_waiter",
        "_pump_done",
        "_read_paused",
        "_waiter",
        "_write_paused",
        "buf",
        "closed",
        "deadline",
        "eof",
        "expired",
        "keep_open_on_eof",
        "loop",
        "on_lost",
        "peer",
        "transport",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.eof = False
        self.closed = False
        self._waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._write_paused = False
        self._read_paused = False
        self.peer: Channel | None = None  # set while linked into a byte pump
        self.deadline = 0.0  # loop time after which a waiting reader gets DeadlineExpired; 0 = none
        self.expired = False
        self.on_lost: Callable[[Channel], None] | None = None
        self.keep_open_on_eof = False  # only plain TCP can half-close; TLS transports cannot
        self._pump_done: asyncio.Future[None] | None = None

    # -- asyncio.Protocol -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None:  # byte pump: straight across, no coroutine involved
            if not peer.closed:
                peer.transport.write(data)  # type: ignore[union-attr]
            return
        self.buf += data
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)
        if len(self.buf) > READ_LIMIT and not self._read_paused and self.transport is not None:
            self._read_paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        self.eof = True
        peer = self.peer
        if peer is not None and not peer.closed:
            if peer.eof:  # both directions finished: nothing left to carry
                peer.transport.close()  # type: ignore[union-attr]
                self.transport.close()  # type: ignore[union-attr]
            elif peer.keep_open_on_eof and peer.transport.can_write_eof():  # type: ignore[union-attr]
                peer.transport.write_eof()  # type: ignore[union-attr]
            else:
                peer.transport.close()  # type: ignore[union-attr]
        self._wake()
        return True if self.keep_open_on_eof else None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.eof = True
        self._wake()
        drain = self._drain_waiter
        if drain is not None:
            self._drain_waiter = None
            if not drain.done():
                drain.set_exception(ChannelClosed("connection lost"))
        peer = self.peer
        if peer is not None and not peer.closed:
            peer.transport.close()  # type: ignore[union-attr]  # flushes what is buffered first
        done = self._pump_done  # shared by both linked channels: resolves when the second one closes
        if done is not None and not done.done() and (peer is None or peer.closed):
            done.set_result(None)
        if self.on_lost is not None:
            self.on_lost(self)

    def pause_writing(self) -> None:
        self._write_paused = True
        peer = self.peer
        if peer is not None and not peer.closed:
            peer.transport.pause_reading()  # type: ignore[union-attr]

    def resume_writing(self) -> None:
        self._write_paused = False
        peer = self.peer
        if peer is not None and not peer.closed:
            peer.transport.resume_reading()  # type: ignore[union-attr]
        drain = self._drain_waiter
        if drain is not None:
            self._drain_waiter = None
            if not drain.done():
                drain.set_result(None)

    # -- reading ----------------------------------------------------------------------
    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def expire(self) -> None:
        """Called by the sweeper once `deadline` has passed: fail the waiting reader."""
        self.expired = True
        self.deadline = 0.0
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_exception(DeadlineExpired())

    def take(self, n: int) -> bytes:
        """Remove and return up to `n` buffered bytes."""
        buf = self.buf
        if n >= len(buf):
            data = bytes(buf)
            buf.clear()
        else:
            data = bytes(buf[:n])
            del buf[:n]
        if self._read_paused and len(buf) <= READ_LIMIT // 2:
            self._read_paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]
        return data

    async def read_exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            if self.eof:
                raise ChannelClosed("stream ended early")
            await self.wait_data_more(len(self.buf))
        return self.take(n)

    async def wait_data_more(self, have: int = 0) -> None:
        """Wait until more than `have` bytes are buffered, or end of stream."""
        if len(self.buf) > have or self.eof:
            return
        if self.expired:
            raise DeadlineExpired()
        if self._read_paused:
            self._read_paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]
        waiter = self.loop.create_future()
        self._waiter = waiter
        try:
            await waiter
        finally:
            self._waiter = None

    #: Return once the buffer is non-empty or the peer has finished sending.
    wait_data = wait_data_more

    async def read_line(self, max_size: int) -> bytes:
        """One CRLF-terminated line (without the CRLF)."""
        start = 0
        while True:
            i = self.buf.find(b"\r\n", start)
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[: i + 2]
                return line
            if len(self.buf) > max_size:
                raise HeadTooLarge("line too long")
            if self.eof:
                raise ChannelClosed("stream ended inside a line")
            start = max(0, len(self.buf) - 1)
            await self.wait_data_more(len(self.buf))

    async def read_head(
        self, max_size: int, first_byte_deadline: float = 0.0, head_deadline: float = 0.0
    ) -> bytes | None:
        """A complete header block up to and including CRLFCRLF, or None on a clean EOF.

        `first_byte_deadline` bounds the wait for the first byte (keep-alive idle time);
        once bytes arrive, `head_deadline` (relative seconds) bounds the rest of the head.
        """
        buf = self.buf
        # RFC 9112 2.2: a server SHOULD ignore at least one empty line before a request.
        while buf[:2] == b"\r\n":
            del buf[:2]
        i = buf.find(b"\r\n\r\n")
        if i >= 0:
            head = bytes(buf[: i + 4])
            del buf[: i + 4]
            return head
        loop_time = self.loop.time
        if not buf:
            if self.eof:
                return None
            self.deadline = loop_time() + first_byte_deadline if first_byte_deadline else 0.0
            await self.wait_data()
            while buf[:2] == b"\r\n":
                del buf[:2]
            if not buf and self.eof:
                self.deadline = 0.0
                return None
        self.deadline = loop_time() + head_deadline if head_deadline else 0.0
        start = 0
        while True:
            i = buf.find(b"\r\n\r\n", start)
            if i >= 0:
                self.deadline = 0.0
                head = bytes(buf[: i + 4])
                del buf[: i + 4]
                return head
            i = buf.find(b"\n\n")
            if i >= 0:  # bare-LF line endings: hand the head over so the parser rejects it now
                self.deadline = 0.0
                head = bytes(buf[: i + 2])
                del buf[: i + 2]
                return head
            if len(buf) > max_size:
                self.deadline = 0.0
                raise HeadTooLarge("header block too large")
            if self.eof:
                self.deadline = 0.0
                raise ChannelClosed("stream ended inside the header block")
            start = max(0, len(buf) - 3)
            await self.wait_data_more(len(buf))

    # -- writing ----------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(data)  # type: ignore[union-attr]

    async def drain(self) -> None:
        if self.closed:
            raise ChannelClosed("connection lost")
        if not self._write_paused:
            return
        waiter = self.loop.create_future()
        self._drain_waiter = waiter
        await waiter

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.abort()

    # -- byte pump --------------------------------------------------------------------
    def pump_done(self) -> asyncio.Future[None]:
        if self._pump_done is None:
            self._pump_done = self.loop.create_future()
        return self._pump_done


class Deadlines:
    """Sweeps registered channels and expires those whose deadline has passed.

    One periodic callback for the whole process instead of a timer per read.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float = 0.5) -> None:
        self.loop = loop
        self.interval = interval
        self.channels: set[Channel] = set()
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._handle = self.loop.call_later(self.interval, self._sweep)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _sweep(self) -> None:
        now = self.loop.time()
        for ch in [c for c in self.channels if 0.0 < c.deadline <= now]:
            ch.expire()
        self._handle = self.loop.call_later(self.interval, self._sweep)


def link(a: Channel, b: Channel) -> asyncio.Future[None]:
    """Pump bytes both ways between two channels until both are closed.

    Whatever is already buffered on either side is flushed across first. Flow control
    is symmetric: when one side's transport cannot take more, the other stops reading.
    Returns a future that resolves once both connections are closed.
    """
    a.peer, b.peer = b, a
    done = a.pump_done()
    b._pump_done = done
    for src, dst in ((a, b), (b, a)):
        if src.buf:
            dst.write(bytes(src.buf))
            src.buf.clear()
        if src._read_paused and not src.closed:
            src._read_paused = False
            src.transport.resume_reading()  # type: ignore[union-attr]
    for src, dst in ((a, b), (b, a)):
        if src.closed:
            dst.close()
        elif src.eof:
            if dst.keep_open_on_eof and not dst.closed and dst.transport.can_write_eof():  # type: ignore[union-attr]
                dst.transport.write_eof()  # type: ignore[union-attr]
            else:
                dst.close()
    if a.closed and b.closed and not done.done():
        done.set_result(None)
    return done
