"""One room on this node, sans I/O: its members, the frames queued for its next flush,
its flush policy and its presence budget. Every method takes the clock; the
:class:`~scalechat.chat.hub.Hub` schedules flushes and releases on the loop.

Flush policy: a room is in the *batching* tier when it expects two or more frames
per flush interval (a moving average of the time between its frames, taken at
each flush), and leaves it when it expects fewer than one: the gap between one
and two keeps it from flapping (docs/design/flush-tiers.md).

Presence budget: ``PRESENCE_RATE`` frames per second (bursts of
``PRESENCE_BURST``) and ``PRESENCE_DELIVERIES`` deliveries per second, a frame
costing one delivery per member (bursts of ``PRESENCE_DELIVERY_BURST``; a room
bigger than the burst gets a frame per ``PRESENCE_DELIVERY_BURST /
PRESENCE_DELIVERIES`` seconds). Frames over the budget wait, coalesced to the
latest per member name; a release sends the newest the budget covers (the
newest at least) and drops older ones, whose counts the newer supersede.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from scalechat.chat.ratelimit import TokenBucket

if TYPE_CHECKING:
    from scalechat.chat.outbox import Outbox

GAP_WEIGHT = 0.125  # weight of the newest gap in the moving average (smooths bursty arrivals)
PRESENCE_RATE, PRESENCE_BURST = 10.0, 20  # a room's presence frames per second, and at once
# ... and its presence deliveries (frames x local members) per second, and at once: in a big
# room every join is a frame to every member, so a join storm would otherwise cost joins x members.
PRESENCE_DELIVERIES, PRESENCE_DELIVERY_BURST = 20_000.0, 40_000


class Room:
    __slots__ = ("members", "frames", "seqs", "own", "queued", "batching", "gap", "last_flush",
                 "presence", "presence_bucket", "presence_deliveries")

    def __init__(self, gap: float, now: float) -> None:
        self.members: set[Outbox] = set()
        self.frames: list[bytes] = []  # framed broadcasts since the last flush
        self.seqs: list[int] = []  # each frame's seq (0 for events), for members still held
        # Members with frames of their own since the last flush: a flush without room frames
        # writes them alone, so a joiner's history costs one write, not one call per member.
        self.own: list[Outbox] = []
        self.queued = False  # in a tier's list, waiting for its flush
        self.batching = False
        self.gap = gap  # moving average of the seconds between frames (until measured: prompt)
        self.last_flush = now
        self.presence: dict[str, bytes] = {}  # name -> its latest presence frame, held back
        self.presence_bucket = TokenBucket(PRESENCE_RATE, PRESENCE_BURST, float("-inf"))
        self.presence_deliveries = TokenBucket(PRESENCE_DELIVERIES, PRESENCE_DELIVERY_BURST,
                                               float("-inf"))

    # --- frames and flushes -------------------------------------------------------

    def queue(self, frame: bytes, seq: int) -> None:
        self.frames.append(frame)
        self.seqs.append(seq)

    def take(self) -> tuple[list[bytes], list[int], list[Outbox]]:
        """The frames, their seqs and the members with frames of their own, since the last
        flush; the room starts empty again."""
        taken = self.frames, self.seqs, self.own
        self.frames, self.seqs, self.own = [], [], []
        self.queued = False
        return taken

    def flushed(self, now: float, frames: int, interval: float) -> None:
        """Account a flush of ``frames`` room frames at ``now``; may change the tier."""
        if not frames or not interval:
            return
        gap = (now - self.last_flush) / frames
        self.last_flush = now
        self.gap += GAP_WEIGHT * (gap - self.gap)
        # two or more frames expected per interval to join, fewer than one to leave
        self.batching = self.gap <= (interval if self.batching else interval / 2)

    # --- presence -------------------------------------------------------------------

    def presence_cost(self) -> int:
        """Deliveries one presence frame costs: one per member, at most the burst."""
        return min(len(self.members), PRESENCE_DELIVERY_BURST)

    def offer_presence(self, now: float, name: str, payload: bytes) -> float | None:
        """``None``: send ``payload`` now (the budget is taken). Otherwise it is held,
        coalesced per name, and the float is the delay until a release is due, when
        none is pending yet (``0.0`` when one already is)."""
        if not self.presence:
            cost = self.presence_cost()
            if self.presence_bucket.allow(now) and self.presence_deliveries.allow(now, cost):
                return None
            delay = max(1 / PRESENCE_RATE, self.presence_deliveries.wait(now, cost))
        else:
            delay = 0.0
        self.presence.pop(name, None)
        self.presence[name] = payload  # the latest, last in order
        return delay

    def release_presence(self, now: float) -> list[bytes]:
        """The held frames to send now, in order: the newest the budget covers."""
        waiting, self.presence = self.presence, {}
        if not waiting:
            return []
        self.presence_bucket.allow(now)  # the release costs one token
        cost, frames = self.presence_cost(), list(waiting.values())
        self.presence_deliveries.reserve(now, cost)  # the newest: the release was timed for it
        sent = 1
        while sent < len(frames) and self.presence_deliveries.allow(now, cost):
            sent += 1
        return frames[-sent:]
