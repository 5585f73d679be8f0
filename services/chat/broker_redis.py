"""Redis broker: replicas share rooms through one Redis (a stream per room, pub/sub fan-out).

Guarantee: a message ``publish`` stored in Redis is delivered to every replica
subscribed to its room in seq order, with no gap and at most once: the reader
applies live pub/sub messages only when they follow the last delivered seq,
and fills any gap (a lost pub/sub message, a reconnect) from the room's stream
first. During an outage ``publish`` raises :class:`BrokerUnavailable` within
``OP_DEADLINE`` and ``ready`` is false; the reader reconnects by itself
(exponential backoff with jitter), resubscribes its rooms and backfills. Limits:
a gap longer than ``history_size`` loses what was trimmed (logged); a publish
that times out *after* Redis ran it is reported unavailable although stored
(clients can match the echo by ``cid``). Presence events are best effort.

Keys (``P`` = ``Settings.redis_prefix``, ``R`` the room). ``{R}`` is a Redis
Cluster hash tag: a room's keys share one slot, so one script may touch them all.

    P:room:{R}:epoch    string  random hex, new whenever the room's data is (re)created
    P:room:{R}:seq      string  last seq given out
    P:room:{R}:stream   stream  last history_size messages; entry id ``<seq>-0``, field ``payload``
    P:room:{R}:members  hash    per replica: ``<count>:<lease deadline ms>`` (absent when empty)
    P:room:{R}          channel ``m<seq> <epoch> <payload>`` (message), ``p<payload>`` (presence)
    P:pubsub:<node>     client name of each replica's pub/sub connection (CLIENT LIST)

The stream id is the seq, so a ``since`` maps to an XRANGE start with no
search, and it is trimmed exactly (``MAXLEN n``, not ``~``): history holds
exactly ``history_size`` messages as in the memory broker, at the cost of Redis
marking one head entry deleted per XADD.

Every key expires after ``room_idle_seconds`` (at least 1 s) without activity:
publish and join renew it, and each replica renews the rooms it has members in.
Expired or lost data starts a new epoch at seq 1, so a stale ``since`` is
reported as lost continuity.

A room's member count is the sum of each replica's own count, each held on a
lease (``PRESENCE_LEASE``, Redis' clock) that the replica renews every
``PRESENCE_RENEW`` with its current count. A replica killed without its leaves
(SIGKILL) stops renewing, so its members drop out of the count within the
lease; after Redis loses its data the counts are back within one renewal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from dataclasses import dataclass

import orjson
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from scalechat.chat.broker import Deliver, DeliverEvent, Draft, History, select_history
from scalechat.chat.errors import BrokerUnavailable
from scalechat.chat.settings import Settings

log = logging.getLogger(__name__)

TIMEOUT = 1.0  # connect, read and write timeout of every Redis socket (seconds)
OP_DEADLINE = 2.0  # upper bound of one broker call; no retries inside it
HEARTBEAT = 1.0  # an idle pub/sub connection is PINGed; no answer one HEARTBEAT later: dead
BACKOFF_MIN, BACKOFF_MAX = 0.1, 5.0  # reconnect delay doubles from min to max, with jitter
MIN_TTL_MS = 1000
PRESENCE_LEASE = 15.0  # seconds a replica's member count stays counted without renewal
PRESENCE_RENEW = 5.0  # seconds between renewals (at most; shorter for short room expiries)
REDIS_ERRORS = (RedisError, OSError, TimeoutError)

# Shared head of the scripts that create data: a room without an epoch or a seq
# (new, expired, evicted, or Redis lost its data) starts a new epoch at seq 0.
# KEYS: epoch, seq, stream[, members]. ARGV[1]: candidate epoch (Lua's random is
# deterministic in scripts, so Python draws it).
_ENSURE_ROOM = """
local epoch = redis.call('GET', KEYS[1])
if not epoch or redis.call('EXISTS', KEYS[2]) == 0 then
  epoch = ARGV[1]
  redis.call('SET', KEYS[1], epoch)
  redis.call('SET', KEYS[2], 0)
  redis.call('DEL', KEYS[3])
