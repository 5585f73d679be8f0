"""Which local connections are in which room, and fan-out to them.

A broadcast is framed once and pushed to every member without awaiting, so
no member can delay another. Each connection's queued frames go out in one
write per flush. Flushes are at least ``flush_interval`` apart: a quiet room
is flushed at the end of the current loop tick, a busy one batches the
messages of up to ``flush_interval`` seconds into one write per member
(a write to a socket costs far more than queuing a frame), so latency grows by
at most ``flush_interval``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from scalechat.chat.connection import Connection
from scalechat.chat.framing import frame_text


class Hub:
    def __init__(self, loop: asyncio.AbstractEventLoop,
                 observe: Callable[[list[float], float], None], flush_interval: float = 0.0) -> None:
        self._loop = loop
        self._flush_interval = flush_interval
        self._flush_scheduled = False
        self._last_flush = 0.0
        self._rooms: dict[str, set[Connection]] = {}
        self._dirty: list[Connection] = []
        self._received: list[float] = []  # received_at of broadcasts not yet flushed
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
        for conn in members:
            conn.push(frame, seq)
        if received_at is not None:
            self._schedule_flush()
            self._received.append(received_at)
        return len(members)

    def schedule_flush(self, conn: Connection) -> None:
        self._schedule_flush()
        self._dirty.append(conn)

    def _schedule_flush(self) -> None:
        if self._flush_scheduled:
            return
        self._flush_scheduled = True
        due = self._last_flush + self._flush_interval
        if due <= self._loop.time():
            self._loop.call_soon(self._flush)
        else:
            self._loop.call_at(due, self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        self._last_flush = self._loop.time()
        dirty, self._dirty = self._dirty, []
        for conn in dirty:
            conn.flush()
        if self._received:
            received, self._received = self._received, []
            self._observe(received, time.perf_counter())
