"""The broker interface: where messages get their seq, are stored and fanned out to nodes.

Guarantee (every implementation): ``publish`` returns only after the message is
stored in the room's history with the next seq (1, 2, 3, ... with no gaps),
and every node subscribed to the room is then handed it through ``deliver``
in seq order, at most once per node. Publishing is idempotent by the sender's
``cid``: a message whose (sender, cid) the room stored within its last
``history_size`` seqs (none with ``history_size`` 0) is not stored again; ``publish`` returns the original
seq and payload (:class:`Published`). If ``publish`` raises
:class:`BrokerUnavailable` the message may or may not be stored (Redis may have
run a batch whose reply was lost), so a client resends with the same ``cid``.
Presence events (``publish_event``) are best effort: at most once, not stored.

Implementations: :mod:`scalechat.chat.broker_memory` (single process only) and
:mod:`scalechat.chat.broker_redis` (replicas share rooms, sharded over Redis
instances); chosen by ``Settings.broker``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Protocol

from scalechat.chat.budget import MemoryBudget
from scalechat.chat.settings import Settings

# deliver(room, seq, payload, received_at): payload is an encoded ``message`` frame;
# received_at is time.perf_counter() when the message reached this process.
Deliver = Callable[[str, int, bytes, float], None]
# deliver_event(room, payload): an encoded presence frame.
DeliverEvent = Callable[[str, bytes], None]


class Draft:
    """A message before the broker gives it a seq and a timestamp.

    A plain class, not a dataclass: built once per message, and mypyc compiles
    an ``__init__`` written out but not one that ``dataclasses`` generates.
    """

    __slots__ = ("room", "sender", "text", "cid", "received_at")

    def __init__(self, room: str, sender: str, text: str, cid: str | None,
                 received_at: float) -> None:
        self.room, self.sender, self.text, self.cid = room, sender, text, cid
        self.received_at = received_at


class Published:
    """What ``publish`` stored: its seq, or for a resent ``cid`` the original one.

    ``original`` is the stored message frame when this was a duplicate (None
    otherwise, and when the original has left the history).
    """

    __slots__ = ("seq", "duplicate", "original")

    def __init__(self, seq: int, original: bytes | None = None, duplicate: bool = False) -> None:
        self.seq, self.original, self.duplicate = seq, original, duplicate or original is not None


# done(result, error): what became of one submitted draft (see Broker.submit).
Done = Callable[["Published | None", "BaseException | None"], None]


@dataclass(frozen=True, slots=True)
class History:
    """A room's history as a joiner sees it.

    ``messages`` are encoded message frames in seq order, ending at ``last_seq``.
    ``continuity_lost`` is true when the requested ``since`` could not be honoured
    (another epoch, or messages after it were already dropped): the client then
    gets the latest messages and must not assume it saw everything in between.
    """

    epoch: str
    last_seq: int
    messages: Sequence[bytes]
    continuity_lost: bool


class Broker(Protocol):
    async def start(self, deliver: Deliver, deliver_event: DeliverEvent) -> None: ...

    async def close(self) -> None: ...

    @property
    def ready(self) -> bool:
        """False while the broker cannot store messages (``/readyz`` reports it)."""
        ...

    async def subscribe(self, room: str) -> None:
        """Start delivering the room's messages to this node (called on its first local member)."""

    async def unsubscribe(self, room: str) -> None:
        """Stop delivering the room's messages (called when its last local member leaves)."""

    async def publish(self, draft: Draft) -> Published:
        """Store and fan out, or recognise a resent ``cid``. Raises BrokerUnavailable."""
        ...

    def submit(self, draft: Draft, done: Done) -> None:
        """:meth:`publish` without waiting: ``done(result, None)`` or ``done(None, error)`` is
        called exactly once, before this returns (a broker that stores in this process)
        or from the broker's reply (one that stores remotely); never a coroutine.

        Drafts of one room are stored in the order they were submitted, so a
        connection need not wait for one message before reading the next. Raises
        BrokerUnavailable at once when the broker knows it cannot store.
        """
        ...

    async def publish_event(self, room: str, payload: bytes) -> None: ...

    async def presence(self, room: str, delta: int) -> int:
        """Add ``delta`` to the room's member count; return the new count."""
        ...

    async def history(self, room: str, since: int | None, epoch: str | None,
                      limit: int) -> History:
        """Messages after ``since`` (same epoch), else the last ``limit`` messages."""
        ...


def create_broker(settings: Settings, budget: MemoryBudget | None = None) -> Broker:
    """The broker ``settings.broker`` names; the memory broker keeps its history in ``budget``."""
    if settings.broker == "memory":
        from scalechat.chat.broker_memory import MemoryBroker
        return MemoryBroker(settings, budget=budget)
    from scalechat.chat.broker_redis import RedisBroker
    return RedisBroker(settings)


def select_history(entries: Sequence[tuple[int, bytes]], epoch: str, last_seq: int,
                   since: int | None, since_epoch: str | None, limit: int) -> History:
    """Apply the resume rules to a room's retained ``(seq, payload)`` entries.

    ``since`` is honoured when it belongs to this epoch (or no epoch was given)
    and every message after it is still retained; otherwise continuity is lost.
    """
    first_retained = entries[0][0] if entries else last_seq + 1
    if since is not None:
        same_epoch = since_epoch is None or since_epoch == epoch
        if same_epoch and first_retained - 1 <= since <= last_seq:
            start = len(entries) - (last_seq - since)  # seqs are contiguous
            return History(epoch, last_seq, [p for _, p in islice(entries, start, None)], False)
    tail = [p for _, p in islice(entries, max(0, len(entries) - limit), None)]
    return History(epoch, last_seq, tail, since is not None)
