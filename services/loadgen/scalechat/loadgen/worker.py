"""One load-generator process: connections, open-loop sending, receiving, accounting.

The parent (:mod:`scalechat.loadgen.runner`) drives a worker over a pipe, one
stage at a time::

    parent -> worker   ("connect", stage_index, StageSpec, [RoomPlan...], url, connect_rate, drain_s)
    worker -> parent   ("connected", stage_index, ok, failed)
    parent -> worker   ("go", stage_index, t0_ns)         t0 on the system-wide CLOCK_MONOTONIC
    worker -> parent   ("snap", stage_index, phase, StageResult dict, live dict)   about once a second
    worker -> parent   ("done", stage_index, StageResult dict, live dict)
    parent -> worker   ("stop",) | ("abort",) | ("exit",)

After ``go`` a stage runs on its own: warm-up from ``t0``, the measurement
window, then a drain window, then every socket is closed with 1000. ``stop``
ends sending at once and still drains and closes; ``abort`` skips the drain.
The worker ignores SIGINT (the parent decides) and aborts if the pipe closes.

Measurement guarantees (per stage, exact because a room's clients all live
in this process):

* A message's text starts with ``"<sender> <msgno> <scheduled_ns> "``: the
  sender's index in its room, its per-sender number and its *scheduled* send
  time. Latency is measured from that time, so a stalled server or a stalled
  generator shows in the numbers (no coordinated omission).
* Only messages scheduled inside the measurement window count. ``sent``
  counts frames written; ``expected`` adds the room's joined members at the
  moment of each send (the sender included: the echo is its ack);
  ``received``, ``late``, ``duplicates`` and ``out_of_order`` are counted by
  each receiving client (:mod:`scalechat.loadgen.accounting`).
* A client's sends are stamped with their timetable slot and written even
  when late (a catch-up burst after a stall), never skipped: open loop.
* With ``events`` on, every measured send and every receipt counted as
  received goes to this worker's event log (:mod:`scalechat.eventlog`), ids
  being run-wide client numbers (``RoomPlan.first_client`` + index).
* A worker whose sends fall more than 100 ms behind their schedule during the
  measurement window is overloaded: its stage result gets the error
  ``generator_overloaded`` (its latencies then include its own delay) and
  ``send_lag_max`` says by how much.
* The stage's :class:`~scalechat.results.Timeline` has a bin per second (more
  for stages over :data:`TIMELINE_BINS` seconds) from the start of the window:
  sends by their scheduled time, receipts and their latencies by the time they
  were accounted, the send lag by scheduled time.
"""

from __future__ import annotations

import asyncio
import errno
import heapq
import math
import random
import resource
import signal
import sys
import time
from collections import Counter
from multiprocessing.connection import Connection
from typing import Any

import uvloop

from scalechat.eventlog import EventLogError, EventLogWriter
from scalechat.loadgen.accounting import Client, ReceiptTally, Room, Tally
from scalechat.loadgen.plan import RoomPlan, Timetable, max_size, size_sampler
from scalechat.loadgen.wsclient import HandshakeError, WSClientError, connect
from scalechat.loadtest.spec import StageSpec
from scalechat.results import StageResult, Timeline

try:
    from scalechat.loadgen._timer import Timer
except ImportError:  # built without a C compiler
    Timer = None

SNAPSHOT_SECONDS = 1.0
CONNECT_TIMEOUT = 10.0
CLOSE_TIMEOUT = 2.0
NEVER = 1 << 62
LAG_LIMIT_NS = 100_000_000  # a send this late marks the worker overloaded for the stage
TIMELINE_BINS = 120  # a stage's timeline has at most about this many bins inside its window
monotonic_ns = time.monotonic_ns


def room_url(template: str, room: str, name: str) -> str:
    url = template.replace("{room}", room)
    return f"{url}{'&' if '?' in url else '?'}name={name}"


def connect_error_kind(exc: BaseException) -> str:
    """``connect_<kind>`` for the errors Counter: refused, timeout, http_503, ..."""
    if isinstance(exc, HandshakeError):
        return f"connect_http_{exc.status}"
    if isinstance(exc, TimeoutError):
        return "connect_timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "connect_refused"
    if isinstance(exc, ConnectionResetError):
        return "connect_reset"
    if isinstance(exc, OSError) and exc.errno in errno.errorcode:
        return f"connect_{errno.errorcode[exc.errno].lower()}"
    if isinstance(exc, WSClientError):
        return "connect_protocol"
    return f"connect_{type(exc).__name__.lower()}"

