"""One connection's receive path and its accounting: the generator's hot path.

A message's text starts with ``"<sender> <msgno> <scheduled_ns> "`` (see
:mod:`scalechat.loadgen.worker`); :meth:`Client.on_messages` gets every
complete payload of one TCP read and counts each receipt against the stage
it belongs to (``run``: a :class:`~scalechat.loadgen.worker.StageRun`).

When the C extension :mod:`scalechat.loadgen._fastscan` is built, each
connection's C ``Scanner`` sees every read first (``WSClient``'s scan hook)
and accounts the plain in-order message frames without creating a Python
object per message (latencies wait in a :class:`ReceiptTally`, binned in
batches); it stops at the first frame that needs a decision (a gap, a
repeat, a control or history frame, a receipt after the deadline...) and
the Python path below takes the rest.

Guarantees, per receiving client and sender: a message counts once, as
received (before the stage's drain deadline) or late (after it), if it was
scheduled inside the measurement window; a repeat counts as a duplicate; a
message that arrives after a later one of the same sender counts as
out-of-order (and received). Up to :data:`MISSING_LIMIT` skipped numbers per
sender are remembered; a message reordered further back than that counts as a
duplicate. The C path, the numpy path and the per-message path count identically
(tests/loadgen/test_fastscan.py and test_worker.py feed them the same streams).
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from scalechat.loadgen.plan import RoomPlan, Timetable
from scalechat.loadgen.wsclient import WSClient

try:
    from scalechat.loadgen._fastscan import Scanner, Tally
except ImportError:  # built without a C compiler: the Python path alone, slower
    Scanner = Tally = None

if TYPE_CHECKING:
    from scalechat.loadgen.worker import StageRun

MISSING_LIMIT = 4096  # skipped msgnos remembered per (receiver, sender)
VECTOR_MIN = 32  # batches at least this long are accounted with numpy
# The measurement header at the start of our message text.
HEADER = re.compile(rb'"text":"(\d{1,9}) (\d{1,18}) (\d{1,19}) ')
TEXT_HEADER = re.compile(r"(\d{1,9}) (\d{1,18}) (\d{1,19}) ")  # the same, in a decoded text
loads = orjson.loads
monotonic_ns = time.monotonic_ns


class ReceiptTally:
    """What the C scanners accounted for one stage, until :meth:`flush` moves it into the stage.

    Bounded: at most ``capacity`` latencies wait (a full buffer calls
    :meth:`flush` from inside the scan). Latencies are integer nanoseconds,
    converted to seconds exactly as the Python path does.
    """

    __slots__ = ("run", "latencies", "echoes", "c")
    CAPACITY = 1 << 16

    def __init__(self, run: StageRun, capacity: int = CAPACITY) -> None:
        self.run = run
        self.latencies = np.zeros(capacity, dtype=np.int64)
        self.echoes = np.zeros(capacity, dtype=np.int64)
        self.c = Tally(self.latencies, self.echoes, self.flush)

    def set_window(self, start_ns: int, end_ns: int, deadline_ns: int) -> None:
        c = self.c
        c.start_ns, c.end_ns, c.deadline_ns = start_ns, end_ns, deadline_ns

    def scanner(self, client: Client) -> Scanner:
        return Scanner(self.c, client.highest, client.idx)

    def flush(self) -> None:
        run = self.run
        if n_latencies := self.c.n_latencies:  # the multiplications copy before take() frees the buffers
            run.result.delivery.record_many(self.latencies[:n_latencies] * 1e-9)
        if n_echoes := self.c.n_echoes:
            run.result.echo.record_many(self.echoes[:n_echoes] * 1e-9)
        _, _, frames, received = self.c.take()
        run.received += received
        run.live_received += frames


class Room:
    __slots__ = ("plan", "members", "draw_size")

    def __init__(self, plan: RoomPlan, draw_size) -> None:
        self.plan = plan
        self.members = 0  # clients whose history frame arrived and that are not closed
        self.draw_size = draw_size


class Client:
    """One connection; ``on_messages`` is the receive hot path.

    A batch made only of message frames (the common case under load) is
    scanned with one regex over the joined payloads and accounted with numpy
    (:meth:`_account_many`); small batches, and batches whose senders are not
    simply in order, go message by message (:meth:`_account_each`). Both
    count exactly the same way.
    """

    __slots__ = ("idx", "room", "run", "ws", "joined", "timetable", "msgno", "highest",
                 "missing", "closing", "is_member")

    def __init__(self, idx: int, room: Room, run: StageRun, timetable: Timetable) -> None:
        self.idx = idx
        self.room = room
        self.run = run
        self.ws: WSClient | None = None
        self.joined = asyncio.get_running_loop().create_future()
        self.timetable = timetable
        self.msgno = 0
        self.highest = np.full(room.plan.clients, -1, dtype=np.int64)  # per sender: highest msgno seen
        self.missing: dict[int, set[int]] | None = None  # per sender: msgnos skipped so far
        self.closing = False  # we started the close
        self.is_member = False

    def on_messages(self, batch: list[bytes]) -> None:
        now = monotonic_ns()
        n = len(batch)
        blob = batch[0] if n == 1 else b"".join(batch)
        # Every frame starts with {"type":"; only a history frame nests more, and inside
        # JSON strings quotes are escaped, so the counts tell a pure message batch.
        extra: list[tuple[str, str, str]] = []
        if blob.count(b'{"type":"message"') != n or blob.count(b'{"type":"') != n:
            messages = []
            for payload in batch:
                if payload.startswith(b'{"type":"message"'):
                    messages.append(payload)
                    continue
                frame = loads(payload)
                if frame.get("type") == "message":  # a server that orders keys otherwise
                    messages.append(b"")
                    match = TEXT_HEADER.match(str(frame.get("text")))
                    if match:
                        extra.append(match.groups())
                else:
                    self._other(frame)
            n = len(messages)
            blob = b"".join(messages)
        self.run.live_received += n
        fields = HEADER.findall(blob) + extra if extra else HEADER.findall(blob)
        if len(fields) >= VECTOR_MIN:
            self._account_many(fields, now)
        elif fields:
            self._account_each(fields, now)

    def _account_each(self, fields: list[tuple[bytes, bytes, bytes]], now: int) -> None:
        run = self.run
        start, end, deadline = run.measure_start_ns, run.measure_end_ns, run.deadline_ns
        highest, clients = self.highest, len(self.highest)
        record, record_echo, events = run.record, run.record_echo, run.events
        for s, m, t in fields:
            sender, msgno, sched = int(s), int(m), int(t)
            if sender >= clients:
                continue  # not one of ours (someone else talking in the room)
            h = int(highest[sender])
            repeat = reordered = False
            if msgno > h:
                if msgno > h + 1:
                    self._gap(sender, h + 1, msgno)
                highest[sender] = msgno
            else:
                missing = self.missing.get(sender) if self.missing else None
                if missing is not None and msgno in missing:
                    missing.discard(msgno)
                    reordered = True
                else:
                    repeat = True
            if sched < start or sched >= end:
                continue  # warm-up traffic
            if repeat:
                run.duplicates += 1
                continue
            if reordered:
                run.out_of_order += 1
            if now > deadline:
                run.late += 1
                continue
            run.received += 1
            latency = (now - sched) * 1e-9
            record(latency)
            if sender == self.idx:
                record_echo(latency)
            if events is not None:
                self._log_receipt(sender, msgno, sched, now)

    def _account_many(self, fields: list[tuple[bytes, bytes, bytes]], now: int) -> None:
        """Vectorized ``_account_each`` for batches where every sender's msgnos only grow."""
        try:
            arr = np.array(fields, dtype=np.int64)
        except OverflowError:  # a 19-digit number beyond int64: not ours, let the exact path sort it out
            return self._account_each(fields, now)
        sender, msgno, sched = arr[:, 0], arr[:, 1], arr[:, 2]
        highest = self.highest
        if int(sender.max()) >= len(highest):
            return self._account_each(fields, now)
        order = np.argsort(sender, kind="stable")
        s_sorted, m_sorted = sender[order], msgno[order]
        first = np.empty(len(order), dtype=bool)
        first[0] = True
        np.not_equal(s_sorted[1:], s_sorted[:-1], out=first[1:])
        previous = np.empty_like(m_sorted)
        previous[0] = 0
        previous[1:] = m_sorted[:-1]
        previous[first] = highest[s_sorted[first]]
        if not (m_sorted > previous).all():
            return self._account_each(fields, now)  # a repeat or a late reordering: the exact slow path
        gaps = np.flatnonzero(m_sorted > previous + 1)
        for i in gaps.tolist():
            self._gap(int(s_sorted[i]), int(previous[i]) + 1, int(m_sorted[i]))
        last = np.empty(len(order), dtype=bool)
        last[-1] = True
        last[:-1] = first[1:]
        highest[s_sorted[last]] = m_sorted[last]
        run = self.run
        measured = (sched >= run.measure_start_ns) & (sched < run.measure_end_ns)
        count = int(measured.sum())
        if not count:
            return
        if now > run.deadline_ns:
            run.late += count
            return
        run.received += count
        latency = (now - sched[measured]) * 1e-9
        run.result.delivery.record_many(latency)
        echo = latency[sender[measured] == self.idx]
        if echo.size:
            run.result.echo.record_many(echo)
        if run.events is not None:
            for s, m, t in zip(sender[measured].tolist(), msgno[measured].tolist(), sched[measured].tolist()):
                self._log_receipt(s, m, t, now)

    def _log_receipt(self, sender: int, msgno: int, sched: int, now: int) -> None:
        first = self.room.plan.first_client
        self.run.events.receipt(self.run.index, first + sender, msgno, first + self.idx, sched, now)

    def _gap(self, sender: int, first: int, stop: int) -> None:
        """Remember skipped msgnos, to tell a late (reordered) one from a repeat.

        At most MISSING_LIMIT per sender are kept (the newest), so heavy loss
        costs bounded memory; a message reordered further back than that
        counts as a duplicate.
        """
        if self.missing is None:
            self.missing = {}
        missing = self.missing.setdefault(sender, set())
        missing.update(range(max(first, stop - MISSING_LIMIT), stop))
        if len(missing) > MISSING_LIMIT:
            self.missing[sender] = set(sorted(missing)[-MISSING_LIMIT // 2:])

    def _other(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "history":
            if not self.joined.done():
                self.joined.set_result(None)
            if not self.is_member:
                self.is_member = True
                self.room.members += 1
        elif kind == "error":
            self.run.errors[str(frame.get("code", "error"))] += 1

    def on_closed(self, fut: asyncio.Future) -> None:
        code = fut.result().code
        if self.is_member:
            self.is_member = False
            self.room.members -= 1
        if not self.closing or code != 1000:
            self.run.errors[f"close_{code}"] += 1
