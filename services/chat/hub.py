"""Which local connections are in which room, and fan-out to them.

A broadcast is framed once and pushed to every member without awaiting, so
no member can delay another. Each connection's queued frames go out in one
write per flush (a write to a socket costs far more than queuing a frame),
and flushes come in two tiers:

* every socket is flushed at least ``flush_interval`` apart: a quiet room at
  the end of the current loop tick, a busy one batches what arrives within
  the interval;
* a socket that averages two or more frames per write (a member of a busy,
  big room) moves to the *batching* tier, flushed at least
  ``2 * flush_interval`` apart: twice the frames per write, for a latency
  that grows by at most ``2 * flush_interval``. It moves back when its
  average falls below two.

Small rooms thus keep the short window (batching them would add latency and
save nothing) while big rooms, where writes dominate the CPU, batch more.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from scalechat.chat.connection import Connection
from scalechat.chat.framing import frame_text

BATCHING_FRAMES = 2.0  # average frames per write from which a socket joins the batching tier


class _Tier:
    """Sockets waiting for one kind of flush, and the broadcasts waiting for them."""

    __slots__ = ("interval", "dirty", "received", "scheduled", "last")

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.dirty: list[Connection] = []
        self.received: list[float] = []  # received_at of broadcasts whose last write is in this tier
        self.scheduled = False
        self.last = float("-inf")


class Hub:
    def __init__(self, loop: asyncio.AbstractEventLoop,
                 observe: Callable[[list[float], float], None], flush_interval: float = 0.0) -> None:
        self._loop = loop
        self._normal = _Tier(flush_interval)
        self._batching = _Tier(2 * flush_interval)
        self._rooms: dict[str, set[Connection]] = {}
        self._observe = observe
        self.connection_count = 0

    @property
    def room_count(self) -> int:
        return len(self._rooms)

    def members(self, room: str) -> int:
        return len(self._rooms.get(room, ()))

    def connections(self) -> list[Connection]:
        return [c for members in self._rooms.values() for c in members]

    def add(self, conn: Connection) -> int:
        """Add to its room; return the local member count."""
        members = self._rooms.setdefault(conn.room, set())
        members.add(conn)
        self.connection_count += 1
        return len(members)

    def remove(self, conn: Connection) -> int:
        members = self._rooms.get(conn.room)
        if members is None or conn not in members:
            return len(members or ())
        members.discard(conn)
        self.connection_count -= 1
        if not members:
            del self._rooms[conn.room]
        return len(members)

    def broadcast(self, room: str, payload: bytes, seq: int = 0,
                  received_at: float | None = None) -> int:
        """Frame ``payload`` once and queue it for every member; return how many."""
        members = self._rooms.get(room)
        if not members:
            return 0
        frame = frame_text(payload)
        batching = False
        for conn in members:
            conn.push(frame, seq)
            batching = batching or conn.batching
        if received_at is not None:
            tier = self._batching if batching else self._normal
            tier.received.append(received_at)
            self._schedule(tier)
        return len(members)

    def schedule_flush(self, conn: Connection) -> None:
        """``conn`` has frames to write (its first since its last write)."""
        tier = self._batching if conn.batching else self._normal
        tier.dirty.append(conn)
        self._schedule(tier)

    def _schedule(self, tier: _Tier) -> None:
        if tier.scheduled:
            return
        tier.scheduled = True
        due = tier.last + tier.interval
        if due <= self._loop.time():
            self._loop.call_soon(self._flush, tier)
        else:
            self._loop.call_at(due, self._flush, tier)

    def _flush(self, tier: _Tier) -> None:
        tier.scheduled = False
        tier.last = self._loop.time()
        dirty, tier.dirty = tier.dirty, []
        for conn in dirty:
            frames = conn.flush()
            if frames:  # a moving average of frames per write decides the tier of the next one
                conn.frames_per_write += 0.25 * (frames - conn.frames_per_write)
                conn.batching = conn.frames_per_write >= BATCHING_FRAMES
        if tier.received:
            received, tier.received = tier.received, []
            self._observe(received, time.perf_counter())
