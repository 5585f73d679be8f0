"""The listening socket and every connection's life before the WebSocket upgrade.

aiohttp bounds the size of a request head (8190-byte lines, 128 headers) but
not the time a client takes to send it, nor how many connections may sit
unfinished: 2,000 clients sending one byte every 5 s can hold a process at its
file-descriptor limit, where neither upgrades nor ``/healthz`` get through.
:class:`HandshakeGate` bounds time, count and bytes:

* **a deadline**: a connection that has not upgraded to a WebSocket within
  ``handshake_seconds`` of being accepted is closed, whether it is still
  sending its request head, a body, or is an idle keep-alive connection;
* **a cap**: at most ``max_pending_handshakes`` such connections are kept;
  one more closes the oldest. A half-open client is always older than the
  real client that arrives after it, so the real one gets through (refusing
  the newest instead would let a few held sockets lock everyone out);
* **a byte budget**: a connection that sends more than
  ``max_handshake_bytes`` before upgrading is closed. aiohttp's own limits
  let one request head reach 1 MB (128 headers of 8190 bytes), and 200 such
  heads held 390 MB of RSS; with the budget, pending connections hold at most
  ``max_pending_handshakes`` x ``max_handshake_bytes`` of input.

Closed connections are counted (``scalechat_handshakes_closed_total``) and
logged in one line per interval, never one per connection.

:class:`GatedRequestHandler` is aiohttp's per-connection protocol with three
additions: it reports to the gate when it opens, upgrades, closes or has sent
too much; at the upgrade it hands the socket over to scalechat's own protocol
(:func:`take_over`) and lets go of it; and it answers a
malformed HTTP request with a 400 of our own wording, logged like the closures
instead of with a traceback per request.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import (BadHttpMethod, BadStatusLine, HttpProcessingError,
                                     InvalidHeader, InvalidURLError, LineTooLong)
from prometheus_client import CollectorRegistry, Counter, Gauge

from scalechat.chat.settings import Settings

log = logging.getLogger("scalechat.chat.listener")

LOG_INTERVAL_SECONDS = 10.0
# Connections the kernel queues until accept(). aiohttp's default of 128 overflows
# under a connection flood, and a SYN dropped then waits 1 s for its retransmission:
# a real client's p99 went from 0.3 s to 1.7 s in bench/slowloris.py.
BACKLOG = 1024


class IntervalLog:
    """One log line per interval for a stream of similar events.

    The first event after a quiet interval is logged at once; later ones are
    counted by kind and logged together when the interval since the last line
    has passed.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, level: int, what: str,
                 suffix: Callable[[], str] = lambda: "",
                 interval: float = LOG_INTERVAL_SECONDS) -> None:
        self._loop, self._level, self._what, self._suffix = loop, level, what, suffix
        self._interval = interval
        self._counts: collections.Counter[str] = collections.Counter()
        self._latest = ""
        self._since = 0.0
        self._last_line = -interval
        self._timer: asyncio.TimerHandle | None = None

    def note(self, kind: str, detail: str = "") -> None:
        now = self._loop.time()
        if not self._counts:
            self._since = now
        self._counts[kind] += 1
        self._latest = detail
        if now - self._last_line >= self._interval:
            self._flush()
        elif self._timer is None:
            self._timer = self._loop.call_at(self._last_line + self._interval, self._flush)

    def _flush(self) -> None:
        self._timer = None
        if not self._counts:
            return
        self._last_line = now = self._loop.time()
        kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(self._counts.items()))
        latest = f"; the latest {self._latest}" if self._latest else ""
        log.log(self._level, "%s: %d in %.1f s (%s)%s%s", self._what, self._counts.total(),
                now - self._since, kinds, latest, self._suffix())
        self._counts.clear()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._flush()


