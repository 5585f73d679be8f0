"""One Redis instance's share of the rooms: batched publishes, the pub/sub reader, presence.

Message path: the publishes accepted within ``Settings.redis_batch_ms`` (or
one loop tick with 0) leave in one write, as one script call per
``MAX_BATCH`` messages (one round trip whatever their
number; a room's batch is stored and fanned out as one ``PUBLISH``). Commands
are pipelined on one connection, so a burst never waits for a free
connection and none is ever refused for want of one. The pub/sub connection
hands every message parsed from one socket read to the hub within the same
loop callback, so a room's frames are still joined per flush.

Delivery: messages of a subscribed room reach ``deliver`` in seq order, with no
gap and at most once: live messages are applied only when they follow the last
delivered seq; a gap (a lost pub/sub message, a reconnect, a new epoch) is
filled from the room's stream first. Presence, lease renewal and history reads
use the same pipelined connection but never wait on, or hold up, a publish
batch in Python.

Failure: while the shard is unreachable ``publish`` fails at once with
:class:`BrokerUnavailable` (nothing sent, nothing stored). A batch whose
reply is lost (the connection drops, or no reply within ``OP_DEADLINE``) fails
too, although Redis may have stored it: a retry with the same ``cid`` is then
acknowledged with the original seq and not stored twice (the dedupe window).
Both connections reconnect by themselves with exponential backoff and jitter;
on reconnect the reader resubscribes its rooms and backfills.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from collections.abc import Callable

import orjson

from scalechat.chat.broker import Deliver, DeliverEvent, Done, Draft, History, Published, select_history
from scalechat.chat.errors import BrokerUnavailable
from scalechat.chat.redis_link import RedisAddress, RedisLink, ReplyError, pack_command
from scalechat.chat.redis_scripts import ALL, CATCH_UP, HISTORY, PRESENCE, PUBLISH, Script
from scalechat.chat.settings import Settings

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 2.0  # seconds to connect and say hello
OP_DEADLINE = 2.0  # a command unanswered this long fails; its connection is then dropped
HEARTBEAT = 1.0  # an idle pub/sub connection is PINGed; no answer one HEARTBEAT later: dead
BACKOFF_MIN, BACKOFF_MAX = 0.1, 5.0  # reconnect delay doubles from min to max, with jitter
MAX_BATCH = 512  # messages per script call; a larger tick's batch becomes several pipelined calls
MIN_TTL_MS = 1000
PRESENCE_LEASE = 15.0  # seconds a replica's member count stays counted without renewal
PRESENCE_RENEW = 5.0  # seconds between renewals (at most; shorter for short room expiries)
ERRORS = (ConnectionError, OSError, TimeoutError, ReplyError)


class RoomKeys:
    """The Redis names of one room (see :mod:`scalechat.chat.redis_scripts`)."""

    __slots__ = ("epoch", "seq", "stream", "cids", "members", "channel")

    def __init__(self, prefix: str, room: str) -> None:
        base = f"{prefix}:room:{{{room}}}"
        self.epoch, self.seq, self.stream = f"{base}:epoch", f"{base}:seq", f"{base}:stream"
        self.cids, self.members, self.channel = f"{base}:cids", f"{base}:members", base

    @property
    def stored(self) -> list[str]:
        """The keys in the order the scripts take them."""
        return [self.epoch, self.seq, self.stream, self.cids, self.members]


class _Subscription:
    """What this replica delivered of one room: the reader's bookkeeping."""

    __slots__ = ("room", "keys", "channel", "epoch", "last", "based", "synced", "busy", "dirty",
                 "waiter", "watchers")

    def __init__(self, room: str, keys: RoomKeys) -> None:
        self.room, self.keys, self.channel = room, keys, keys.channel.encode()
        self.epoch: bytes | None = None  # epoch of ``last``; None: the room had no data
        self.last = 0  # last seq delivered (or covered by the joiners' history)
        self.based = False  # epoch/last read once after the first SUBSCRIBE was confirmed
        self.synced = False  # subscribed on the current connection and caught up
        self.busy = False  # a base read or catch-up is running: live messages wait for it
        self.dirty = False  # a live message arrived while busy: catch up once more
        self.waiter: asyncio.Future[bool] | None = None  # subscribe() waiting for sync
        self.watchers: list[tuple[bytes, int, asyncio.Future[None]]] = []  # history() waiting

    def settle(self, ok: bool) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(ok)

    def progressed(self) -> None:
        """Wake the history() calls whose (epoch, seq) has now been delivered."""
        waiting = []
        for epoch, seq, done in self.watchers:
            if done.done():
                continue
            if self.synced and epoch == self.epoch and seq <= self.last:
                done.set_result(None)
            else:
                waiting.append((epoch, seq, done))
        self.watchers = waiting


