"""Which local connections are in which room, and fan-out to them.

A broadcast is framed once and queued once, in its room's batch: the cost
of a message does not grow with the room's size. At the room's flush the
batch is joined once and written to every member in one ``transport.write``
each (a loopback write costs about 10 µs of kernel time; queuing a frame well
under one), so no member can delay another. Each room is flushed in one of
two tiers, by how fast frames come to it:

* *prompt*: written at the end of the loop tick that queued the frame. A room
  that gets fewer than two frames per ``flush_interval`` (a small or quiet
  room) would save no write by waiting; under load a tick holds many reads,
  so one flush still covers many messages. Waiting longer for other rooms
  costs latency everywhere (docs/design/flush-tiers.md).
* *batching*: a room expected to get two or more frames per
  ``flush_interval`` (a busy room, where writes dominate the CPU once it is
  big) is written at most once per interval: fewer, larger writes for at
  most ``flush_interval`` more latency.

The expectation is a moving average of the time between a room's frames,
taken at each flush. A room leaves the batching tier when it expects fewer
than one frame per interval; the gap between one and two keeps it from
flapping. With ``flush_interval`` 0 every room is written at the end of each
loop tick. A socket's own frames (history, errors) go out at its room's next
flush. Presence frames are rate-limited per room (see :meth:`Hub.presence`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from scalechat.chat.connection import Connection
from scalechat.chat.framing import frame_text
from scalechat.chat.ratelimit import TokenBucket

GAP_WEIGHT = 0.125  # weight of the newest gap in the moving average (smooths bursty arrivals)
PRESENCE_RATE, PRESENCE_BURST = 10.0, 20  # a room's presence frames per second, and at once
# ... and its presence deliveries (frames x local members) per second, and at once: in a big
# room every join is a frame to every member, so a join storm would otherwise cost joins x members.
PRESENCE_DELIVERIES, PRESENCE_DELIVERY_BURST = 20_000.0, 40_000


class RoomBatch:
    """One room's local members and the frames broadcast to it since its last flush."""

    __slots__ = ("members", "frames", "seqs", "own", "queued", "batching", "gap", "last_flush",
                 "presence", "presence_bucket", "presence_deliveries")

    def __init__(self, gap: float) -> None:
        self.members: set[Connection] = set()
        self.frames: list[bytes] = []
        self.seqs: list[int] = []  # each frame's seq (0 for events), for members still held
        # Members with frames of their own since the last flush: a flush without room frames
        # writes them alone, so a joiner's history costs one write, not one call per member.
        self.own: list[Connection] = []
        self.queued = False  # in a tier's list, waiting for its flush
        self.batching = False
        self.gap = gap  # moving average of the seconds between frames
        self.last_flush = time.perf_counter()
        self.presence: dict[str, bytes] = {}  # name -> its latest presence frame, held back
        self.presence_bucket = TokenBucket(PRESENCE_RATE, PRESENCE_BURST, float("-inf"))
        self.presence_deliveries = TokenBucket(PRESENCE_DELIVERIES, PRESENCE_DELIVERY_BURST,
                                               float("-inf"))

    def presence_cost(self) -> int:
        """Deliveries one presence frame costs: a frame per member, at most the burst (a room
        bigger than that gets a frame per ``PRESENCE_DELIVERY_BURST / PRESENCE_DELIVERIES`` s)."""
        return min(len(self.members), PRESENCE_DELIVERY_BURST)


class _Tier:
    """Rooms waiting for one kind of flush, and the broadcasts waiting for them."""

    __slots__ = ("interval", "dirty", "received", "scheduled", "last")

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.dirty: list[RoomBatch] = []
        self.received: list[float] = []  # received_at of broadcasts written at this tier's flush
        self.scheduled = False
        self.last = float("-inf")


