"""A lean WebSocket client for the load generator's receive hot path.

A general-purpose client (aiohttp's ``ws_connect``, ``websockets``) wakes a
task and builds a message object per received frame. Here a bare
:class:`asyncio.Protocol` (works under uvloop) hands each ``data_received``
chunk to a sans-I/O :class:`FrameParser` and passes the complete payloads
straight to a callback, so the per-message Python work is one header decode
and one slice.

Layers, one way only::

    wsprotocol: handshake helpers, FrameParser,     (bytes in, bytes/events out; no I/O)
                encode_frame
                ^
    WSClient (asyncio.Protocol)                     (moves bytes, runs timers)
                ^
    connect()                                       (opens TCP, does the handshake)

Guarantees:

* Each complete data message (text or binary; fragmented ones reassembled,
  RFC 6455 section 5.4) is delivered exactly once, in arrival order, as the
  raw payload ``bytes``. Nothing is decoded: no UTF-8 check, no JSON.
* Pings are answered with a pong carrying the same payload (section 5.5.2).
* ``WSClient.closed`` always resolves, never raises: to the code and reason of
  the server's close frame, to the code the client sent when it failed the
  connection itself (1002, 1007, 1009), or to 1006 when the TCP connection
  ended without a close frame (section 7.1.5).

Errors (defined in wsprotocol, re-exported here)::

    Exception
    +-- ValueError            bad URL (e.g. wss://), bad close code
    +-- OSError               refused / reset; ConnectionError on EOF mid-handshake
    +-- TimeoutError          connect + handshake exceeded ``timeout``
    +-- WSClientError
        +-- HandshakeError    the server answered the upgrade with a non-101 status
        +-- ProtocolError     the 101 response is invalid (bad accept key, ...)
        +-- ConnectionClosed  send or recv after the connection closed
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Callable, Mapping

from scalechat.loadgen import wsprotocol
from scalechat.loadgen.wsprotocol import (
    DEFAULT_MAX_MESSAGE_SIZE,
    MAX_HEAD_SIZE,
    CloseCode,
    CloseInfo,
    ConnectionClosed,
    FrameParser,
    HandshakeError,
    Opcode,
    ProtocolError,
    WSClientError,  # noqa: F401  (re-exported)
    build_request,
    check_upgrade,
    dechunk,
    encode_close,
    encode_frame,
    parse_response_head,
    parse_ws_url,
    valid_close_code,
    xor_mask,  # noqa: F401  (re-exported)
)

# The wire-level names are re-exported: callers need one import.
__all__ = [*wsprotocol.__all__, "WSClient", "connect"]


# --------------------------------------------------------------------------- asyncio shell

_EOF = object()  # recv() queue sentinel


class WSClient(asyncio.Protocol):
    """One client connection; create it with :func:`connect`.

    Received messages go to exactly one sink, fixed at connect time:
    ``on_messages(list_of_payloads)`` (called once per TCP read with every
    message that read completed, the cheapest), else ``on_message(payload)``
    per message, else an unbounded queue read by :meth:`recv`. Callbacks run
    inside ``data_received``: they must not block, and an exception they raise
    makes the event loop abort the connection (``closed`` gives 1006).

    An optional ``scan(data, pos) -> end`` sees each read first, whenever the
    parser is between frames: it takes ``data[pos:end]``, complete, final,
    unmasked data frames only, which it handled itself (so the sink never
    sees them); the parser gets the rest. A frame split across reads is
    joined first and offered to ``scan`` whole. The load generator's C
    receive path (:mod:`scalechat.loadgen._fastscan`) plugs in here.
    """

    def __init__(
        self,
        *,
        key: str,
        on_message: Callable[[bytes], object] | None,
        on_messages: Callable[[list[bytes]], object] | None,
        max_message_size: int,
        close_timeout: float,
        scan: Callable[[bytes], int] | None = None,
    ) -> None:
        if scan is not None and max_message_size < 0xFFFF:
            raise ValueError("scan needs max_message_size >= 65535: it takes frames of up to 65535 bytes")
        loop = asyncio.get_running_loop()
        self._scan = scan
        self._loop = loop
        self._key = key
        self._parser = FrameParser(max_message_size)
        self._close_timeout = close_timeout
        self._queue: asyncio.Queue[object] | None = None
        self._deliver: Callable[[list[bytes]], object]
        if on_messages is not None:
            self._deliver = on_messages
        elif on_message is not None:

            def deliver(messages: list[bytes]) -> None:
                for message in messages:
                    on_message(message)

            self._deliver = deliver
        else:
            queue: asyncio.Queue[object] = asyncio.Queue()
            self._queue = queue

            def enqueue(messages: list[bytes]) -> None:
                for message in messages:
                    queue.put_nowait(message)

            self._deliver = enqueue
        self._transport: asyncio.Transport | None = None
        self._open = False  # handshake done, frames flow
        self._head = bytearray()  # handshake response bytes so far
        self._headers: dict[str, str] = {}
        self._reject_status = 0
        self._handshake: asyncio.Future[None] = loop.create_future()
        self._close_sent = False
        self._close_timer: asyncio.TimerHandle | None = None
        self._sent_close_info: CloseInfo | None = None  # set when we fail the connection
        #: Resolves once the TCP connection is gone; see the module docstring.
        self.closed: asyncio.Future[CloseInfo] = loop.create_future()

    # ---- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport

    def data_received(self, data: bytes) -> None:
        if not self._open:
            return self._handshake_data(data)
        parser = self._parser
        if self._scan is not None:
            data = self._scan_prefix(data)
            if not data:
                if parser.events:
                    self._handle_events()
                return
        messages = parser.feed(data)
        if messages:
            self._deliver(messages)
        if parser.events:
            self._handle_events()

    def _scan_prefix(self, data: bytes) -> bytes:
        """Let ``scan`` take what it can, a split frame included; return the rest for the parser."""
        parser = self._parser
        scan = self._scan
        pos = 0
        if not parser.idle:
            need = parser.bytes_to_finish(data)
            if not need or need > len(data) or parser.fragmented:
                return data  # done, the split frame goes on, or inside a fragmented message
            frame = parser.take_pending() + data[:need]
            if scan(frame, 0) != len(frame):  # type: ignore[misc]
                messages = parser.feed(frame)
                if messages:
                    self._deliver(messages)
                if not parser.idle:
                    return data[need:]
            pos = need
        if pos < len(data):
            pos = scan(data, pos)  # type: ignore[misc]
        return data[pos:] if pos else data

    def connection_lost(self, exc: Exception | None) -> None:
        if self._close_timer is not None:
            self._close_timer.cancel()
        self._open = False
        self._close_sent = True  # nothing can be sent any more
        if not self._handshake.done():
            self._handshake_ended(exc)
        parser = self._parser
        info = parser.close or self._sent_close_info or CloseInfo(CloseCode.ABNORMAL, str(exc or ""))
        if not self.closed.done():
            self.closed.set_result(info)
        if self._queue is not None:
            self._queue.put_nowait(_EOF)

    def eof_received(self) -> None:
        return None  # close the transport: the server ended the TCP stream

    # ---- public API

    def send_text(self, data: bytes | str) -> None:
        """Write one masked text frame now (no await); raises ConnectionClosed once closing."""
        if self._close_sent:
            raise self._closed_error()
        if isinstance(data, str):
            data = data.encode()
        self._transport.write(encode_frame(Opcode.TEXT, data))  # type: ignore[union-attr]

    def write_buffer_size(self) -> int:
        """Bytes written but not yet accepted by the kernel: the sender's backpressure signal."""
        return 0 if self._transport is None else self._transport.get_write_buffer_size()

    def pause_reading(self) -> None:
        """Stop reading the socket (simulates a slow consumer; the server's buffer fills)."""
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._transport is not None:
            self._transport.resume_reading()

    async def recv(self) -> bytes:
        """Next message payload; raises ConnectionClosed after the last one.

        Only available when neither ``on_message`` nor ``on_messages`` was given.
        """
        if self._queue is None:
            raise RuntimeError("recv() is unavailable: messages go to the on_message(s) callback")
        item = await self._queue.get()
        if item is _EOF:
            self._queue.put_nowait(_EOF)  # later calls raise too
            raise self._closed_error()
        return item  # type: ignore[return-value]

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> CloseInfo:
        """Start the closing handshake (section 7.1.2) and wait for the connection to end.

        Waits at most ``close_timeout`` for the server's close frame and its TCP
        close (the server closes TCP first, so TIME_WAIT stays on its side,
        section 7.1.1), then aborts. Returns ``closed``'s result.
        """
        if not valid_close_code(code):
            raise ValueError(f"close code {code} may not be sent (RFC 6455 section 7.4)")
        if not self._close_sent and self._transport is not None:
            self._send_close(code, reason)
        return await asyncio.shield(self.closed)

    async def __aenter__(self) -> WSClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ---- internals

    def _handle_events(self) -> None:
        parser = self._parser
        transport = self._transport
        assert transport is not None
        if parser.control:
            for opcode, payload in parser.control:
                if opcode == Opcode.PING and not self._close_sent:
                    transport.write(encode_frame(Opcode.PONG, payload))
            parser.control.clear()
        if parser.error is not None:  # fail the connection (section 7.1.7)
            self._sent_close_info = parser.error
            if not self._close_sent:
                self._send_close(*parser.error)
            transport.close()  # flushes the close frame first
        elif parser.close is not None and not self._close_sent:
            # Echo the code (section 5.5.1). The server closes TCP next
            # (section 7.1.1); the close timer covers a server that does not.
            self._send_close(parser.close.code, "")
        parser.events = False

    def _send_close(self, code: int, reason: str) -> None:
        assert self._transport is not None
        self._close_sent = True
        self._transport.write(encode_frame(Opcode.CLOSE, encode_close(code, reason)))
        self._close_timer = self._loop.call_later(self._close_timeout, self._transport.abort)

    def _closed_error(self) -> ConnectionClosed:
        if self.closed.done():
            return ConnectionClosed(*self.closed.result())
        return ConnectionClosed(*(self._parser.close or self._sent_close_info or (CloseCode.ABNORMAL, "closing")))

    def _handshake_data(self, data: bytes) -> None:
        head = self._head
        head += data
        if self._reject_status:  # collecting the body of a rejection
            return self._try_reject()
        end = head.find(b"\r\n\r\n")
        if end < 0:
            if len(head) > MAX_HEAD_SIZE:
                self._handshake_failed(ProtocolError("HTTP response head too large"))
            return
        try:
            status, self._headers = parse_response_head(bytes(head[:end]))
            if status == 101:
                check_upgrade(self._headers, self._key)
        except ProtocolError as exc:
            return self._handshake_failed(exc)
        rest = bytes(head[end + 4 :])
        del head[:]
        if status != 101:
            self._reject_status = status
            head += rest
            return self._try_reject()
        self._open = True
        self._handshake.set_result(None)
        if rest:
            self.data_received(rest)

    def _try_reject(self, at_eof: bool = False) -> None:
        """Raise HandshakeError once the rejection body is complete (or the server hung up)."""
        body: bytes | None = bytes(self._head)
        if "chunked" in self._headers.get("transfer-encoding", "").lower():
            decoded = dechunk(body)  # type: ignore[arg-type]
            body = decoded if decoded is not None or not at_eof else body
        elif self._headers.get("content-length", "").isdigit():
            length = int(self._headers["content-length"])
            body = body[:length] if len(body) >= length or at_eof else None
        elif not at_eof and len(body) < MAX_HEAD_SIZE:
            body = None  # body runs to EOF
        if body is not None:
            text = body[:MAX_HEAD_SIZE].decode("utf-8", "replace")
            self._handshake_failed(HandshakeError(self._reject_status, text))

    def _handshake_ended(self, exc: Exception | None) -> None:
        if self._reject_status:
            self._try_reject(at_eof=True)
        if not self._handshake.done():
            exc = exc or ConnectionResetError("connection closed during the WebSocket handshake")
            self._handshake.set_exception(exc)

    def _handshake_failed(self, exc: Exception) -> None:
        if not self._handshake.done():
            self._handshake.set_exception(exc)
        if self._transport is not None:
            self._transport.abort()