end
"""

# One atomic publish: seq, server time, payload, stream, expiry, fan-out.
# ARGV: 2 ttl ms, 3 history_size, 4 channel, 5-7 the JSON around seq/id/ts
# (pre-encoded by orjson, so the payload is byte-for-byte protocol.encode_message).
# XADD comes before the seq is written: Redis does not roll a failed script back,
# and a failed XADD must not leave a seq without its message.
_PUBLISH = _ENSURE_ROOM + """
local seq = tonumber(redis.call('GET', KEYS[2])) + 1
local t = redis.call('TIME')
local ts = t[1] .. string.format('%03d', math.floor(tonumber(t[2]) / 1000))
local payload = ARGV[5] .. seq .. ',"id":"' .. epoch .. '-' .. seq .. '"' .. ARGV[6]
  .. ',"ts":' .. ts .. ARGV[7]
redis.call('XADD', KEYS[3], 'MAXLEN', ARGV[3], seq .. '-0', 'payload', payload)
redis.call('SET', KEYS[2], seq)
for i = 1, 4 do redis.call('PEXPIRE', KEYS[i], ARGV[2]) end
redis.call('PUBLISH', ARGV[4], 'm' .. seq .. ' ' .. epoch .. ' ' .. payload)
return seq
"""

# epoch, last seq and only the entries needed, read atomically.
# ARGV: 2 ttl ms, 3 since ('' none), 4 since's epoch ('' any), 5 limit.
# Returns {epoch, last, entries[, 1 when entries are newest first]}.
_HISTORY = _ENSURE_ROOM + """
for i = 1, 4 do redis.call('PEXPIRE', KEYS[i], ARGV[2]) end
local last = tonumber(redis.call('GET', KEYS[2]))
local since = tonumber(ARGV[3])
if since and (ARGV[4] == '' or ARGV[4] == epoch) and since <= last then
  return {epoch, last, redis.call('XRANGE', KEYS[3], (since + 1) .. '-0', '+')}
