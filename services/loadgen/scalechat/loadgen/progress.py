"""Human output while a run goes on: the live progress line and each stage's final line.

Formatting is pure (:func:`progress_line` returns a string); :class:`ProgressDisplay`
only decides when to print: in place (``\\r``) every half second on a TTY, one
line every few seconds otherwise (logs, CI). Every stage ends with a line of
its own, from the stage's merged result, so the last word on a stage is never
a "measuring" snapshot.

Rates are steady because each worker stamps its counters with its own clock
(``live["t"]``): a worker's rate is the change of its counters over at least
:data:`RATE_WINDOW` seconds of *its* time, and the line shows their sum. (Summing
snapshots that reached the parent at different moments made ``sent/s`` swing
by a third around the offered rate.)
"""

from __future__ import annotations

import math
import time
from collections import deque
from typing import Any, TextIO

from scalechat.histogram import LogHistogram
from scalechat.loadgen.summary import fmt_rate, fmt_seconds
from scalechat.results import StageResult

RATE_WINDOW = 2.0  # seconds of a worker's own clock behind each rate


def progress_line(label: str, phase: str, connections: int, planned: int, sent_rate: float | None,
                  received_rate: float | None, delivery: LogHistogram, errors: int, elapsed: float,
                  lag: float = 0.0) -> str:
    p50, p99 = (delivery.percentiles([50, 99]) if delivery.count else (math.nan, math.nan))
    warning = f"  GENERATOR BEHIND BY {fmt_seconds(lag)}" if lag > 0.1 else ""
    return (f"[{label}] {phase:<10} conns {connections}/{planned}  sent/s {fmt_rate(sent_rate)}  "
            f"recv/s {fmt_rate(received_rate)}  p50 {fmt_seconds(p50)}  p99 {fmt_seconds(p99)}  "
            f"errors {errors}  {elapsed:.0f}s{warning}")


class WorkerRates:
    """Per-worker (t, sent, received) history; the summed rate over each worker's own window."""

    def __init__(self) -> None:
        self.history: dict[int, deque[tuple[float, int, int]]] = {}

    def add(self, worker: int, live: dict[str, Any]) -> None:
        if "t" not in live:
            return
        points = self.history.setdefault(worker, deque())
        if points and points[-1][0] == live["t"]:
            return
        points.append((live["t"], live["sent"], live["received"]))
        while len(points) > 2 and points[-1][0] - points[1][0] >= RATE_WINDOW:
            points.popleft()

    def rates(self) -> tuple[float | None, float | None]:
        sent = received = 0.0
        known = False
        for points in self.history.values():
            (t0, s0, r0), (t1, s1, r1) = points[0], points[-1]
            if t1 - t0 > 0.5:
                sent += (s1 - s0) / (t1 - t0)
                received += (r1 - r0) / (t1 - t0)
                known = True
        return (sent, received) if known else (None, None)


class ProgressDisplay:
    """Aggregates worker snapshots of the current stage and prints the progress line."""

    def __init__(self, stream: TextIO, tty: bool | None = None, interval: float | None = None) -> None:
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.interval = interval if interval is not None else (0.5 if self.tty else 5.0)
        self._last_print = 0.0
        self._rates = WorkerRates()
        self._width = 0
        self._started = time.monotonic()

    def stage_started(self) -> None:
        self._started = time.monotonic()
        self._rates = WorkerRates()
        self._last_print = 0.0

    def update(self, label: str, phase: str, snapshots: list[tuple[int, dict[str, Any], dict[str, int]]]) -> None:
        """``snapshots``: (worker index, StageResult dict, live counters) of each live worker."""
        for worker, _, live in snapshots:
            self._rates.add(worker, live)
        now = time.monotonic()
        if now - self._last_print < self.interval:
            return
        self._last_print = now
        results = [StageResult.from_dict(result) for _, result, _ in snapshots]
        delivery = LogHistogram.merged([r.delivery for r in results], LogHistogram().config)
        errors = sum(sum(r.errors.values()) for r in results)
        line = progress_line(label, phase, sum(live["connections"] for _, _, live in snapshots),
                             sum(live["planned"] for _, _, live in snapshots), *self._rates.rates(), delivery,
                             errors, now - self._started, max(live.get("lag", 0.0) for _, _, live in snapshots))
        self._show(line)

    def stage_finished(self, label: str, result: StageResult, planned: int) -> None:
        """The stage's last line, from its merged result: rates over its measurement window."""
        window = result.ended_at - result.started_at
        rates = (result.sent / window, result.received / window) if window > 0 else (None, None)
        line = progress_line(label, "done", result.connections, planned, *rates, result.delivery,
                             sum(result.errors.values()), time.monotonic() - self._started, result.send_lag_max)
        self._show(line)
        self.end_line()

    def _show(self, line: str) -> None:
        if self.tty:
            self.stream.write("\r" + line.ljust(self._width))
            self._width = len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        """A line of its own (ends the in-place line first)."""
        self.end_line()
        self.stream.write(text + "\n")
        self.stream.flush()

    def end_line(self) -> None:
        if self.tty and self._width:
            self.stream.write("\n")
            self._width = 0
