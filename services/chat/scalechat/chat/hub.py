"""Which local connections are in which room, and when each room is flushed.

The Hub holds the room map and the loop scheduling; each room's state and
policy is a sans-I/O :class:`~scalechat.chat.room.Room`. A broadcast is framed
once and queued once, in its room: the cost of a message does not grow with
the room's size. At the room's flush its frames are joined once and written to
every member in one write each (a loopback write costs about 10 µs of kernel time; queuing a frame well
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
flush. Presence frames are rate-limited per room (see :mod:`scalechat.chat.room`).
"""

from __future__ import annotations

import asyncio
import time

from scalechat.chat.counters import HotCounters
from scalechat.chat.framing import frame_text
from scalechat.chat.outbox import Outbox
from scalechat.chat.room import Room


class _Tier:
    """Rooms waiting for one kind of flush, and the broadcasts waiting for them."""

    __slots__ = ("interval", "dirty", "received", "scheduled", "last")

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.dirty: list[Room] = []
        self.received: list[float] = []  # received_at of broadcasts written at this tier's flush
        self.scheduled = False
        self.last = float("-inf")


class Hub:
    def __init__(self, loop: asyncio.AbstractEventLoop, counters: HotCounters,
                 flush_interval: float = 0.0) -> None:
        self._loop = loop
        self._interval = flush_interval
        self._prompt = _Tier(0.0)
        self._batching = _Tier(flush_interval)
        self._rooms: dict[str, Room] = {}
        self._counters = counters  # each flush observes its broadcasts' processing time
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

    def connections(self) -> list[Outbox]:
        return [c for batch in self._rooms.values() for c in batch.members]

    def add(self, conn: Outbox) -> int:
        """Add to its room; return the local member count."""
        batch = self._rooms.get(conn.room)
        if batch is None:
            batch = self._rooms[conn.room] = Room(self._interval, time.perf_counter())
        batch.members.add(conn)
        conn.batch, conn.mark = batch, len(batch.frames)  # nothing queued before it joined
        self.connection_count += 1
        return len(batch.members)

    def remove(self, conn: Outbox) -> int:
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
        batch.queue(frame_text(payload), seq)
        tier = self._queue(batch)
        if received_at is not None:
            tier.received.append(received_at)
        return len(batch.members)

    def presence(self, room: str, name: str, payload: bytes) -> None:
        """Send a presence frame now, or hold it for a release, as the room's presence
        budget says (see :mod:`scalechat.chat.room`)."""
        batch = self._rooms.get(room)
        if batch is None:
            return
        now = self._loop.time()
        delay = batch.offer_presence(now, name, payload)
        if delay is None:
            self.broadcast(room, payload)
        elif delay:
            self._loop.call_at(now + delay, self._release_presence, room, batch)

    def _release_presence(self, room: str, batch: Room) -> None:
        if self._rooms.get(room) is not batch:
            return  # the room emptied meanwhile
        for payload in batch.release_presence(self._loop.time()):
            self.broadcast(room, payload)

    def schedule_flush(self, conn: Outbox) -> None:
        """``conn`` has frames of its own to write: they go out at its room's flush."""
        if conn.batch is None:  # not (or no longer) in a room: add() sets it, remove() clears it
            self._loop.call_soon(conn.flush)
            return
        conn.batch.own.append(conn)
        self._queue(conn.batch)

    def _queue(self, batch: Room) -> _Tier:
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
            frames, seqs, own = batch.take()
            if not frames:  # only members' own frames: theirs alone (still in this room)
                for conn in dict.fromkeys(own):
                    if conn.batch is batch:
                        conn.write_batch(frames, seqs, b"")
                continue
            data = frames[0] if len(frames) == 1 else b"".join(frames)
            for conn in list(batch.members):  # a copy: members leave later, but a set must never change mid-loop
                conn.write_batch(frames, seqs, data)
            batch.flushed(now, len(frames), interval)
        if tier.received:
            received, tier.received = tier.received, []
            self._counters.observe_processing(received, now)