end
local limit = tonumber(ARGV[5])
if limit <= 0 then return {epoch, last, {}} end
return {epoch, last, redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', limit), 1}
"""

# What a replica that delivered up to (ARGV[1] epoch, ARGV[2] seq) missed.
# Another epoch means everything of the current one. Read only; creates nothing.
_CATCH_UP = """
local epoch = redis.call('GET', KEYS[1])
if not epoch then return {'', 0, {}} end
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
local after = 0
if epoch == ARGV[1] then after = tonumber(ARGV[2]) end
if after >= last then return {epoch, last, {}} end
return {epoch, last, redis.call('XRANGE', KEYS[3], (after + 1) .. '-0', '+')}
"""

# Sets this replica's member count (ARGV[1], field ARGV[3]) on a lease of ARGV[4] ms and
# returns the sum over the replicas whose lease holds; expired leases are removed.
# ARGV[2]: the room's expiry (ms). The hash disappears when empty.
_PRESENCE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local mine = tonumber(ARGV[1])
if mine > 0 then
  redis.call('HSET', KEYS[1], ARGV[3], mine .. ':' .. (now + tonumber(ARGV[4])))
else
  redis.call('HDEL', KEYS[1], ARGV[3])
end
local total = 0
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local n, deadline = string.match(all[i + 1], '^(%d+):(%d+)$')
  if n and tonumber(deadline) >= now then
    total = total + tonumber(n)
  else
    redis.call('HDEL', KEYS[1], all[i])
  end
end
if total > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return total
"""


@dataclass(frozen=True, slots=True)
class RoomKeys:
    """The Redis names of one room (see the module docstring)."""

    epoch: str
    seq: str
    stream: str
    members: str
    channel: str

    @classmethod
    def of(cls, prefix: str, room: str) -> "RoomKeys":
        base = f"{prefix}:room:{{{room}}}"
        return cls(f"{base}:epoch", f"{base}:seq", f"{base}:stream", f"{base}:members", base)

    @property
    def stored(self) -> list[str]:
        """The keys in the order the scripts take them."""
        return [self.epoch, self.seq, self.stream, self.members]


class _Subscription:
    """What this replica delivered of one room: the reader's bookkeeping."""

    __slots__ = ("room", "keys", "channel", "epoch", "last", "based", "synced", "waiter",
                 "watchers")

    def __init__(self, room: str, keys: RoomKeys) -> None:
        self.room, self.keys, self.channel = room, keys, keys.channel.encode()
        self.epoch: bytes | None = None  # epoch of ``last``; None: the room had no data
        self.last = 0  # last seq delivered (or covered by the joiners' history)
        self.based = False  # epoch/last read once after the first SUBSCRIBE was confirmed
        self.synced = False  # subscribed on the current connection and caught up
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


class RedisBroker:
    """Rooms shared by replicas through Redis; one pub/sub connection and one reader task."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._prefix = settings.redis_prefix
        self._ttl_ms = max(MIN_TTL_MS, int(settings.room_idle_seconds * 1000))
        # No retries inside a call: an outage must surface as BrokerUnavailable promptly.
        self._redis = Redis.from_url(settings.redis_url, socket_timeout=TIMEOUT,
                                     socket_connect_timeout=TIMEOUT,
                                     retry=Retry(NoBackoff(), 0), protocol=2)
        self._publish = self._redis.register_script(_PUBLISH)
        self._history = self._redis.register_script(_HISTORY)
        self._catch_up_script = self._redis.register_script(_CATCH_UP)
        self._presence = self._redis.register_script(_PRESENCE)
        self._subs: dict[str, _Subscription] = {}
        self._members: dict[str, int] = {}  # this replica's member count per room (> 0 only)
        self._lease_ms = int(PRESENCE_LEASE * 1000)
        self._by_channel: dict[bytes, _Subscription] = {}
        self._conn: AbstractConnection | None = None  # the pub/sub connection while it is up
        self._tasks: list[asyncio.Task] = []
        self._first_attempt: asyncio.Event | None = None
        self._closed = False
        self._deliver: Deliver | None = None
        self._deliver_event: DeliverEvent | None = None

    @property
    def ready(self) -> bool:
        return self._conn is not None and not self._closed

    # --- lifecycle ----------------------------------------------------------------

    async def start(self, deliver: Deliver, deliver_event: DeliverEvent) -> None:
        """Start the reader; wait for its first connection attempt (success or not)."""
        self._deliver, self._deliver_event = deliver, deliver_event
        self._first_attempt = asyncio.Event()
        self._tasks = [asyncio.create_task(self._read_forever(), name="redis-broker-reader"),
                       asyncio.create_task(self._keep_rooms_alive(), name="redis-broker-ttl")]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(OP_DEADLINE):
                await self._first_attempt.wait()

    async def close(self) -> None:
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        for sub in self._subs.values():
            sub.settle(False)
        await self._redis.aclose()

    # --- the Broker interface -----------------------------------------------------

    async def subscribe(self, room: str) -> None:
        sub = self._subs.get(room)
        if sub is None:
            sub = self._subs[room] = _Subscription(room, RoomKeys.of(self._prefix, room))
            self._by_channel[sub.channel] = sub
        if sub.synced:
            return
        # The room stays registered either way: the reader subscribes it on reconnect.
        conn = self._conn
        if self._closed or conn is None or not conn.is_connected:
            raise BrokerUnavailable(f"cannot subscribe room {room}: Redis is unreachable")
        if sub.waiter is None or sub.waiter.done():
            sub.waiter = asyncio.get_running_loop().create_future()
        waiter = sub.waiter
        try:
            async with asyncio.timeout(OP_DEADLINE):
                await conn.send_command("SUBSCRIBE", sub.channel, check_health=False)
                ok = await asyncio.shield(waiter)
        except REDIS_ERRORS as exc:
            raise BrokerUnavailable(f"cannot subscribe room {room}: {exc!r}") from exc
        if not ok:
            raise BrokerUnavailable(f"cannot subscribe room {room}: connection lost")

    async def unsubscribe(self, room: str) -> None:
        sub = self._subs.pop(room, None)
        if sub is None:
            return
        del self._by_channel[sub.channel]
        sub.settle(False)
        conn = self._conn
        if conn is not None and conn.is_connected:
            # If this fails the connection is gone, and with it the subscription.
            with contextlib.suppress(*REDIS_ERRORS):
                async with asyncio.timeout(OP_DEADLINE):
                    await conn.send_command("UNSUBSCRIBE", sub.channel, check_health=False)

    async def publish(self, draft: Draft) -> int:
        keys = RoomKeys.of(self._prefix, draft.room)
        dumps = orjson.dumps
        head = b'{"type":"message","room":' + dumps(draft.room) + b',"seq":'
        middle = b',"from":' + dumps(draft.sender) + b',"text":' + dumps(draft.text)
        tail = b',"cid":' + dumps(draft.cid) + b"}"
        seq = await self._call("publish", self._publish, keys=keys.stored, args=[
            secrets.token_hex(4), self._ttl_ms, self._settings.history_size, keys.channel,
            head, middle, tail])
        return int(seq)

    async def publish_event(self, room: str, payload: bytes) -> None:
        await self._call("publish_event", self._redis.publish,
                         RoomKeys.of(self._prefix, room).channel, b"p" + payload)

    async def presence(self, room: str, delta: int) -> int:
        """Add ``delta`` to this replica's count (floor 0); return the room's count over live replicas."""
        mine = max(0, self._members.get(room, 0) + delta)
        if mine:
            self._members[room] = mine
        else:
            self._members.pop(room, None)
        keys = RoomKeys.of(self._prefix, room)
        return int(await self._call("presence", self._presence, keys=[keys.members],
                                    args=[mine, self._ttl_ms, self._settings.node_name, self._lease_ms]))

    async def history(self, room: str, since: int | None, epoch: str | None,
                      limit: int) -> History:
        keys = RoomKeys.of(self._prefix, room)
        reply = await self._call("history", self._history, keys=keys.stored, args=[
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
        done = asyncio.get_running_loop().create_future()
        sub.watchers.append((epoch, seq, done))
        try:
            async with asyncio.timeout(OP_DEADLINE):
                await done
        except TimeoutError:
            log.warning("room %s: seq %d not delivered within %.1fs of its history read; the "
                        "joiner may see it twice", room, seq, OP_DEADLINE)

    async def _call(self, what: str, fn, *args, **kwargs):
        """Run one Redis call, bounded in time; any failure is BrokerUnavailable."""
        if self._closed:
            raise BrokerUnavailable(f"{what}: the broker is closed")
        try:
            async with asyncio.timeout(OP_DEADLINE):
                return await fn(*args, **kwargs)
        except REDIS_ERRORS as exc:
            raise BrokerUnavailable(f"{what} failed: Redis unavailable ({exc!r})") from exc

    # --- the reader ---------------------------------------------------------------

    async def _read_forever(self) -> None:
        attempt = 0
        while True:
            conn = self._new_pubsub_connection()
            connected_at = None
            try:
                await conn.connect()
                connected_at = time.monotonic()
                await self._listen(conn)
            except REDIS_ERRORS as exc:
                if connected_at is not None:
                    log.warning("Redis pub/sub connection lost (%r); reconnecting", exc)
                elif attempt == 0:
                    log.warning("cannot connect to Redis (%r); retrying with backoff", exc)
            except Exception:  # a bug must not end delivery for good
                log.exception("Redis reader failed; reconnecting")
            finally:
                self._lost()
                await conn.disconnect(nowait=True)
            self._first_attempt.set()
            if connected_at is not None and time.monotonic() - connected_at > BACKOFF_MAX:
                attempt = 0  # it was up for a while: a fresh outage starts from the minimum
            delay = min(BACKOFF_MAX, BACKOFF_MIN * 2 ** attempt)
            attempt += 1
            await asyncio.sleep(random.uniform(delay / 2, delay))

    def _new_pubsub_connection(self) -> AbstractConnection:
        pool = self._redis.connection_pool
        name = f"{self._prefix}:pubsub:{self._settings.node_name}".replace(" ", "_")
        # RESP2 whatever the URL says: the reader parses pub/sub replies as plain arrays.
        return pool.connection_class(**{**pool.connection_kwargs, "client_name": name,
                                        "protocol": 2})

    def _lost(self) -> None:
        self._conn = None
        for sub in self._subs.values():
            sub.synced = False
            sub.settle(False)

    async def _listen(self, conn: AbstractConnection) -> None:
        # Publish the connection before the first await so a concurrent subscribe()
        # either lands in this SUBSCRIBE or sends its own.
        self._conn = conn
        channels = [sub.channel for sub in self._subs.values()]
        self._first_attempt.set()
        log.info("Redis pub/sub connected; subscribing %d room(s)", len(channels))
        if channels:
            await conn.send_command("SUBSCRIBE", *channels, check_health=False)
        pinged = False
        while True:
            reply = await conn.read_response(timeout=HEARTBEAT, disconnect_on_error=False)
            if reply is None:  # idle
                if pinged:
                    raise TimeoutError(f"no answer to PING within {HEARTBEAT}s")
                await conn.send_command("PING", check_health=False)
                pinged = True
                continue
            pinged = False
            if isinstance(reply, list) and len(reply) == 3:
                kind, channel, data = reply
                if kind == b"message":
                    await self._on_message(channel, data)
                elif kind == b"subscribe":
                    await self._on_subscribed(channel)

    async def _on_subscribed(self, channel: bytes) -> None:
        sub = self._by_channel.get(channel)
        if sub is None or sub.synced:
            return
        if sub.based:
            await self._catch_up(sub)
        else:
            # Messages published before the server confirmed SUBSCRIBE are covered by
            # the joiners' history; start right after the current seq.
            epoch, seq = await self._redis.mget(sub.keys.epoch, sub.keys.seq)
            sub.epoch, sub.last, sub.based = epoch, int(seq or 0) if epoch else 0, True
        sub.synced = True
        sub.settle(True)
        sub.progressed()

    async def _on_message(self, channel: bytes, data: bytes) -> None:
        sub = self._by_channel.get(channel)
        if sub is None or not sub.synced:
            return  # not (yet) subscribed on this connection: history or catch-up covers it
        if data[:1] == b"p":
            self._hand_over(self._deliver_event, sub.room, data[1:])
            return
        try:
            head, epoch, payload = data[1:].split(b" ", 2)
            seq = int(head)
        except ValueError:
            log.warning("room %s: ignoring a foreign message on its channel: %.60r", sub.room, data)
            return
        if epoch == sub.epoch or (sub.epoch is None and seq == 1):
            if seq <= sub.last:
                return  # already delivered from the stream
            if seq == sub.last + 1:
                sub.epoch, sub.last = epoch, seq
                self._hand_over(self._deliver, sub.room, seq, payload, time.perf_counter())
                if sub.watchers:
                    sub.progressed()
                return
        await self._catch_up(sub)  # a gap, or a new epoch

    async def _catch_up(self, sub: _Subscription) -> None:
        """Deliver, in order, everything stored after what ``sub`` delivered."""
        epoch, last, entries = await self._catch_up_script(
            keys=sub.keys.stored[:3], args=[sub.epoch or b"", sub.last])
        if self._by_channel.get(sub.channel) is not sub:
            return  # unsubscribed meanwhile
        epoch = epoch or None
        if epoch != sub.epoch:
            if sub.epoch is not None:
                log.warning("room %s: epoch %s replaced by %s (Redis lost or expired its data); "
                            "seq restarts", sub.room, sub.epoch.decode(),
                            epoch.decode() if epoch else "none")
            sub.epoch, sub.last = epoch, 0
        for stream_id, fields in entries:
            seq = _seq_of(stream_id)
            if seq <= sub.last:
                continue
            if seq > sub.last + 1:
                log.warning("room %s: messages %d-%d were trimmed before this replica could "
                            "deliver them", sub.room, sub.last + 1, seq - 1)
            sub.last = seq
            self._hand_over(self._deliver, sub.room, seq, fields[1], time.perf_counter())
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

    async def _keep_rooms_alive(self) -> None:
        """Renew the expiry of the rooms this replica has members in, and its presence leases."""
        expiry_every = min(max(self._ttl_ms / 4000, 0.25), 60.0)
        lease_every = min(PRESENCE_RENEW, self._lease_ms / 3000)
        node, loop = self._settings.node_name, asyncio.get_running_loop()
        next_expiry = loop.time() + expiry_every
        while True:
            await asyncio.sleep(min(expiry_every, lease_every))
            subs = list(self._subs.values())
            if (not subs and not self._members) or self._conn is None:
                continue
            pipe = self._redis.pipeline(transaction=False)
            if loop.time() >= next_expiry - expiry_every / 10:  # a timer may fire a little early
                next_expiry = loop.time() + expiry_every
                for sub in subs:
                    for key in sub.keys.stored:
                        pipe.pexpire(key, self._ttl_ms)
            for room, mine in list(self._members.items()):
                await self._presence(keys=[RoomKeys.of(self._prefix, room).members],
                                     args=[mine, self._ttl_ms, node, self._lease_ms], client=pipe)
            try:
                async with asyncio.timeout(OP_DEADLINE):
                    await pipe.execute()
            except REDIS_ERRORS as exc:
                log.debug("renewing room expiry failed: %r", exc)
