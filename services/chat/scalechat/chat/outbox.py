"""The outgoing side of one client socket: non-blocking, bounded, coalesced.

Nothing here awaits or blocks a broadcast. Room broadcasts are queued once per
room (see Hub) and handed to ``write_batch`` at the room's flush, already
joined: one write per member per flush (through its :class:`~scalechat.chat.link.Link`),
with no per-member work
per message. Frames for this socket alone (its history, its errors) go through
``push`` and are written first at the same flush, in the order they were
queued relative to the room's frames. The bytes waiting for a connection
(queued plus in the transport) are bounded by ``limit`` (plus the history
frame sent on join counts too): past it the connection is condemned as a slow
consumer and its owner closes it with 1013. A history frame is queued as parts
that reference the room's stored messages and written with ``writelines``, so
joiners share those bytes instead of holding a copy each.

Join ordering, kept here and only here: between :meth:`Outbox.hold` and
:meth:`Outbox.release` the room's live frames are set aside with their
seqs; ``release(history, last_seq)`` queues the history frame first, then the
held frames whose seq is above ``last_seq`` (and every event), in order. So a
joiner gets its history, then live messages, with no gap and no repeat, however
the broker's history read and the room's broadcasts interleave.

Sans I/O: the socket is a :class:`~scalechat.chat.link.Link`; only
:meth:`Outbox.close`, which waits for the peer, needs an event loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from scalechat.chat.framing import payload_of
from scalechat.chat.link import Link
from scalechat.chat.ratelimit import TokenBucket

SHARED_WRITE = 65536  # queued bytes from which a flush writes the parts as they are (writelines)

if TYPE_CHECKING:
    from scalechat.chat.room import Room


class Outbox:
    __slots__ = ("link", "room", "name", "limit", "bucket", "byte_bucket", "_pending",
                 "_pending_bytes", "_held", "dead", "_schedule_flush", "on_overflow", "_deflate",
                 "batch", "mark")

    def __init__(self, link: Link, room: str, name: str, limit: int, bucket: TokenBucket,
                 schedule_flush: Callable[[Outbox], None],
                 on_overflow: Callable[[Outbox], None],
                 byte_bucket: TokenBucket | None = None) -> None:
        self.link = link
        self.room = room
        self.name = name
        self.limit = limit
        self.bucket = bucket
        self.byte_bucket = byte_bucket  # bytes of frames per second; None: no such limit
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._held: list[tuple[int, bytes]] | None = None
        self.dead = False
        self._schedule_flush = schedule_flush
        self.on_overflow = on_overflow
        # With permessage-deflate negotiated, frames go through the connection's compressor
        # one by one (a zlib stream per connection): the costly path the default avoids.
        self._deflate = link.compress
        # Set by the Hub (see hub.py): the room's queued frames, and how many of
        # them are not this socket's to write from the batch (queued before it
        # joined, or already moved into _pending to keep a personal frame's order).
        self.batch: Room | None = None
        self.mark = 0

    def push(self, frame: bytes, seq: int = 0) -> None:
        """Queue one frame for this socket alone, after the room frames queued so far.

        ``seq`` lets a held connection drop what its history covers.
        """
        if self.dead:
            return
        if self._held is not None:
            self._held.append((seq, frame))
            return
        self._catch_up()
        if not self._pending:
            self._schedule_flush(self)
        self._pending.append(frame)
        self._pending_bytes += len(frame)
        if self._pending_bytes > self.limit:
            self._condemn()

    def _catch_up(self) -> None:
        """Move the room frames queued since ``mark`` into ``_pending`` (order kept),
        or aside with their seqs while held."""
        batch = self.batch
        if batch is None or len(batch.frames) <= self.mark:
            return
        start, self.mark = self.mark, len(batch.frames)
        self._take(batch.frames, batch.seqs, start)

    def _take(self, frames: list[bytes], seqs: list[int], start: int) -> None:
        """Queue ``frames[start:]`` behind our own frames, or aside with their seqs while held."""
        if self._held is not None:
            self._held.extend(zip(seqs[start:], frames[start:]))
            return
        rest = frames[start:] if start else frames
        self._pending.extend(rest)
        self._pending_bytes += sum(map(len, rest))

    def detach(self) -> None:
        """Leave the room's batch, keeping the frames it queued before we left."""
        self._catch_up()
        self.batch, self.mark = None, 0

    def write_batch(self, frames: list[bytes], seqs: list[int], data: bytes) -> int:
        """At the room's flush: write our own frames, then ``frames`` (``data`` is them joined).

        Returns how many frames were written.
        """
        mark, self.mark = self.mark, 0
        if self.dead:
            return 0
        if self._held is not None:
            self._take(frames, seqs, mark)
            return 0
        if mark or self._pending or self._deflate:
            self._take(frames, seqs, mark)
            return self.flush()
        if not frames:
            return 0
        if len(data) + self.link.buffered() > self.limit:
            self._condemn()
            return 0
        self.link.write(data)
        return len(frames)

    def hold(self) -> None:
        """Keep live frames aside until the history frame is sent (see release)."""
        self._held = []

    def release(self, first: list[bytes], last_seq: int) -> None:
        """Send ``first`` (the history frame's parts), then held frames it does not cover.

        The history counts against the send buffer like any frame (the caller
        keeps it within half of it).
        """
        self._catch_up()  # room frames queued since the last flush join the held ones
        held, self._held = self._held or [], None
        if not self.dead:
            if self._deflate:  # the compressor takes whole frames
                first = [b"".join(first)]
            if not self._pending:
                self._schedule_flush(self)
            self._pending.extend(first)
            self._pending_bytes += sum(map(len, first))
        for seq, frame in held:
            if seq == 0 or seq > last_seq:
                self.push(frame)

    def flush(self) -> int:
        """Write every queued frame in one write; return how many frames."""
        if self.dead or not self._pending:
            return 0
        if self._pending_bytes + self.link.buffered() > self.limit:
            self._condemn()
            return 0
        frames = len(self._pending)
        pending, nbytes = self._pending, self._pending_bytes
        self._pending = []
        self._pending_bytes = 0
        if self._deflate:
            for frame in pending:
                self.link.send_compressed(payload_of(frame))
        elif nbytes >= SHARED_WRITE:  # a history: keep referencing the stored messages
            self.link.writelines(pending)
        else:
            self.link.write(pending[0] if frames == 1 else b"".join(pending))
        return frames

    def queued_bytes(self) -> int:
        """Bytes waiting for this client: queued here and in the transport."""
        return self._pending_bytes + self.link.buffered()

    def condemn(self) -> None:
        """Drop what is queued and have the owner close the socket as a slow consumer."""
        if not self.dead:
            self._condemn()

    def drain(self) -> None:
        """Write every frame queued so far, then take no more (``push`` drops them)."""
        self._catch_up()
        self.flush()
        self.dead = True

    async def close(self, code: int, reason: str, timeout: float) -> bool:
        """Write what is queued, then close the socket (see :meth:`Link.close`: gone within
        twice ``timeout``). Returns whether it was aborted with bytes it never took."""
        self.drain()
        return await self.link.close(code, reason, timeout)

    def _condemn(self) -> None:
        self.dead = True
        self._pending.clear()
        self._pending_bytes = 0
        self.on_overflow(self)
