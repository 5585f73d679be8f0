"""The node joins the hub (local sockets) and the broker (seq, history, other replicas).

It knows nothing of HTTP: the transport (``app.py``) hands it connections and
text frames, and closes sockets when told to.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time

import orjson

from scalechat.chat.broker import Broker, Draft, History, Published
from scalechat.chat.budget import SWEEP_SECONDS, MemoryBudget
from scalechat.chat.errors import BrokerUnavailable, ProtocolError
from scalechat.chat.hub import Hub
from scalechat.chat.metrics import Metrics
from scalechat.chat.outbox import Outbox
from scalechat.chat.protocol import (CloseCode, ErrorCode, encode_error, encode_history_parts,
                                     encode_presence, extract_cid, parse_client_frame)
from scalechat.chat.framing import frame_text, text_header
from scalechat.chat.ratelimit import AddressLimiter
from scalechat.chat.settings import Settings

log = logging.getLogger(__name__)

CLOSE_TIMEOUT = 2.0  # seconds a condemned socket gets to take its close frame before the abort
_VIOLATIONS: dict[int, str] = {
    CloseCode.UNSUPPORTED_DATA: "binary", CloseCode.MESSAGE_TOO_BIG: "too_big",
    CloseCode.INVALID_TEXT: "invalid_utf8", CloseCode.PROTOCOL_ERROR: "protocol_error"}


class _RoomLock:
    """A room's subscribe/unsubscribe lock and how many joins and leaves hold or wait for it."""

    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class Node:
    def __init__(self, settings: Settings, broker: Broker, metrics: Metrics, hub: Hub,
                 budget: MemoryBudget | None = None) -> None:
        self.settings = settings
        self.budget = budget or MemoryBudget(1 << 62)
        self.broker = broker
        self.metrics = metrics
        self._counts = metrics.hot  # per message: a compiled object's fields
        self.hub = hub
        self.name = settings.node_name
        self._closing: set[asyncio.Task] = set()
        self._joined: set[Outbox] = set()  # joined and not yet left: leave() runs once each
        self._leaving = 0  # leaves announcing now
        self._left = asyncio.Event()  # set once every joined connection has left, announced
        self._left.set()
        self._room_locks: dict[str, _RoomLock] = {}  # dropped when unused
        self._sweeper: asyncio.Task | None = None
        rate = settings.joins_per_address
        self._joins = AddressLimiter(rate, max(1, int(10 * rate))) if rate else None

    def admit_join(self, address: str | None) -> bool:
        """Whether a client at ``address`` may open one more socket now (joins_per_address)."""
        return self._joins is None or address is None or self._joins.allow(address, time.monotonic())

    async def start(self) -> None:
        await self.broker.start(self._deliver, self._deliver_event)
        self._sweeper = asyncio.create_task(self._sweep_outgoing(), name="outgoing-budget")

    async def close(self, timeout: float = 5.0) -> None:
        """Close the broker once every joined connection has left (leaves announced first)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._left.wait()
        if self._sweeper is not None:
            self._sweeper.cancel()
        await self.broker.close()

    # --- broker callbacks ---------------------------------------------------------

    def _deliver(self, room: str, seq: int, payload: bytes, received_at: float) -> None:
        # Once per message per node, whatever the broker: the Redis broker's reader
        # calls this for each message of a subscribed room (local senders' included);
        # the memory broker calls it inside submit, before the sender's result.
        self._counts.broker_received += 1
        delivered = self.hub.broadcast(room, payload, seq, received_at)
        if delivered:
            self._counts.delivered += delivered

    def _deliver_event(self, room: str, payload: bytes) -> None:
        try:
            name = orjson.loads(payload)["name"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            name = ""
        self.hub.presence(room, name, payload)

    # --- membership ---------------------------------------------------------------

    async def join(self, conn: Outbox, since: int | None, epoch: str | None) -> None:
        """Add ``conn``: history first, then live messages, with no gap and no repeat."""
        conn.hold()
        self._joined.add(conn)
        self._left.clear()
        await self._lock_room(conn.room)
        try:
            if self.hub.add(conn) == 1:
                await self.broker.subscribe(conn.room)
        finally:
            self._unlock_room(conn.room)
        history = await self.broker.history(conn.room, since, epoch, self.settings.history_on_join)
        history = self._fit(history, since, conn.limit // 2)
        parts = encode_history_parts(conn.room, history.epoch, history.last_seq, conn.name,
                                     self.name, history.continuity_lost, history.messages)
        conn.release([text_header(sum(map(len, parts))), *parts], history.last_seq)
        await self._announce(conn, "join", +1)

    @staticmethod
    def _fit(history: History, since: int | None, room: int) -> History:
        """Keep the newest messages whose bytes fit ``room``; a truncated resume loses continuity."""
        total, keep = 0, 0
        for message in reversed(history.messages):
            total += len(message) + 1
            if total > room:
                break
            keep += 1
        if keep == len(history.messages):
            return history
        kept = history.messages[len(history.messages) - keep:]
        return History(history.epoch, history.last_seq, kept,
                       history.continuity_lost or since is not None)

    async def leave(self, conn: Outbox) -> None:
        """Undo ``join`` (at most once per connection, whoever calls first)."""
        if conn not in self._joined:
            return
        self._joined.discard(conn)
        self._leaving += 1
        try:
            await self._lock_room(conn.room)
            try:
                if self.hub.remove(conn) == 0:
                    await self.broker.unsubscribe(conn.room)
            finally:
                self._unlock_room(conn.room)
            await self._announce(conn, "leave", -1)
        finally:
            self._leaving -= 1
            if not self._joined and not self._leaving:
                self._left.set()

    async def _lock_room(self, room: str) -> None:
        """Serialise subscribe/unsubscribe of one room (``_unlock_room`` after, always)."""
        entry = self._room_locks.get(room)
        if entry is None:
            entry = self._room_locks[room] = _RoomLock()
        entry.users += 1
        try:
            await entry.lock.acquire()
        except BaseException:  # cancelled while waiting: not held, no longer a user
            self._drop_room_lock(room, entry)
            raise

    def _unlock_room(self, room: str) -> None:
        entry = self._room_locks[room]
        entry.lock.release()
        self._drop_room_lock(room, entry)

    def _drop_room_lock(self, room: str, entry: _RoomLock) -> None:
        entry.users -= 1
        if entry.users == 0:
            del self._room_locks[room]

    async def _announce(self, conn: Outbox, event: str, delta: int) -> None:
        try:
            count = await self.broker.presence(conn.room, delta)
            await self.broker.publish_event(conn.room, encode_presence(conn.room, event, conn.name, count))
        except BrokerUnavailable:
            log.warning("presence %s for room %s not announced: broker unavailable", event, conn.room)

    # --- client frames ------------------------------------------------------------

    def read_delay(self, conn: Outbox, size: int) -> float:
        """Reserve ``size`` bytes of ``conn``'s bytes-per-second budget; return how long the
        message must wait (its socket is read later: TCP pushes back on the sender)."""
        assert conn.byte_bucket is not None
        wait = conn.byte_bucket.reserve(time.perf_counter(), size)
        if wait:
            self.metrics.throttled.inc()
        return wait

    def count_violation(self, code: int) -> None:
        """A client frame broke the WebSocket protocol; its connection closes with ``code``."""
        label = _VIOLATIONS.get(code)
        if label is not None:
            self.metrics.rejected.labels(reason=label).inc()

    def handle_text(self, conn: Outbox, text: str) -> CloseCode | None:
        """Handle one client text message; return a close code if the socket must close."""
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
        # Stored remotely, the result comes later: the next frame is read meanwhile (the
        # room's order holds, see Broker.submit).
        try:
            self.broker.submit(Draft(conn.room, conn.name, request.text, request.cid, received_at),
                               functools.partial(self._on_published, conn, request.cid))
        except BrokerUnavailable:
            self._unavailable(conn, request.cid)
        return None

    def _on_published(self, conn: Outbox, cid: str | None, published: Published | None,
                      error: BaseException | None) -> None:
        if published is not None:
            self._published(conn, cid, published)
        elif isinstance(error, BrokerUnavailable):
            self._unavailable(conn, cid)
        else:
            log.error("publish to room %s failed: %r", conn.room, error)
            self.close_soon(conn, CloseCode.INTERNAL_ERROR, "internal error")

    def _unavailable(self, conn: Outbox, cid: str | None) -> None:
        self._reject(conn, ErrorCode.UNAVAILABLE, "message maybe not stored: the broker is "
                     "unavailable; resend it with the same cid", cid)

    def _published(self, conn: Outbox, cid: str | None, published: Published) -> None:
        if published.duplicate:
            # A resent cid: acknowledge with the stored message (its original seq), to the
            # sender alone; the room saw it once.
            self.metrics.deduplicated.inc()
            if published.original is not None:
                conn.push(frame_text(published.original), published.seq)
            else:
                conn.push(frame_text(encode_error(
                    ErrorCode.DUPLICATE, f"already stored as seq {published.seq}; its frame has "
                    "left the history", cid)))
            return
        self._counts.received += 1

    def _reject(self, conn: Outbox, code: ErrorCode, reason: str, cid: str | None) -> None:
        self.metrics.rejected.labels(reason=code.value).inc()
        conn.push(frame_text(encode_error(code, reason, cid)))

    # --- closing ------------------------------------------------------------------

    def condemn_slow(self, conn: Outbox) -> None:
        """Overflow callback: close with 1013 without blocking the broadcast."""
        self.metrics.slow_consumers.inc()
        self.close_soon(conn, CloseCode.TRY_AGAIN_LATER, "slow consumer", CLOSE_TIMEOUT)

    def leave_soon(self, conn: Outbox) -> None:
        """``leave`` from a callback (a socket lost after its join)."""
        task = asyncio.get_running_loop().create_task(self.leave(conn))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def close_soon(self, conn: Outbox, code: CloseCode, reason: str,
                   timeout: float = CLOSE_TIMEOUT) -> None:
        task = asyncio.get_running_loop().create_task(
            self.close_connection(conn, code, reason, timeout))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close_connection(self, conn: Outbox, code: CloseCode, reason: str,
                               timeout: float = 5.0) -> None:
        """Close ``conn`` with ``code``: gone within ``timeout`` (see Outbox.close)."""
        if await conn.close(code, reason, timeout):
            self.metrics.close_aborts.inc()

    async def _sweep_outgoing(self) -> None:
        """Measure the bytes queued for clients; above their share of the budget, close the
        clients holding the most (they are the ones not reading)."""
        budget = self.budget
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            conns = [c for c in self._joined if not c.dead]
            queued = [(c.queued_bytes(), c) for c in conns]
            budget.outgoing = total = sum(q for q, _ in queued)
            if total <= budget.outgoing_limit:
                continue
            queued.sort(key=lambda item: item[0], reverse=True)
            for size, conn in queued:
                if total <= budget.outgoing_limit or size == 0:
                    break
                log.warning("outgoing buffers at %d bytes, over their budget of %d: closing the "
                            "client holding %d bytes as a slow consumer", total,
                            budget.outgoing_limit, size)
                conn.condemn()
                total -= size

    async def close_all(self, code: CloseCode, reason: str, timeout: float) -> None:
        """Close every socket and announce its leave while the broker is still up."""
        async def close_and_leave(conn: Outbox) -> None:
            await self.close_connection(conn, code, reason, timeout)
            await self.leave(conn)

        conns = list(self._joined)
        if conns:
            await asyncio.gather(*(close_and_leave(c) for c in conns), return_exceptions=True)
