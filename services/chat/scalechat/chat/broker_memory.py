"""In-process broker: single node only (replicas would each have their own rooms).

Memory is bounded in bytes, not only in messages: each room keeps at most
``history_size`` messages and ``history_room_bytes`` bytes of them (the stored
frames, measured); all rooms together stay within the process's
:class:`~scalechat.chat.budget.MemoryBudget`, by dropping the oldest messages of
the least recently active rooms first. An empty room is forgotten after
``room_idle_seconds``, and at most ``max_rooms`` empty rooms are kept (least
recently active forgotten first). A forgotten or
restarted room starts a new epoch, so a stale ``since`` is reported as lost
continuity rather than silently resumed. The dedupe window of resent ``cid`` values
covers the same ``history_size`` seqs as the history.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections import OrderedDict, deque

from scalechat.chat.broker import Deliver, DeliverEvent, Done, Draft, History, Published, select_history
from scalechat.chat.budget import MemoryBudget
from scalechat.chat.protocol import encode_message
from scalechat.chat.settings import Settings


class _Room:
    __slots__ = ("epoch", "seq", "entries", "bytes", "subscribed", "members", "last_active",
                 "cids", "cid_order")

    def __init__(self, now: float) -> None:
        self.epoch = secrets.token_hex(4)
        self.seq = 0
        self.entries: deque[tuple[int, bytes]] = deque()
        self.bytes = 0  # of the payloads in entries
        self.subscribed = False
        self.members = 0
        self.last_active = now
        self.cids: dict[str, int] = {}  # "<sender>\n<cid>" -> seq, for the last history_size seqs
        self.cid_order: deque[tuple[int, str]] = deque()


def _not_started(*args: object) -> None:
    raise RuntimeError("the broker delivers once started")


class MemoryBroker:
    """Delivers synchronously inside ``publish``; never unavailable."""

    def __init__(self, settings: Settings, clock=time.monotonic,
                 budget: MemoryBudget | None = None) -> None:
        self._settings = settings
        # Read per message: kept here (Settings is frozen) rather than read through it.
        self._history_size = settings.history_size
        self._history_room_bytes = settings.history_room_bytes
        self._clock = clock
        self._budget = budget or MemoryBudget(1 << 62)
        self._rooms: dict[str, _Room] = {}
        # Rooms holding history, least recently published to first: who sheds first.
        self._holding: OrderedDict[str, None] = OrderedDict()
        # Rooms with no subscriber, least recently active first.
        self._idle: OrderedDict[str, None] = OrderedDict()
        self._deliver: Deliver = _not_started
        self._deliver_event: DeliverEvent = _not_started
        self._sweeper: asyncio.Task | None = None

    @property
    def ready(self) -> bool:
        return True

    @property
    def room_count(self) -> int:
        return len(self._rooms)

    async def start(self, deliver: Deliver, deliver_event: DeliverEvent) -> None:
        self._deliver, self._deliver_event = deliver, deliver_event
        self._sweeper = asyncio.create_task(self._sweep_forever())

    async def close(self) -> None:
        if self._sweeper:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper

    def _room(self, name: str) -> _Room:
        room = self._rooms.get(name)
        if room is None:
            room = self._rooms[name] = _Room(self._clock())
            self._mark_idle(name)
        return room

    def _mark_idle(self, name: str) -> None:
        self._idle[name] = None
        self._idle.move_to_end(name)
        while len(self._idle) > self._settings.max_rooms:
            oldest, _ = self._idle.popitem(last=False)
            self._forget(oldest)

    def _forget(self, name: str) -> None:
        room = self._rooms.pop(name)
        self._budget.history -= room.bytes
        self._holding.pop(name, None)

    async def subscribe(self, room: str) -> None:
        state = self._room(room)
        state.subscribed = True
        self._idle.pop(room, None)

    async def unsubscribe(self, room: str) -> None:
        state = self._rooms.get(room)
        if state is not None and state.subscribed:
            state.subscribed = False
            state.last_active = self._clock()
            self._mark_idle(room)

    async def publish(self, draft: Draft) -> Published:
        return self._store(draft)

    def submit(self, draft: Draft, done: Done) -> None:
        """Stored, delivered and ``done`` called before it returns (see :meth:`Broker.submit`)."""
        done(self._store(draft), None)

    def _store(self, draft: Draft) -> Published:
        state = self._room(draft.room)
        if draft.cid is not None and self._history_size:
            dedupe = f"{draft.sender}\n{draft.cid}"
            original = state.cids.get(dedupe)
            if original is not None and original > state.seq - self._history_size:
                first = state.entries[0][0] if state.entries else state.seq + 1
                payload = state.entries[original - first][1] if original >= first else None
                return Published(original, payload, duplicate=True)
            self._remember(state, dedupe, state.seq + 1)
        state.seq += 1
        seq = state.seq
        payload = encode_message(draft.room, seq, state.epoch, draft.sender, draft.text,
                                 int(time.time() * 1000), draft.cid)
        self._keep(draft.room, state, seq, payload)
        state.last_active = self._clock()
        if state.subscribed:
            self._deliver(draft.room, seq, payload, draft.received_at)
        return Published(seq)

    def _keep(self, name: str, state: _Room, seq: int, payload: bytes) -> None:
        """Append to the room's history within its caps and the process budget."""
        budget, entries, keep = self._budget, state.entries, self._history_size
        if not keep:
            return
        size = len(payload)
        entries.append((seq, payload))
        state.bytes += size
        budget.history += size
        cap = self._history_room_bytes
        while len(entries) > keep or (state.bytes > cap and len(entries) > 1):
            self._drop_oldest(state)
        holding = self._holding
        holding[name] = None
        holding.move_to_end(name)
        if budget.history > budget.history_room:
            self._shed()

    def _drop_oldest(self, state: _Room) -> None:
        size = len(state.entries.popleft()[1])
        state.bytes -= size
        self._budget.history -= size

    def _shed(self) -> None:
        """Drop the oldest messages of the least recently active rooms until within budget."""
        budget, holding, rooms = self._budget, self._holding, self._rooms
        while budget.history > budget.history_room and holding:
            name = next(iter(holding))
            state = rooms[name]
            while state.entries and budget.history > budget.history_room:
                self._drop_oldest(state)
                budget.history_dropped += 1
            if not state.entries:
                del holding[name]

    def _remember(self, state: _Room, dedupe: str, seq: int) -> None:
        order = state.cid_order
        if dedupe in state.cids:  # out of the window but not yet pruned: forget the old entry
            order.remove((state.cids[dedupe], dedupe))
        state.cids[dedupe] = seq
        order.append((seq, dedupe))
        oldest = seq - self._history_size
        while order[0][0] <= oldest:
            del state.cids[order.popleft()[1]]

    async def publish_event(self, room: str, payload: bytes) -> None:
        state = self._rooms.get(room)
        if state is not None and state.subscribed:
            self._deliver_event(room, payload)

    async def presence(self, room: str, delta: int) -> int:
        state = self._room(room)
        state.members = max(0, state.members + delta)
        return state.members

    async def history(self, room: str, since: int | None, epoch: str | None,
                      limit: int) -> History:
        state = self._room(room)
        return select_history(state.entries, state.epoch, state.seq, since, epoch, limit)

    def sweep(self) -> int:
        """Forget rooms idle for longer than room_idle_seconds; return how many."""
        deadline = self._clock() - self._settings.room_idle_seconds
        forgotten = 0
        for name in list(self._idle):
            if self._rooms[name].last_active > deadline:
                break  # _idle is ordered by last activity
            del self._idle[name]
            self._forget(name)
            forgotten += 1
        return forgotten

    async def _sweep_forever(self) -> None:
        interval = min(max(self._settings.room_idle_seconds / 4, 0.05), 30.0)
        while True:
            await asyncio.sleep(interval)
            self.sweep()