class StageRun:
    """One stage in this worker: connect, then (after go) send/receive, drain, close."""

    def __init__(self, worker: Worker, index: int, stage: StageSpec, rooms: list[RoomPlan], url: str,
                 connect_rate: float, drain_seconds: float) -> None:
        self.worker, self.index, self.stage, self.url = worker, index, stage, url
        self.connect_rate, self.drain_ns = connect_rate, int(drain_seconds * 1e9)
        self.result = StageResult(index, stage.name)
        self.record = self.result.delivery.record
        self.record_echo = self.result.echo.record
        self.events = worker.events
        # The C receive path, unless every receipt must go to the event log.
        self.tally = ReceiptTally(self) if Tally is not None and self.events is None else None
        self.errors: Counter = self.result.errors
        self.sent = self.expected = self.received = 0
        self.duplicates = self.out_of_order = self.late = 0
        self.live_sent = self.live_received = 0
        self.lag_ns = 0  # largest send lag in the measurement window so far
        self._reported_lag_ns = 0
        self.measure_start_ns = self.measure_end_ns = self.deadline_ns = NEVER
        self.t0_ns = 0
        self.phase = "connecting"
        self.stopping = asyncio.Event()
        self.aborting = False
        self.clients: list[Client] = []
        for plan in rooms:
            rng = random.Random(plan.seed)
            room = Room(plan, size_sampler(stage.size, rng))
            self.clients += [Client(i, room, self, Timetable(stage.rate, stage.arrival, rng))
                             for i in range(plan.clients)]
        self.pad = "x" * max_size(stage.size)
        bin_seconds = max(1.0, math.ceil(stage.duration_seconds / TIMELINE_BINS))
        self.bin_ns = int(bin_seconds * 1e9)
        self.timeline = self.result.timeline = Timeline(bin_seconds)
        self.timeline.grow(math.ceil(stage.duration_seconds / bin_seconds))
        self.bins_sent = self.timeline.sent  # _send_due counts into it directly
        self._counts = self.result.delivery.counts  # the delivery histogram when the last bin closed

    def set_window(self, start_ns: int, end_ns: int, deadline_ns: int) -> None:
        """Sends scheduled in [start, end) are measured; receipts after ``deadline`` are late."""
        self.measure_start_ns, self.measure_end_ns, self.deadline_ns = start_ns, end_ns, deadline_ns
        if self.tally is not None:
            self.tally.set_window(start_ns, end_ns, deadline_ns)

    # ---- phases

    async def connect(self) -> None:
        """Open every client at the paced rate; each counts once it got its history frame."""
        interval_ns = int(1e9 / self.connect_rate) if self.connect_rate > 0 else 0
        start = monotonic_ns()
        tasks = []
        for k, client in enumerate(self.clients):
            delay = (start + k * interval_ns - monotonic_ns()) / 1e9
            if delay > 0:
                try:
                    await asyncio.wait_for(self.stopping.wait(), delay)
                except TimeoutError:
                    pass
            if self.stopping.is_set():
                break
            tasks.append(asyncio.create_task(self._open(client)))
        if tasks:
            stop = asyncio.create_task(self.stopping.wait())
            done, _ = await asyncio.wait([asyncio.gather(*tasks), stop], return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        self.result.connections = sum(c.is_member for c in self.clients)
        self.phase = "connected"

    async def _open(self, client: Client) -> None:
        room = client.room.plan
        try:
            ws = await connect(room_url(self.url, room.name, f"{room.name[-12:]}-c{client.idx}"),
                               on_messages=client.on_messages, timeout=CONNECT_TIMEOUT,
                               scan=self.tally.scanner(client).scan if self.tally is not None else None,
                               close_timeout=CLOSE_TIMEOUT)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # every failure is counted, none is fatal
            self.result.connect_errors += 1
            self.errors[connect_error_kind(exc)] += 1
            return
        client.ws = ws
        ws.closed.add_done_callback(client.on_closed)
        try:
            await asyncio.wait_for(asyncio.shield(client.joined), CONNECT_TIMEOUT)
        except TimeoutError:
            self.result.connect_errors += 1
            self.errors["connect_no_history"] += 1
            client.closing = True
            await ws.close()

    async def execute(self, t0_ns: int) -> None:
        """Warm up, measure, drain, close; returns when every socket is closed."""
        stage = self.stage
        self.t0_ns = t0_ns
        start = t0_ns + int(stage.warmup_seconds * 1e9)
        end = start + int(stage.duration_seconds * 1e9)
        self.set_window(start, end, end + self.drain_ns)
        offset = time.time() - monotonic_ns() * 1e-9  # wall clock = monotonic + offset
        self.result.started_at = self.measure_start_ns * 1e-9 + offset
        sender = asyncio.create_task(self._send_loop())
        ticker = asyncio.create_task(self._tick_timeline())
        self.phase = "warmup"
        if not await self._sleep_until(self.measure_start_ns):
            self.phase = "measuring"
            await self._sleep_until(self.measure_end_ns)
        if self.stopping.is_set():  # interrupted: nothing scheduled later will be sent
            now = monotonic_ns()
            self.set_window(self.measure_start_ns, min(self.measure_end_ns, now),
                            min(self.deadline_ns, now + self.drain_ns))
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        if self.lag_ns > LAG_LIMIT_NS:  # latencies include the generator's own delay
            self.errors["generator_overloaded"] += 1
        self.result.ended_at = self.measure_end_ns * 1e-9 + offset
        self.phase = "draining"
        while not self.aborting and monotonic_ns() < self.deadline_ns:
            if self.tally is not None:
                self.tally.flush()
            if self.received >= self.expected:
                break
            await asyncio.sleep(0.01)
        ticker.cancel()
        await asyncio.gather(ticker, return_exceptions=True)
        self._close_bin(max(0, (monotonic_ns() - self.measure_start_ns) // self.bin_ns))

    async def _tick_timeline(self) -> None:
        """Close each timeline bin at its end: the receipts accounted (and their latencies) since the last."""
        await self._sleep_until(self.measure_start_ns)
        k = 0
        while True:
            delay = (self.measure_start_ns + (k + 1) * self.bin_ns - monotonic_ns()) / 1e9
            if delay > 0:
                await asyncio.sleep(delay)
            self._close_bin(k)
            k += 1

    def _close_bin(self, k: int) -> None:
        if self.tally is not None:
            self.tally.flush()
        counts = self.result.delivery.counts
        gained = counts - self._counts
        self._counts = counts
        if k < len(self.timeline) or gained.any():  # no empty bins after the window
            self.timeline.add(int(k), buckets=gained)

    async def close_all(self) -> None:
        self.phase = "closing"
        open_clients = [c for c in self.clients if c.ws is not None and not c.ws.closed.done()]
        for c in open_clients:
            c.closing = True
        if open_clients:
            await asyncio.gather(*(c.ws.close(1000) for c in open_clients), return_exceptions=True)
        self.phase = "done"

    async def _sleep_until(self, when_ns: int) -> bool:
        """Sleep until ``when_ns``; True if stopped first."""
        delay = (when_ns - monotonic_ns()) / 1e9
        if delay > 0 and not self.stopping.is_set():
            try:
                await asyncio.wait_for(self.stopping.wait(), delay)
            except TimeoutError:
                pass
        return self.stopping.is_set()

    # ---- sending (open loop)

    async def _send_loop(self) -> None:
        """Send on every client's timetable until the heap runs dry (or the task is cancelled).

        Woken by a timerfd at each next due time (ns precision, no CPU between
        sends). Without the C timer it falls back to ``asyncio.sleep``, which
        under uvloop spins for gaps under 0.5 ms.
        """
        t0 = self.t0_ns
        heap = [(t0 + int(c.timetable.t * 1e9), n, c) for n, c in enumerate(self.clients)
                if c.ws is not None and c.is_member]
        heapq.heapify(heap)
        if not heap:
            return
        if Timer is None:
            while heap:
                self._send_due(heap)
                if heap:
                    delay = (heap[0][0] - monotonic_ns()) / 1e9
                    await asyncio.sleep(delay if delay > 0 else 0)
            return
        loop = asyncio.get_running_loop()
        finished = loop.create_future()
        timer = Timer()

        def fire() -> None:
            try:
                timer.read()
                self._send_due(heap)
                if heap:
                    timer.set(heap[0][0])  # a time already past (a catch-up burst) fires at once
                elif not finished.done():
                    finished.set_result(None)
            except Exception as exc:  # ends the loop as an exception in the old sleep loop did
                if not finished.done():
                    finished.set_exception(exc)

        loop.add_reader(timer.fileno(), fire)
        try:
            timer.set(heap[0][0])
            await finished
        finally:
            loop.remove_reader(timer.fileno())
            timer.close()

    def _send_due(self, heap: list) -> None:
        """Send every message due by now, each stamped with its scheduled time."""
        now = monotonic_ns()
        t0, start, end = self.t0_ns, self.measure_start_ns, self.measure_end_ns
        pad, events, index = self.pad, self.events, self.index
        budget = 2000  # yield to the receive path now and then during a catch-up burst
        bins_sent, bin_ns = self.bins_sent, self.bin_ns
        if heap and start <= heap[0][0] < end:
            lag = now - heap[0][0]  # how far behind its own schedule the generator is
            if lag > self.lag_ns:
                self.lag_ns = lag
            k = (heap[0][0] - start) // bin_ns
            if lag > 0 and lag * 1e-9 > self.timeline.lag[k]:
                self.timeline.lag[k] = lag * 1e-9
        while heap and heap[0][0] <= now and budget:
            due, n, client = heap[0]
            ws = client.ws
            if due >= end or not client.is_member:
                heapq.heappop(heap)
                continue
            budget -= 1
            msgno = client.msgno
            client.msgno = msgno + 1
            room = client.room
            header = f"{client.idx} {msgno} {due} "
            size = room.draw_size()
            text = header + pad[: size - len(header)] if size > len(header) else header
            try:
                ws.send_text(b'{"type":"message","text":"' + text.encode() + b'"}')
            except WSClientError:
                self.errors["send_closed"] += 1
                heapq.heappop(heap)
                continue
            self.live_sent += 1
            if due >= start:
                self.sent += 1
                bins_sent[(due - start) // bin_ns] += 1
                self.expected += room.members
                if events is not None:
                    events.send(index, room.plan.first_client + client.idx, msgno, due, monotonic_ns(), len(text))
            heapq.heapreplace(heap, (t0 + int(client.timetable.advance() * 1e9), n, client))

    # ---- reporting

    def snapshot(self) -> StageResult:
        if self.tally is not None:
            self.tally.flush()
        r = self.result
        r.sent, r.expected, r.received = self.sent, self.expected, self.received
        r.duplicates, r.out_of_order, r.late = self.duplicates, self.out_of_order, self.late
        r.send_lag_max = self.lag_ns / 1e9
        return r

    def live(self) -> dict[str, Any]:
        if self.tally is not None:
            self.tally.flush()
        return {"sent": self.live_sent, "received": self.live_received, "lag": self.lag_ns / 1e9,
                "connections": sum(c.is_member for c in self.clients), "planned": len(self.clients),
                "t": monotonic_ns() / 1e9}


class Worker:
    def __init__(self, conn: Connection, index: int, events_path: str | None) -> None:
        self.conn = conn
        self.index = index
        self.events = None
        self.events_path = events_path
        self.run: StageRun | None = None
        self.task: asyncio.Task | None = None
        self.commands: asyncio.Queue = asyncio.Queue()

    def send(self, message: tuple) -> None:
        try:
            self.conn.send(message)
        except (BrokenPipeError, OSError):
            pass  # the parent is gone; the pipe's EOF aborts us

    def _readable(self) -> None:
        try:
            while self.conn.poll():
                self.commands.put_nowait(self.conn.recv())
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(self.conn.fileno())
            self.commands.put_nowait(("abort",))
            self.commands.put_nowait(("exit",))

    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        if self.events_path:
            self.events = EventLogWriter(self.events_path)
        loop.add_reader(self.conn.fileno(), self._readable)
        ticker = asyncio.create_task(self._snapshots())
        try:
            while True:
                command = await self.commands.get()
                kind = command[0]
                if kind == "connect":
                    self.run = StageRun(self, *command[1:])
                    self.task = asyncio.create_task(self._connect(self.run))
                elif kind == "go":
                    self.task = asyncio.create_task(self._execute(self.run, command[2]))
                elif kind in ("stop", "abort") and self.run is not None:
                    self.run.aborting = self.run.aborting or kind == "abort"
                    self.run.stopping.set()
                    if self.run.phase == "connected":  # told to stop between connect and go
                        self.task = asyncio.create_task(self._finish(self.run))
                elif kind == "exit":
                    if self.task is not None:
                        await asyncio.gather(self.task, return_exceptions=True)
                    break
        finally:
            ticker.cancel()
            if self.events is not None:
                try:
                    self.events.close()
                except EventLogError as exc:  # the rest of the log is written; say what is not
                    print(f"scalechat load: worker {self.index}: {exc}", file=sys.stderr, flush=True)

    async def _connect(self, run: StageRun) -> None:
        await run.connect()
        if run.stopping.is_set():
            await self._finish(run)
        else:
            self.send(("connected", run.index, run.result.connections, run.result.connect_errors))

    async def _execute(self, run: StageRun, t0_ns: int) -> None:
        await run.execute(t0_ns)
        await self._finish(run)

    async def _finish(self, run: StageRun) -> None:
        await run.close_all()
        self.send(("done", run.index, run.snapshot().to_dict(), run.live()))
        if self.run is run:
            self.run = None

    async def _snapshots(self) -> None:
        while True:
            await asyncio.sleep(SNAPSHOT_SECONDS)
            run = self.run
            if run is not None and run.phase != "done":
                self.send(("snap", run.index, run.phase, run.snapshot().to_dict(), run.live()))


def _raise_nofile_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def worker_main(conn: Connection, index: int, events_path: str | None) -> None:
    """Process entry point (multiprocessing target)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl+C and tells us
    _raise_nofile_limit()
    uvloop.run(Worker(conn, index, events_path).main())
    conn.close()