class Hub:
    def __init__(self, loop: asyncio.AbstractEventLoop,
                 observe: Callable[[list[float], float], None], flush_interval: float = 0.0) -> None:
        self._loop = loop
        self._interval = flush_interval
        self._prompt = _Tier(0.0)
        self._batching = _Tier(flush_interval)
        self._rooms: dict[str, RoomBatch] = {}
        self._observe = observe
        self.connection_count = 0

    @property
    def room_count(self) -> int:
        return len(self._rooms)

    def members(self, room: str) -> int:
        batch = self._rooms.get(room)
        return len(batch.members) if batch else 0

    def batching(self, room: str) -> bool:
        """Whether ``room`` is in the batching tier."""
        batch = self._rooms.get(room)
        return batch is not None and batch.batching

    def connections(self) -> list[Connection]:
        return [c for batch in self._rooms.values() for c in batch.members]

    def add(self, conn: Connection) -> int:
        """Add to its room; return the local member count."""
        batch = self._rooms.get(conn.room)
        if batch is None:
            # until measured: under two frames per interval, prompt
            batch = self._rooms[conn.room] = RoomBatch(self._interval)
        batch.members.add(conn)
        conn.batch, conn.mark = batch, len(batch.frames)  # nothing queued before it joined
        self.connection_count += 1
        return len(batch.members)

    def remove(self, conn: Connection) -> int:
        batch = self._rooms.get(conn.room)
        if batch is None or conn not in batch.members:
            return len(batch.members) if batch else 0
        batch.members.discard(conn)
        conn.detach()
        self.connection_count -= 1
        if not batch.members:
            del self._rooms[conn.room]
        return len(batch.members)

    def broadcast(self, room: str, payload: bytes, seq: int = 0,
                  received_at: float | None = None) -> int:
        """Frame ``payload`` once and queue it for every member; return how many."""
        batch = self._rooms.get(room)
        if batch is None:
            return 0
        batch.frames.append(frame_text(payload))
        batch.seqs.append(seq)
        tier = self._queue(batch)
        if received_at is not None:
            tier.received.append(received_at)
        return len(batch.members)

    def presence(self, room: str, name: str, payload: bytes) -> None:
        """Queue a presence frame. A room's presence frames are rate-limited twice:
        ``PRESENCE_RATE`` frames per second (bursts of ``PRESENCE_BURST``), and
        ``PRESENCE_DELIVERIES`` deliveries per second (frames x members, bursts of
        ``PRESENCE_DELIVERY_BURST``). Under both limits a frame goes out at once, in
        order. Over them frames are coalesced to the latest per member name until the
        next release: a member joining and leaving in a loop costs the others a few
        frames a second, not one per join. A release sends the newest frames the
        delivery budget covers (the newest at least) and drops the older ones, whose
        counts the newer frames supersede: a join storm in a room of thousands costs
        its members about ``PRESENCE_DELIVERIES`` frames a second in all, not joins x
        members."""
        batch = self._rooms.get(room)
        if batch is None:
            return
        waiting = batch.presence
        if not waiting:
            now = self._loop.time()
            cost = batch.presence_cost()
            if batch.presence_bucket.allow(now) and batch.presence_deliveries.allow(now, cost):
                self.broadcast(room, payload)
                return
            delay = max(1 / PRESENCE_RATE, batch.presence_deliveries.wait(now, cost))
            self._loop.call_at(now + delay, self._release_presence, room, batch)
        waiting.pop(name, None)
        waiting[name] = payload  # the latest, last in order

    def _release_presence(self, room: str, batch: RoomBatch) -> None:
        waiting, batch.presence = batch.presence, {}
        if self._rooms.get(room) is not batch:
            return  # the room emptied meanwhile
        now = self._loop.time()
        batch.presence_bucket.allow(now)  # the release costs one token
        cost, frames = batch.presence_cost(), list(waiting.values())
        batch.presence_deliveries.reserve(now, cost)  # the newest: the release was timed for it
        sent = 1
        while sent < len(frames) and batch.presence_deliveries.allow(now, cost):
            sent += 1
        for payload in frames[-sent:]:
            self.broadcast(room, payload)

    def schedule_flush(self, conn: Connection) -> None:
        """``conn`` has frames of its own to write: they go out at its room's flush."""
        if conn.batch is None:  # not (or no longer) in a room: add() sets it, remove() clears it
            self._loop.call_soon(conn.flush)
            return
        conn.batch.own.append(conn)
        self._queue(conn.batch)

    def _queue(self, batch: RoomBatch) -> _Tier:
        tier = self._batching if batch.batching else self._prompt
        if not batch.queued:
            batch.queued = True
            tier.dirty.append(batch)
            if not tier.scheduled:
                tier.scheduled = True
                due = tier.last + tier.interval
                if due <= self._loop.time():
                    self._loop.call_soon(self._flush, tier)
                else:
                    self._loop.call_at(due, self._flush, tier)
        return tier

    def _flush(self, tier: _Tier) -> None:
        tier.scheduled = False
        tier.last = self._loop.time()
        now = time.perf_counter()
        interval = self._interval
        dirty, tier.dirty = tier.dirty, []
        for batch in dirty:
            batch.queued = False
            frames, seqs, own = batch.frames, batch.seqs, batch.own
            batch.frames, batch.seqs, batch.own = [], [], []
            if not frames:  # only members' own frames: theirs alone (still in this room)
                for conn in dict.fromkeys(own):
                    if conn.batch is batch:
                        conn.write_batch(frames, seqs, b"")
                continue
            data = frames[0] if len(frames) == 1 else b"".join(frames)
            for conn in list(batch.members):  # a copy: members leave later, but a set must never change mid-loop
                conn.write_batch(frames, seqs, data)
            if frames and interval:
                gap = (now - batch.last_flush) / len(frames)
                batch.last_flush = now
                batch.gap += GAP_WEIGHT * (gap - batch.gap)
                # two or more frames expected per interval to join, fewer than one to leave
                batch.batching = batch.gap <= (interval if batch.batching else interval / 2)
        if tier.received:
            received, tier.received = tier.received, []
            self._observe(received, now)