class HandshakeGate:
    """Connections accepted and not yet upgraded, oldest first, each with its deadline."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float, limit: int,
                 max_bytes: int, registry: CollectorRegistry) -> None:
        self._loop, self._timeout, self._limit = loop, timeout, limit
        self.max_bytes = max_bytes
        self._pending: dict[web.RequestHandler, float] = {}  # insertion order is deadline order
        self._timer: asyncio.TimerHandle | None = None
        self.closed = Counter(
            "scalechat_handshakes_closed_total",
            "Connections closed before the WebSocket upgrade: 'timeout' (not upgraded within "
            "handshake_seconds of being accepted), 'overflow' (the oldest, when more than "
            "max_pending_handshakes were waiting) or 'too_big' (sent more than "
            "max_handshake_bytes).", ["reason"], registry=registry)
        for reason in ("timeout", "overflow", "too_big"):
            self.closed.labels(reason=reason)
        Gauge("scalechat_pending_handshakes",
              "Connections accepted and not yet upgraded (plain HTTP included).",
              registry=registry).set_function(lambda: len(self._pending))
        self.malformed = Counter("scalechat_http_malformed_requests_total",
                                 "HTTP requests answered with 400 because they could not be parsed.",
                                 registry=registry)
        self.closures_log = IntervalLog(
            loop, logging.WARNING, "connections closed before the WebSocket upgrade",
            lambda: f"; {len(self._pending)} pending (limit {limit}, deadline {timeout:g} s)")
        self.malformed_log = IntervalLog(loop, logging.INFO,
                                         "malformed HTTP requests answered with 400")

    def opened(self, handler: web.RequestHandler) -> None:
        self._pending[handler] = self._loop.time() + self._timeout
        if self._timer is None:
            self._arm()
        if len(self._pending) > self._limit:
            self._drop(next(iter(self._pending)), "overflow")

    def done(self, handler: web.RequestHandler) -> None:
        """Upgraded or closed: no longer pending."""
        self._pending.pop(handler, None)

    def too_big(self, handler: web.RequestHandler) -> None:
        """``handler`` received more than ``max_bytes`` before its upgrade."""
        self._drop(handler, "too_big")

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.closures_log.close()
        self.malformed_log.close()

    def _arm(self) -> None:
        if self._pending:
            self._timer = self._loop.call_at(next(iter(self._pending.values())), self._expire)
        else:
            self._timer = None

    def _expire(self) -> None:
        now = self._loop.time()
        pending = self._pending
        while pending:
            handler, deadline = next(iter(pending.items()))
            if deadline > now:
                break
            self._drop(handler, "timeout")
        self._arm()

    def _drop(self, handler: web.RequestHandler, reason: str) -> None:
        self._pending.pop(handler, None)
        if handler.transport is not None:
            handler.transport.abort()  # close() would wait for a client that does not read
        handler.force_close()
        self.closed.labels(reason=reason).inc()
        self.closures_log.note(reason)

    def note_malformed(self, remote: str | None, exc: HttpProcessingError) -> str:
        """Count a request aiohttp could not parse; return the reason for the 400 body."""
        reason = _malformed_reason(exc)
        self.malformed.inc()
        self.malformed_log.note(reason, f"from {remote}")
        return reason


def _malformed_reason(exc: HttpProcessingError) -> str:
    # Our own words: aiohttp's messages quote the client's bytes back in Python reprs.
    if isinstance(exc, LineTooLong):
        return "request line or header too long"
    if isinstance(exc, BadHttpMethod):
        return "invalid method"
    if isinstance(exc, BadStatusLine):
        return "invalid request line"
    if isinstance(exc, InvalidHeader):
        return "invalid header"
    if isinstance(exc, InvalidURLError):
        return "invalid URL"
    return "malformed request head"


class GatedRequestHandler(web.RequestHandler):
    """aiohttp's connection protocol, reporting to a :class:`HandshakeGate`."""

    __slots__ = ("_gate", "_bytes_left", "_taken_over")

    def __init__(self, manager: web.Server, gate: HandshakeGate, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._gate = gate
        self._bytes_left: int | None = gate.max_bytes  # None once upgraded
        self._taken_over = False

    def data_received(self, data: bytes) -> None:
        if self._bytes_left is not None:
            self._bytes_left -= len(data)
            if self._bytes_left < 0:
                self._gate.too_big(self)
                return
        super().data_received(data)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._gate.opened(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._gate.done(self)
        super().connection_lost(exc)

    def let_go(self) -> None:
        """The socket is taken over (:func:`take_over`): no longer pending, nothing more to write."""
        self._gate.done(self)
        self._bytes_left = None
        self._taken_over = True

    async def finish_response(self, request: Any, resp: web.StreamResponse,
                              start_time: float | None) -> tuple[web.StreamResponse, bool]:
        if self._taken_over:
            return resp, True
        return await super().finish_response(request, resp, start_time)

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if status == 400 and isinstance(exc, HttpProcessingError):
            reason = self._gate.note_malformed(request.remote, exc)
            response = web.Response(status=400, text=f"malformed HTTP request: {reason}\n")
            response.force_close()
            return response
        return super().handle_error(request, status, exc, message)


def take_over(handler: web.RequestHandler, protocol: asyncio.Protocol, head: bytes) -> None:
    """Write ``head`` (the 101 response) and give ``handler``'s socket to ``protocol``.

    The bytes the client sent after its upgrade request go to
    ``protocol.data_received``; from then on the transport calls ``protocol``
    only. ``handler`` lets go: it leaves the server's connection list (and
    the gate), closes nothing, and writes nothing more, whatever its request
    handler returns (a plain RequestHandler's attempt fails quietly on the
    transport it no longer has).
    """
    transport = handler.transport
    assert transport is not None, "take_over() during the request, before any await that may lose it"
    if isinstance(handler, GatedRequestHandler):
        handler.let_go()
    # aiohttp's private state: the bytes after the upgrade request, and what would close the
    # transport when the request handler returns (start() closes nothing once _force_close).
    tail, handler._message_tail = handler._message_tail, b""
    handler._force_close = True
    if handler._keepalive_handle is not None:
        handler._keepalive_handle.cancel()
        handler._keepalive_handle = None
    if handler._manager is not None:
        handler._manager.connection_lost(handler, None)
    handler.transport = None
    transport.write(head)
    transport.set_protocol(protocol)
    protocol.connection_made(transport)
    if tail:
        protocol.data_received(tail)


async def listen(runner: web.AppRunner, settings: Settings,
                 registry: CollectorRegistry) -> tuple[asyncio.Server, HandshakeGate]:
    """Listen on ``settings.host:port``; every connection goes through the gate.

    Used instead of ``web.TCPSite`` because a site builds aiohttp's own
    RequestHandler. ``runner`` must be set up; close the returned server before
    ``runner.cleanup()``.
    """
    loop = asyncio.get_running_loop()
    gate = HandshakeGate(loop, settings.handshake_seconds, settings.max_pending_handshakes,
                         settings.max_handshake_bytes, registry)
    server = runner.server
    assert server is not None, "runner.setup() first"

    def protocol() -> GatedRequestHandler:
        return GatedRequestHandler(server, gate, loop=loop, access_log=None)

    listener = await loop.create_server(protocol, settings.host, settings.port,
                                        reuse_address=True, backlog=BACKLOG)
    return listener, gate