async def connect(
    url: str,
    *,
    on_message: Callable[[bytes], object] | None = None,
    on_messages: Callable[[list[bytes]], object] | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    close_timeout: float = 5.0,
    scan: Callable[[bytes], int] | None = None,
    local_addr: tuple[str, int] | None = None,
) -> WSClient:
    """Open ``ws://host[:port]/path?query`` and complete the opening handshake.

    ``headers`` are added to the upgrade request (e.g. ``{"Origin": ...}``).
    ``timeout`` bounds TCP connect plus handshake (TimeoutError). Raises
    ValueError for a non-ws:// URL, OSError if the connection fails,
    HandshakeError(status, body) if the server refuses the upgrade and
    ProtocolError if its 101 response is invalid. A message larger than
    ``max_message_size`` fails the connection with 1009. Give at most one of
    ``on_message`` and ``on_messages``; with neither, read with ``recv()``.
    ``scan`` is the prefix hook described in :class:`WSClient`. ``local_addr``
    binds the socket's source address (past about 28,000 connections to one
    server port, each source address needs its own range of ephemeral ports).
    """
    if on_message is not None and on_messages is not None:
        raise ValueError("give on_message or on_messages, not both")
    host, port, resource, host_header = parse_ws_url(url)
    key = base64.b64encode(os.urandom(16)).decode()
    request = build_request(resource, host_header, key, headers)
    loop = asyncio.get_running_loop()

    def factory() -> WSClient:
        return WSClient(
            key=key,
            on_message=on_message,
            on_messages=on_messages,
            max_message_size=max_message_size,
            close_timeout=close_timeout,
            scan=scan,
        )

    async with asyncio.timeout(timeout):
        transport, client = await loop.create_connection(factory, host, port, local_addr=local_addr)
        try:
            transport.write(request)
            await client._handshake
        except BaseException:
            transport.abort()
            raise
    return client
