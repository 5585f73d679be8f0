"""The node joins the hub (local sockets) and the broker (seq, history, other replicas).

It knows nothing of HTTP: the transport (``app.py``) hands it connections and
text frames, and closes sockets when told to.
"""

from __future__ import annotations

import asyncio
import logging
import time

from scalechat.chat.broker import Broker, Draft
from scalechat.chat.connection import Connection
from scalechat.chat.errors import BrokerUnavailable, ProtocolError
from scalechat.chat.hub import Hub
from scalechat.chat.metrics import Metrics
from scalechat.chat.protocol import (CloseCode, ErrorCode, encode_error, encode_history,
                                     encode_presence, extract_cid, parse_client_frame)
from scalechat.chat.framing import frame_text
from scalechat.chat.settings import Settings

log = logging.getLogger(__name__)


class Node:
    def __init__(self, settings: Settings, broker: Broker, metrics: Metrics, hub: Hub) -> None:
        self.settings = settings
        self.broker = broker
        self.metrics = metrics
        self.hub = hub
        self.name = settings.node_name
        self._closing: set[asyncio.Task] = set()
        self._room_locks: dict[str, asyncio.Lock] = {}

    async def start(self) -> None:
        await self.broker.start(self._deliver, self._deliver_event)

    async def close(self) -> None:
        await self.broker.close()

    # --- broker callbacks ---------------------------------------------------------

    def _deliver(self, room: str, seq: int, payload: bytes, received_at: float) -> None:
        delivered = self.hub.broadcast(room, payload, seq, received_at)
        if delivered:
            self.metrics.delivered += delivered

    def _deliver_event(self, room: str, payload: bytes) -> None:
        self.hub.broadcast(room, payload)

    # --- membership ---------------------------------------------------------------

    async def join(self, conn: Connection, since: int | None, epoch: str | None) -> None:
        """Add ``conn``: history first, then live messages, with no gap and no repeat."""
        conn.hold()
        async with self._room_lock(conn.room):
            if self.hub.add(conn) == 1:
                await self.broker.subscribe(conn.room)
        history = await self.broker.history(conn.room, since, epoch, self.settings.history_on_join)
        frame = encode_history(conn.room, history.epoch, history.last_seq, conn.name, self.name,
                               history.continuity_lost, history.messages)
        conn.release(frame_text(frame), history.last_seq)
        await self._announce(conn, "join", +1)

    async def leave(self, conn: Connection) -> None:
        async with self._room_lock(conn.room):
            if self.hub.remove(conn) == 0:
                await self.broker.unsubscribe(conn.room)
        await self._announce(conn, "leave", -1)

    def _room_lock(self, room: str) -> asyncio.Lock:
        # Serialises subscribe/unsubscribe of one room; dropped when unused.
        lock = self._room_locks.get(room)
        if lock is None:
            lock = self._room_locks[room] = _RoomLock(self._room_locks, room)
        return lock

    async def _announce(self, conn: Connection, event: str, delta: int) -> None:
        try:
            count = await self.broker.presence(conn.room, delta)
            await self.broker.publish_event(conn.room, encode_presence(conn.room, event, conn.name, count))
        except BrokerUnavailable:
            log.warning("presence %s for room %s not announced: broker unavailable", event, conn.room)

    # --- client frames ------------------------------------------------------------

    async def handle_text(self, conn: Connection, text: str) -> CloseCode | None:
        """Handle one client text frame; return a close code if the socket must close."""
        received_at = time.perf_counter()
        if not conn.bucket.allow(received_at):
            self._reject(conn, ErrorCode.RATE_LIMITED, "rate limit exceeded: message dropped",
                         extract_cid(text))
            if conn.bucket.consecutive_drops >= self.settings.rate_burst:
                return CloseCode.POLICY_VIOLATION
            return None
        try:
            request = parse_client_frame(text, self.settings.max_text_chars)
        except ProtocolError as exc:
            self._reject(conn, exc.code, exc.reason, extract_cid(text))
            return None
        try:
            await self.broker.publish(Draft(conn.room, conn.name, request.text, request.cid, received_at))
        except BrokerUnavailable:
            self._reject(conn, ErrorCode.UNAVAILABLE,
                         "message not stored: the broker is unavailable; retry later", request.cid)
            return None
        self.metrics.received += 1
        return None

    def _reject(self, conn: Connection, code: ErrorCode, reason: str, cid: str | None) -> None:
        self.metrics.rejected.labels(reason=code.value).inc()
        conn.push(frame_text(encode_error(code, reason, cid)))

    # --- closing ------------------------------------------------------------------

    def condemn_slow(self, conn: Connection) -> None:
        """Overflow callback: close with 1013 without blocking the broadcast."""
        self.metrics.slow_consumers.inc()
        self.close_soon(conn, CloseCode.TRY_AGAIN_LATER, "slow consumer")

    def close_soon(self, conn: Connection, code: CloseCode, reason: str) -> None:
        task = asyncio.get_running_loop().create_task(self.close_connection(conn, code, reason))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close_connection(self, conn: Connection, code: CloseCode, reason: str,
                               timeout: float = 5.0) -> None:
        """Send what is queued, then a close frame; abort if the peer does not finish in ``timeout``."""
        conn.flush()
        conn.dead = True
        try:
            await asyncio.wait_for(conn.ws.close(code=code, message=reason.encode()), timeout)
        except (asyncio.TimeoutError, ConnectionError, RuntimeError):
            pass
        finally:
            if not conn.transport.is_closing():
                conn.transport.abort()

    async def close_all(self, code: CloseCode, reason: str, timeout: float) -> None:
        conns = self.hub.connections()
        if conns:
            await asyncio.gather(*(self.close_connection(c, code, reason, timeout) for c in conns),
                                 return_exceptions=True)


class _RoomLock(asyncio.Lock):
    """An asyncio.Lock that removes itself from its registry when released unused."""

    def __init__(self, registry: dict[str, asyncio.Lock], room: str) -> None:
        super().__init__()
        self._registry, self._room = registry, room

    async def __aexit__(self, *exc) -> None:
        self.release()
        if not self.locked() and not self._waiters:
            self._registry.pop(self._room, None)
