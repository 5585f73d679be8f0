"""The client's socket after the upgrade, read and written by scalechat itself.

aiohttp serves the HTTP side and checks the upgrade request; ``app.py`` then
takes the socket over (``listener.take_over``) and hands
it to a :class:`ClientSocket`: the asyncio protocol its transport calls, and
the :class:`~scalechat.chat.link.Link` the outbox writes to. A chunk of bytes
is parsed (:class:`scalechat.wsframes.FrameParser`, the load generator's
parser in the server's role) and its messages handled in the protocol
callback itself: no task, no queue and no wake-up per message, and no
aiohttp request, response or reader kept per connection.

Guarantees:

* messages are handled in the order they arrived, each at most once; none
  before the join is complete (they wait, and reading pauses meanwhile);
* a client over its bytes-per-second limit is read later, not dropped:
  reading pauses until its budget allows the next message (TCP pushes back on
  the sender at no cost to the server);
* every frame that breaks RFC 6455 fails the connection with the parser's
  close code (1002, 1003 binary, 1007 bad UTF-8, 1009 too big) and nothing
  after it is handled;
* a peer's close frame is answered with 1000 and the TCP connection closed
  by the server; the node is told once (``leave``) whichever way it ends;
* an idle socket is pinged; one that sends nothing for half the ping
  interval more is dropped (:class:`Heartbeat`: one timer for all sockets).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

from scalechat.chat.deflate import Deflate
from scalechat.chat.framing import control_frame
from scalechat.chat.outbox import Outbox
from scalechat.chat.protocol import CloseCode
from scalechat.wsframes import FrameParser, Opcode, Payload, encode_close

if TYPE_CHECKING:
    from scalechat.chat.node import Node

log = logging.getLogger(__name__)

_PONG_TIMEOUT_TICKS = 3  # idle ticks (half ping intervals) after which a pinged socket is dropped
_PING_TICKS = 2  # idle ticks after which a socket is pinged


class ClientSocket(asyncio.Protocol):
    """One upgraded WebSocket: parser, writer and lifecycle (see the module's guarantees)."""

    __slots__ = ("_transport", "_parser", "_deflate", "compress", "conn", "_node", "_backlog",
                 "_reserved", "_joined", "_lost", "_close_sent", "_peer_closed", "_closed", "_gone",
                 "_seen", "_idle", "_heartbeat", "_resume_handle", "_stopped")

    def __init__(self, node: Node, heartbeat: Heartbeat | None, max_message_bytes: int,
                 deflate: Deflate | None = None) -> None:
        self._node = node
        self._heartbeat = heartbeat
        self._deflate = deflate
        self.compress = deflate is not None
        self._parser = FrameParser(max_message_bytes, masked=True, text_only=True,
                                   inflater=deflate)
        self._transport: asyncio.Transport | None = None
        self.conn: Outbox | None = None
        # Messages read and not handled yet (joining, or throttled); None when there are none.
        self._backlog: collections.deque[Payload] | None = collections.deque()
        self._reserved = False  # the backlog's first message has its bytes reserved already
        self._joined = False
        self._stopped = False  # closing by our decision: read on (for the peer's close), handle nothing
        self._lost = False
        self._close_sent = False
        self._peer_closed = False
        self._closed: asyncio.Future[None] | None = None  # our close() waiting for the peer's
        self._gone: asyncio.Future[None] | None = None  # our close() waiting for the TCP close
        self._seen = True  # bytes arrived since the last heartbeat tick
        self._idle = 0  # heartbeat ticks without bytes
        self._resume_handle: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._transport.pause_reading()  # until the join is complete

    def data_received(self, data: bytes) -> None:
        self._seen = True
        parser = self._parser
        messages = parser.feed(data)
        if messages:
            if self._backlog is None:
                self._handle(messages)
            else:
                self._backlog.extend(messages)
        if parser.events and self._backlog is None:
            self._events()

    def eof_received(self) -> bool:
        return False  # close the transport: a half-closed client sends nothing more

    def connection_lost(self, exc: BaseException | None) -> None:
        self._lost = True
        if self._resume_handle is not None:
            self._resume_handle.cancel()
        for waiter in (self._closed, self._gone):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        if self._heartbeat is not None:
            self._heartbeat.discard(self)
        if self._joined:
            assert self.conn is not None
            self._node.leave_soon(self.conn)

    # --- the session ------------------------------------------------------------------

    def start(self) -> bool:
        """The join is complete: handle what was read meanwhile and read on.

        Returns False if the socket was lost before (its owner then leaves the room).
        """
        if self._lost:
            return False
        self._joined = True
        if self._heartbeat is not None:
            self._heartbeat.add(self)
        self._drain()
        return True

    def abandon(self) -> None:
        """The join failed and a close is on its way: handle nothing read, but read on for
        the peer's answer to it."""
        self._stopped = True
        if not self._lost:
            self._drain()

    def _handle(self, messages: list[Payload]) -> None:
        """Handle ``messages`` in order; the rest wait in the backlog if one is throttled."""
        conn, node = self.conn, self._node
        assert conn is not None
        throttle = conn.byte_bucket is not None
        for i, payload in enumerate(messages):
            if throttle and self._throttled(payload):
                self._backlog = collections.deque(messages[i:])
                return
            if not self._handle_one(conn, node, payload):
                return

    def _handle_one(self, conn: Outbox, node: Node, payload: Payload) -> bool:
        """One message; False if the connection is being closed (handle nothing more)."""
        if self._stopped or conn.dead:
            return False
        try:
            text = payload.decode()
        except UnicodeDecodeError:  # section 8.1
            self._fail(CloseCode.INVALID_TEXT, "text message is not valid UTF-8")
            return False
        close = node.handle_text(conn, text)
        if close is not None:
            self._stopped = True
            node.close_soon(conn, close, "rate limit exceeded persistently")
            return False
        return True

    def _throttled(self, payload: Payload) -> bool:
        """Reserve ``payload``'s bytes; if the client must wait for them, pause reading."""
        assert self.conn is not None
        delay = self._node.read_delay(self.conn, len(payload))
        if not delay:
            return False
        self._reserved = True
        self._pause(delay)
        return True

    def _pause(self, delay: float) -> None:
        assert self._transport is not None
        self._transport.pause_reading()
        self._resume_handle = asyncio.get_running_loop().call_later(delay, self._drain)

    def _drain(self) -> None:
        """Handle the backlog in order, then read on (unless a message must wait again)."""
        self._resume_handle = None
        backlog, conn, node = self._backlog, self.conn, self._node
        assert conn is not None and self._transport is not None
        throttle = conn.byte_bucket is not None
        if self._stopped and backlog:
            backlog.clear()
        while backlog:
            payload = backlog[0]
            if throttle and not self._reserved and self._throttled(payload):
                return
            self._reserved = False
            backlog.popleft()
            if not self._handle_one(conn, node, payload):
                backlog.clear()
                break
        self._backlog = None
        if self._parser.events:
            self._events()
        if not self._lost:
            self._transport.resume_reading()  # closing too: the peer's close frame is still to come

    def _events(self) -> None:
        """Pings, the peer's close, or a broken rule (the parser's events)."""
        parser = self._parser
        for opcode, payload in parser.control:
            if opcode == Opcode.PING:
                self.write(control_frame(Opcode.PONG, bytes(payload)))
        parser.control.clear()
        parser.events = False
        if parser.error is not None:
            self._fail(*parser.error)
        elif parser.close is not None:
            self._peer_closed = True
            if self._closed is not None:  # our close() was waiting for this
                if not self._closed.done():
                    self._closed.set_result(None)
            else:
                self._send_close(CloseCode.NORMAL, "")
                assert self._transport is not None
                self._transport.close()

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection (RFC 6455 section 7.1.7): a close frame, then the TCP close."""
        log.debug("failing a WebSocket with %d: %s", code, reason)
        self._node.count_violation(code)
        if self.conn is not None:
            self.conn.dead = True  # nothing more is queued or written for it
        self._send_close(code, reason)
        assert self._transport is not None
        self._transport.close()

    def _send_close(self, code: int, reason: str) -> None:
        self._stopped = True
        if not self._close_sent:
            self._close_sent = True
            self.write(control_frame(Opcode.CLOSE, encode_close(code, reason)))

    # --- the heartbeat ------------------------------------------------------------------

    def beat(self) -> None:
        """One heartbeat tick (half the ping interval): ping when idle, drop when silent."""
        if self._seen:
            self._seen, self._idle = False, 0
            return
        self._idle += 1
        if self._idle == _PING_TICKS:
            self.write(control_frame(Opcode.PING))
        elif self._idle >= _PONG_TIMEOUT_TICKS:
            log.debug("dropping a WebSocket that did not answer a ping")
            self.abort()

    # --- Link ---------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def writelines(self, parts: Sequence[bytes]) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.writelines(parts)

    def buffered(self) -> int:
        transport = self._transport
        return 0 if transport is None else transport.get_write_buffer_size()

    def send_compressed(self, payload: bytes) -> None:
        assert self._deflate is not None
        self.write(self._deflate.frame(payload))

    async def close(self, code: int, reason: str, timeout: float) -> bool:
        self._send_close(code, reason)
        loop = asyncio.get_running_loop()
        if not (self._peer_closed or self._lost):
            self._closed = loop.create_future()  # the peer's close frame, or the socket lost
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed, timeout)
        if self._lost:
            return False
        self._gone = loop.create_future()
        assert self._transport is not None
        self._transport.close()  # after what is buffered, our close frame included
        try:
            await asyncio.wait_for(self._gone, timeout)
            return False
        except TimeoutError:
            stuck = self.buffered() > 0
            self.abort()
            return stuck

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


class Heartbeat:
    """Pings idle sockets every ``interval`` and drops those silent for half of it more.

    One timer for every socket: each tick (half the interval) walks the
    sockets once, so a socket costs two attribute updates per tick and no
    timer of its own. A socket is pinged after one to one and a half
    intervals without a byte from it, and dropped (aborted, no close frame:
    it is not reading) if nothing arrives within the next half interval.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float) -> None:
        self._loop = loop
        self._tick_seconds = interval / 2
        self._sockets: set[ClientSocket] = set()
        self._handle: asyncio.TimerHandle | None = None

    def add(self, sock: ClientSocket) -> None:
        self._sockets.add(sock)
        if self._handle is None:
            self._handle = self._loop.call_later(self._tick_seconds, self._tick)

    def discard(self, sock: ClientSocket) -> None:
        self._sockets.discard(sock)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        for sock in list(self._sockets):
            sock.beat()
        self._handle = (self._loop.call_later(self._tick_seconds, self._tick)
                        if self._sockets else None)
