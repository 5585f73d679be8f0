"""Human output: the live progress line and the end-of-run summary table.

Formatting is pure (``progress_line``, ``summary_table`` return strings);
:class:`Progress` only decides when to print: in place (``\\r``) every half
second on a TTY, one line every few seconds otherwise (logs, CI).
"""

from __future__ import annotations

import math
import time
from typing import Any, TextIO

from scalechat.histogram import LogHistogram
from scalechat.results import StageResult


def fmt_seconds(value: float) -> str:
    if value is None or math.isnan(value):
        return "-"
    if value < 1e-3:
        return f"{value * 1e6:.0f}us"
    if value < 1:
        return f"{value * 1e3:.1f}ms"
    return f"{value:.2f}s"


def fmt_rate(value: float) -> str:
    return f"{value / 1000:.1f}k" if value >= 10_000 else f"{value:.0f}"


def progress_line(label: str, phase: str, connections: int, planned: int, sent_rate: float,
                  received_rate: float, delivery: LogHistogram, errors: int, elapsed: float,
                  lag: float = 0.0) -> str:
    p50, p99 = (delivery.percentiles([50, 99]) if delivery.count else (math.nan, math.nan))
    warning = f"  GENERATOR BEHIND BY {fmt_seconds(lag)}" if lag > 0.1 else ""
    return (f"[{label}] {phase:<10} conns {connections}/{planned}  sent/s {fmt_rate(sent_rate)}  "
            f"recv/s {fmt_rate(received_rate)}  p50 {fmt_seconds(p50)}  p99 {fmt_seconds(p99)}  "
            f"errors {errors}  {elapsed:.0f}s{warning}")


class Progress:
    """Aggregates worker snapshots of the current stage and prints the progress line."""

    def __init__(self, stream: TextIO, tty: bool | None = None, interval: float | None = None) -> None:
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.interval = interval if interval is not None else (0.5 if self.tty else 5.0)
        self._last_print = 0.0
        self._last_totals: tuple[float, int, int] | None = None
        self._rates = (0.0, 0.0)
        self._width = 0
        self._started = time.monotonic()

    def stage_started(self) -> None:
        self._started = time.monotonic()
        self._last_totals = None
        self._rates = (0.0, 0.0)

    def update(self, label: str, phase: str, snapshots: list[tuple[dict[str, Any], dict[str, int]]]) -> None:
        now = time.monotonic()
        sent = sum(live["sent"] for _, live in snapshots)
        received = sum(live["received"] for _, live in snapshots)
        if self._last_totals is not None and now - self._last_totals[0] >= 1.0:
            t, s, r = self._last_totals
            self._rates = ((sent - s) / (now - t), (received - r) / (now - t))
            self._last_totals = (now, sent, received)
        elif self._last_totals is None:
            self._last_totals = (now, sent, received)
        if now - self._last_print < self.interval:
            return
        self._last_print = now
        results = [StageResult.from_dict(result) for result, _ in snapshots]
        delivery = LogHistogram.merged([r.delivery for r in results], LogHistogram().config)
        errors = sum(sum(r.errors.values()) for r in results)
        line = progress_line(label, phase, sum(live["connections"] for _, live in snapshots),
                             sum(live["planned"] for _, live in snapshots), *self._rates, delivery,
                             errors, now - self._started, max(live.get("lag", 0.0) for _, live in snapshots))
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


def summary_table(stages: list[StageResult]) -> str:
    """One row per stage: counts, ratio, latency percentiles of deliveries, errors."""
    head = ("stage", "conns", "sent", "expected", "received", "ratio", "p50", "p99", "max",
            "late", "dup", "ooo", "errors")
    rows = [head]
    for s in stages:
        d = s.delivery
        p50, p99 = d.percentiles([50, 99]) if d.count else (math.nan, math.nan)
        errors = ", ".join(f"{k}={v}" for k, v in sorted(s.errors.items())) or "0"
        rows.append((s.name, str(s.connections), str(s.sent), str(s.expected), str(s.received),
                     f"{s.delivery_ratio:.4f}", fmt_seconds(p50), fmt_seconds(p99), fmt_seconds(d.max),
                     str(s.late), str(s.duplicates), str(s.out_of_order), errors))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) if i in (0, len(head) - 1) else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths))).rstrip() for r in rows)