def _seq_of(stream_id: bytes) -> int:
    return int(stream_id.split(b"-", 1)[0])


class RedisShard:
    """The rooms that hash to one Redis (see the module docstring)."""

    def __init__(self, index: int, address: RedisAddress, settings: Settings,
                 deliver: Deliver, deliver_event: DeliverEvent) -> None:
        self.index, self.address = index, address
        self._settings = settings
        self._prefix = settings.redis_prefix
        self._ttl_ms = max(MIN_TTL_MS, int(settings.room_idle_seconds * 1000))
        self._lease_ms = int(PRESENCE_LEASE * 1000)
        self._window = settings.history_size  # the dedupe window; 0: no dedupe
        self._deliver, self._deliver_event = deliver, deliver_event
        self._cmd: RedisLink | None = None  # the command connection while it is up
        self._sub_link: RedisLink | None = None  # the pub/sub connection while it is up
        self._subs: dict[str, _Subscription] = {}
        self._by_channel: dict[bytes, _Subscription] = {}
        self._members: dict[str, int] = {}  # this replica's member count per room (> 0 only)
        self._queue: list[tuple[Draft, Done]] = []
        self._flush_scheduled = False
        self._batch_window = settings.redis_batch_ms / 1000
        self._tasks: list[asyncio.Task] = []
        self._background: set[asyncio.Task] = set()
        self._heard = 0.0  # loop time of the last pub/sub reply
        self._pinged = False
        self._closed = False
        self._first_attempt = asyncio.Event()  # set once both connections tried once
        self._attempted: set[str] = set()
        self._loop = asyncio.get_running_loop()

    @property
    def ready(self) -> bool:
        return self._cmd is not None and self._sub_link is not None and not self._closed

    def _name(self, role: str) -> str:
        return f"{self._prefix}:{role}:{self._settings.node_name}:{self.index}"

    # --- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        """Start both connections; wait for their first attempt (success or not)."""
        self._tasks = [
            asyncio.create_task(self._commands_forever(), name=f"redis-{self.index}-commands"),
            asyncio.create_task(self._read_forever(), name=f"redis-{self.index}-reader"),
            asyncio.create_task(self._keep_rooms_alive(), name=f"redis-{self.index}-ttl"),
        ]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CONNECT_TIMEOUT + OP_DEADLINE):
                await self._first_attempt.wait()

    async def close(self) -> None:
        self._closed = True
        self._flush_publishes()
        tasks = self._tasks + list(self._background)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        for sub in self._subs.values():
            sub.settle(False)
        for link in (self._cmd, self._sub_link):
            if link is not None:
                link.close()
        self._cmd = self._sub_link = None

    def _tried(self, role: str) -> None:
        self._attempted.add(role)
        if len(self._attempted) == 2:
            self._first_attempt.set()

    async def _reconnecting(self, role: str, connect: Callable, serve: Callable) -> None:
        """Keep one connection up: connect, serve until lost, back off with jitter, repeat."""
        attempt = 0
        while True:
            link = None
            connected_at = None
            try:
                link = await connect()
                connected_at = time.monotonic()
                await serve(link, lambda: self._tried(role))
            except (TimeoutError, *ERRORS) as exc:
                if connected_at is not None:
                    log.warning("Redis shard %d (%s): %s connection lost (%r); reconnecting",
                                self.index, self.address, role, exc)
                elif attempt == 0:
                    log.warning("Redis shard %d (%s): cannot connect %s (%r); retrying with "
                                "backoff", self.index, self.address, role, exc)
            except Exception:  # a bug must not end delivery for good
                log.exception("Redis shard %d: %s connection failed; reconnecting", self.index, role)
            finally:
                if link is not None:
                    link.abort()
            self._tried(role)
            if connected_at is not None and time.monotonic() - connected_at > BACKOFF_MAX:
                attempt = 0  # it was up for a while: a fresh outage starts from the minimum
            delay = min(BACKOFF_MAX, BACKOFF_MIN * 2 ** attempt)
            attempt += 1
            await asyncio.sleep(random.uniform(delay / 2, delay))

    # --- the command connection -----------------------------------------------------

    async def _commands_forever(self) -> None:
        async def connect() -> RedisLink:
            return await RedisLink.open(self.address, name=self._name("commands"),
                                        timeout=CONNECT_TIMEOUT)

        async def serve(link: RedisLink, up: Callable[[], None]) -> None:
            async with asyncio.timeout(OP_DEADLINE):
                await asyncio.gather(*(link.call("SCRIPT", "LOAD", s.source) for s in ALL))
            self._cmd = link
            up()
            log.info("Redis shard %d (%s): connected", self.index, self.address)
            try:
                await link.lost
                raise ConnectionError("closed")
            finally:
                self._cmd = None

        await self._reconnecting("command", connect, serve)

    def _link(self, what: str) -> RedisLink:
        link = self._cmd
        if link is None or self._closed:
            raise BrokerUnavailable(f"{what}: Redis shard {self.index} ({self.address}) is "
                                    "unreachable")
        return link

    async def _eval(self, what: str, script: Script, keys: list, args: list):
        """One script call, bounded by ``OP_DEADLINE``; any failure is BrokerUnavailable."""
        link = self._link(what)
        packed = pack_command(("EVALSHA", script.sha, len(keys), *keys, *args))
        try:
            async with asyncio.timeout(OP_DEADLINE):
                try:
                    return await link.send(packed)
                except ReplyError as exc:
                    if not str(exc).startswith("NOSCRIPT"):
                        raise
                    # SCRIPT FLUSH (or a failover) since we connected: load and run once more.
                    await link.call("SCRIPT", "LOAD", script.source)
                    return await link.send(packed)
        except (TimeoutError, *ERRORS) as exc:
            raise BrokerUnavailable(f"{what} failed on Redis shard {self.index} "
                                    f"({self.address}): {exc!r}") from exc

    # --- publishing -----------------------------------------------------------------

    def publish(self, draft: Draft) -> asyncio.Future[Published]:
        """Queue for the current batch (see the module docstring); the future gets a :class:`Published` or BrokerUnavailable."""
        future: asyncio.Future[Published] = self._loop.create_future()

        def done(result: Published | None, error: BaseException | None) -> None:
            if not future.done():
                if error is None:
                    future.set_result(result)  # type: ignore[arg-type]
                else:
                    future.set_exception(error)

        self.submit(draft, done)
        return future

    def submit(self, draft: Draft, done: Done) -> None:
        """Queue for the current batch; ``done`` is called exactly once, with the result or
        BrokerUnavailable, straight from the reply (no future, no extra loop callback).
        Raises BrokerUnavailable at once when the shard is unreachable."""
        self._link("publish")
        self._queue.append((draft, done))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            if self._batch_window:
                self._loop.call_later(self._batch_window, self._flush_publishes)
            else:
                self._loop.call_soon(self._flush_publishes)

    def _flush_publishes(self) -> None:
        self._flush_scheduled = False
        queue, self._queue = self._queue, []
        if not queue:
            return
        link = self._cmd
        if link is None or self._closed:
            error = BrokerUnavailable(f"publish: Redis shard {self.index} ({self.address}) is "
                                      "unreachable")
            for _, done in queue:
                done(None, error)
            return
        packed, parts = [], []
        for start in range(0, len(queue), MAX_BATCH):
            part = self._pack(queue[start:start + MAX_BATCH])
            packed.append(part[0])
            parts.append(part[1])
        for replies, order in zip(link.send_many(packed), parts):
            replies.add_done_callback(lambda reply, order=order: self._published(reply, order))
        self._loop.call_later(OP_DEADLINE, self._expire, parts)

    def _pack(self, queue: list[tuple[Draft, Done]]) -> tuple[bytes, list[Done]]:
        """One EVALSHA for ``queue``; returns it and the callbacks in the script's order."""
        rooms: dict[str, list[tuple[Draft, Done]]] = {}
        for item in queue:
            rooms.setdefault(item[0].room, []).append(item)
        dumps, prefix = orjson.dumps, self._prefix
        keys: list = []
        args: list = [self._ttl_ms, self._settings.history_size, self._window]
        order: list[Done] = []
        for room, items in rooms.items():
            base = f"{prefix}:room:{{{room}}}"
            keys += (base + ":epoch", base + ":seq", base + ":stream", base + ":cids")
            args += (secrets.token_hex(4), base, len(items))
            head = b'{"type":"message","room":' + dumps(room) + b',"seq":'
            for draft, done in items:
                args += (head, b',"from":' + dumps(draft.sender) + b',"text":' + dumps(draft.text),
                         b',"cid":' + dumps(draft.cid) + b"}",
                         f"{draft.sender}\n{draft.cid}" if draft.cid and self._window else b"")
                order.append(done)
        return pack_command(("EVALSHA", PUBLISH.sha, len(keys), *keys, *args)), order

    def _published(self, replies: asyncio.Future, order: list[Done]) -> None:
        """Answer each callback of ``order`` (empty once ``_expire`` has answered them)."""
        if replies.cancelled() or not order:
            return
        pending = order[:]
        order.clear()
        error = replies.exception()
        if error is not None:
            if isinstance(error, ReplyError) and str(error).startswith("NOSCRIPT"):
                self._spawn(self._reload_scripts())
            failure = BrokerUnavailable(f"publish failed on Redis shard {self.index} "
                                        f"({self.address}): {error!r}")
            for done in pending:
                done(None, failure)
            return
        for done, reply in zip(pending, replies.result()):
            if isinstance(reply, list):
                done(Published(int(reply[0]), reply[1] or None, duplicate=True), None)
            else:
                done(Published(reply), None)

    def _expire(self, parts: list[list[Done]]) -> None:
        """Fail what is still unanswered after ``OP_DEADLINE``; the connection is suspect."""
        late = [done for order in parts for done in order]
        for order in parts:
            order.clear()
        if not late:
            return
        failure = BrokerUnavailable(f"publish: no reply from Redis shard {self.index} "
                                    f"({self.address}) within {OP_DEADLINE}s")
        for done in late:
            done(None, failure)
        link = self._cmd
        if link is not None and link.oldest_wait() >= OP_DEADLINE:
            log.warning("Redis shard %d (%s): no reply within %.1fs; reconnecting",
                        self.index, self.address, OP_DEADLINE)
            link.abort()

    async def _reload_scripts(self) -> None:
        link = self._cmd
        if link is not None:
            with contextlib.suppress(*ERRORS):
                await asyncio.gather(*(link.call("SCRIPT", "LOAD", s.source) for s in ALL))

    async def publish_event(self, room: str, payload: bytes) -> None:
        link = self._link("publish_event")
        try:
            async with asyncio.timeout(OP_DEADLINE):
                await link.call("PUBLISH", RoomKeys(self._prefix, room).channel, b"p" + payload)
        except (TimeoutError, *ERRORS) as exc:
            raise BrokerUnavailable(f"publish_event failed on Redis shard {self.index}: "
                                    f"{exc!r}") from exc

    # --- presence and history -------------------------------------------------------

    async def presence(self, room: str, delta: int) -> int:
        mine = max(0, self._members.get(room, 0) + delta)
        if mine:
            self._members[room] = mine
        else:
            self._members.pop(room, None)
        keys = RoomKeys(self._prefix, room)
        return int(await self._eval("presence", PRESENCE, [keys.members], [
            mine, self._ttl_ms, self._settings.node_name, self._lease_ms]))

    async def history(self, room: str, since: int | None, epoch: str | None,
                      limit: int) -> History:
        keys = RoomKeys(self._prefix, room)
        reply = await self._eval("history", HISTORY, keys.stored, [
            secrets.token_hex(4), self._ttl_ms, "" if since is None else since, epoch or "",
            limit])
        room_epoch, last, raw = reply[0], reply[1], reply[2]
        entries = [(_seq_of(stream_id), fields[1]) for stream_id, fields in raw]
        if len(reply) > 3:  # read newest first
            entries.reverse()
        await self._delivered_up_to(room, room_epoch, int(last))
        return select_history(entries, room_epoch.decode(), int(last), since, epoch, limit)

    async def _delivered_up_to(self, room: str, epoch: bytes, seq: int) -> None:
        """Wait until the reader has handed over ``seq`` of a subscribed room.

        A joiner's connection drops live messages its history covers only while it
        is held, i.e. until history() returns; a message <= ``seq`` still on its
        way through pub/sub would otherwise reach it after its history, twice.
        """
        sub = self._subs.get(room)
        if sub is None or seq == 0:
            return
        if sub.synced and sub.epoch == epoch and sub.last >= seq:
            return
        done = self._loop.create_future()
        sub.watchers.append((epoch, seq, done))
        try:
            async with asyncio.timeout(OP_DEADLINE):
                await done
        except TimeoutError:
            log.warning("room %s: seq %d not delivered within %.1fs of its history read; the "
                        "joiner may see it twice", room, seq, OP_DEADLINE)

    # --- subscriptions and the reader -------------------------------------------------

    async def subscribe(self, room: str) -> None:
        sub = self._subs.get(room)
        if sub is None:
            sub = self._subs[room] = _Subscription(room, RoomKeys(self._prefix, room))
            self._by_channel[sub.channel] = sub
        if sub.synced:
            return
        # The room stays registered either way: the reader subscribes it on reconnect.
        link = self._sub_link
        if self._closed or link is None or self._cmd is None:
            raise BrokerUnavailable(f"cannot subscribe room {room}: Redis shard {self.index} "
                                    f"({self.address}) is unreachable")
        if sub.waiter is None or sub.waiter.done():
            sub.waiter = self._loop.create_future()
        waiter = sub.waiter
        link.write("SUBSCRIBE", sub.channel)
        try:
            async with asyncio.timeout(OP_DEADLINE):
                ok = await asyncio.shield(waiter)
        except TimeoutError as exc:
            raise BrokerUnavailable(f"cannot subscribe room {room}: no confirmation within "
                                    f"{OP_DEADLINE}s") from exc
        if not ok:
            raise BrokerUnavailable(f"cannot subscribe room {room}: connection lost")

    async def unsubscribe(self, room: str) -> None:
        sub = self._subs.pop(room, None)
        if sub is None:
            return
        del self._by_channel[sub.channel]
        sub.settle(False)
        link = self._sub_link
        if link is not None:  # if this fails the connection is gone, and the subscription with it
            link.write("UNSUBSCRIBE", sub.channel)

    async def _read_forever(self) -> None:
        async def connect() -> RedisLink:
            return await RedisLink.open(self.address, name=self._name("pubsub"),
                                        timeout=CONNECT_TIMEOUT)

        async def serve(link: RedisLink, up: Callable[[], None]) -> None:
            link.push_to(self._on_push)
            self._heard, self._pinged = self._loop.time(), False
            self._sub_link = link
            up()
            channels = [sub.channel for sub in self._subs.values()]
            log.info("Redis shard %d pub/sub connected; subscribing %d room(s)", self.index,
                     len(channels))
            if channels:
                link.write("SUBSCRIBE", *channels)
            try:
                while not link.closed:
                    await asyncio.wait([link.lost], timeout=HEARTBEAT)
                    if link.closed:
                        break
                    if self._loop.time() - self._heard >= HEARTBEAT:
                        if self._pinged:
                            raise TimeoutError(f"no answer to PING within {HEARTBEAT}s")
                        link.write("PING")
                        self._pinged = True
                raise ConnectionError("closed")
            finally:
                self._sub_link = None
                for sub in self._subs.values():
                    sub.synced = False
                    sub.settle(False)

        await self._reconnecting("pub/sub", connect, serve)

    def _on_push(self, replies: list) -> None:
        self._heard, self._pinged = self._loop.time(), False
        by_channel = self._by_channel
        for reply in replies:
            if not isinstance(reply, list) or len(reply) < 2:
                continue
            kind = reply[0]
            if kind == b"message":
                sub = by_channel.get(reply[1])
                if sub is not None:
                    self._on_message(sub, reply[2])
            elif kind == b"subscribe":
                sub = by_channel.get(reply[1])
                if sub is not None and not sub.synced and not sub.busy:
                    sub.busy = True
                    self._spawn(self._sync(sub, base=not sub.based))

    def _on_message(self, sub: _Subscription, data: bytes) -> None:
        if not sub.synced or sub.busy:
            if sub.busy:
                sub.dirty = True  # the running catch-up may have read the stream before this
            return  # not (yet) subscribed on this connection: history or catch-up covers it
        if data[:1] == b"p":
            self._hand_over(self._deliver_event, sub.room, data[1:])
            return
        try:
            head, epoch, body = data[1:].split(b" ", 2)
            first = int(head)
        except ValueError:
            log.warning("room %s: ignoring a foreign message on its channel: %.60r", sub.room, data)
            return
        if epoch == sub.epoch or (sub.epoch is None and first == 1):
            payloads = body.split(b"\n")
            last = first + len(payloads) - 1
            if last <= sub.last:
                return  # already delivered from the stream
            if first <= sub.last + 1:
                received_at = time.perf_counter()
                deliver, room = self._deliver, sub.room
                seq = sub.last
                sub.epoch, sub.last = epoch, last
                for payload in payloads[seq + 1 - first:]:
                    seq += 1
                    try:
                        deliver(room, seq, payload, received_at)
                    except Exception:  # one bad callback must not stop the room
                        log.exception("delivery callback failed")
                if sub.watchers:
                    sub.progressed()
                return
        sub.busy = True
        self._spawn(self._sync(sub, base=False))  # a gap, or a new epoch

    async def _sync(self, sub: _Subscription, base: bool) -> None:
        """Read the room's base (first subscription) or catch up, then again while live
        messages were set aside meanwhile (``busy`` is set by the caller). Retried with
        backoff while this pub/sub connection lasts (the command connection may still be
        reconnecting)."""
        link_then = self._sub_link
        attempt = 0
        try:
            while self._by_channel.get(sub.channel) is sub and self._sub_link is link_then:
                try:
                    if base and not sub.based:
                        # Messages published before the server confirmed SUBSCRIBE are
                        # covered by the joiners' history; start right after the current seq.
                        link = self._link("subscribe")
                        async with asyncio.timeout(OP_DEADLINE):
                            epoch, seq = await link.call("MGET", sub.keys.epoch, sub.keys.seq)
                        sub.epoch, sub.last, sub.based = epoch, int(seq or 0) if epoch else 0, True
                    elif not base:
                        sub.dirty = True
                    while sub.dirty and self._by_channel.get(sub.channel) is sub:
                        sub.dirty = False
                        await self._catch_up(sub)
                    break
                except (TimeoutError, *ERRORS, BrokerUnavailable) as exc:
                    sub.dirty = True
                    if attempt == 0:
                        log.warning("room %s: catching up on Redis shard %d failed (%r); "
                                    "retrying", sub.room, self.index, exc)
                    await asyncio.sleep(min(BACKOFF_MAX, BACKOFF_MIN * 2 ** attempt))
                    attempt += 1
            else:
                return  # unsubscribed, or the pub/sub connection changed: it resyncs
        finally:
            sub.busy = False
        if self._by_channel.get(sub.channel) is sub and self._sub_link is link_then:
            sub.synced = True
            sub.settle(True)
            sub.progressed()

    async def _catch_up(self, sub: _Subscription) -> None:
        """Deliver, in order, everything stored after what ``sub`` delivered."""
        keys = sub.keys
        epoch, last, entries = await self._eval("catch-up", CATCH_UP,
                                                [keys.epoch, keys.seq, keys.stream],
                                                [sub.epoch or b"", sub.last])
        if self._by_channel.get(sub.channel) is not sub:
            return  # unsubscribed meanwhile
        epoch = epoch or None
        if epoch != sub.epoch:
            if sub.epoch is not None:
                log.warning("room %s: epoch %s replaced by %s (Redis lost or expired its data); "
                            "seq restarts", sub.room, sub.epoch.decode(),
                            epoch.decode() if epoch else "none")
            sub.epoch, sub.last = epoch, 0
        received_at = time.perf_counter()
        for stream_id, fields in entries:
            seq = _seq_of(stream_id)
            if seq <= sub.last:
                continue
            if seq > sub.last + 1:
                log.warning("room %s: messages %d-%d were trimmed before this replica could "
                            "deliver them", sub.room, sub.last + 1, seq - 1)
            sub.last = seq
            self._hand_over(self._deliver, sub.room, seq, fields[1], received_at)
        if last > sub.last:  # only with history_size 0: nothing to backfill from
            log.warning("room %s: messages %d-%d not retained; skipped",
                        sub.room, sub.last + 1, last)
            sub.last = last
        sub.progressed()

    @staticmethod
    def _hand_over(callback, *args) -> None:
        # A failing callback must not tear down the connection of every room.
        try:
            callback(*args)
        except Exception:
            log.exception("delivery callback failed")

    def _spawn(self, coro) -> None:
        task = self._loop.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- expiry and leases ------------------------------------------------------------

    async def _keep_rooms_alive(self) -> None:
        """Renew the expiry of the rooms this replica has members in, and its presence leases."""
        expiry_every = min(max(self._ttl_ms / 4000, 0.25), 60.0)
        lease_every = min(PRESENCE_RENEW, self._lease_ms / 3000)
        node = self._settings.node_name
        next_expiry = self._loop.time() + expiry_every
        while True:
            await asyncio.sleep(min(expiry_every, lease_every))
            link = self._cmd
            subs = list(self._subs.values())
            if (not subs and not self._members) or link is None:
                continue
            packed = []
            if self._loop.time() >= next_expiry - expiry_every / 10:  # a timer may fire early
                next_expiry = self._loop.time() + expiry_every
                for sub in subs:
                    for key in sub.keys.stored:
                        packed.append(pack_command(("PEXPIRE", key, self._ttl_ms)))
            for room, mine in list(self._members.items()):
                packed.append(pack_command(("EVALSHA", PRESENCE.sha, 1,
                                            RoomKeys(self._prefix, room).members, mine,
                                            self._ttl_ms, node, self._lease_ms)))
            if not packed:
                continue
            try:
                async with asyncio.timeout(OP_DEADLINE):
                    await asyncio.gather(*link.send_many(packed))
            except (TimeoutError, *ERRORS) as exc:
                log.debug("renewing room expiry failed on Redis shard %d: %r", self.index, exc)
