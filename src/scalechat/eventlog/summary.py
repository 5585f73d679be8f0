"""read_event_log: stream a log into per-stage aggregates with a few threads; memory does not grow with the file."""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scalechat.eventlog.format import (DEFAULT_CHUNK_ROWS, DEFAULT_DUPLICATE_WINDOW, HEADER, ROW_BYTES, ChunkParser,
                                       EventChunk)
from scalechat.eventlog.reader import open_log, read_rows
from scalechat.histogram import HistogramConfig, LogHistogram


@dataclass(frozen=True, eq=False)
class SenderEcho:
    """Echo latency per sender (its receipts of its own messages), sorted by sender."""

    sender: np.ndarray  # uint64 client ids
    count: np.ndarray  # int64
    mean: np.ndarray  # seconds
    max: np.ndarray  # seconds


@dataclass(frozen=True, eq=False)
class StageEvents:
    """What one stage's rows of an event log add up to (latencies in seconds)."""

    stage: int
    sends: int
    receipts: int
    echo_receipts: int
    bytes_sent: int
    duplicates: int  # a lower bound: see read_event_log
    first_ns: int  # earliest scheduled_ns
    last_ns: int  # latest event_ns
    delivery: LogHistogram  # every receipt: received - scheduled
    echo: LogHistogram  # receipts where receiver == sender
    send_lag: LogHistogram  # sends: sent - scheduled (the generator behind its schedule)
    senders: SenderEcho


@dataclass(frozen=True, eq=False)
class EventLogSummary:
    path: Path
    rows: int
    stages: dict[int, StageEvents]
    duplicate_window: int
    truncated_bytes: int = 0  # an incomplete last line skipped with allow_truncated


def read_event_log(path: str | os.PathLike[str], *, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                   duplicate_window: int = DEFAULT_DUPLICATE_WINDOW,
                   config: HistogramConfig | None = None, allow_truncated: bool = False,
                   workers: int | None = None) -> EventLogSummary:
    """Stream an event log into per-stage aggregates; memory does not grow with the file.

    Per stage: sends, receipts, echo receipts, bytes sent, first and last time,
    LogHistograms of delivery latency (every receipt), echo latency (receiver ==
    sender) and send lag (sent - scheduled), and echo latency per sender. The
    histograms equal LogHistograms that recorded every value (same buckets).

    ``duplicates`` counts repeated (stage, sender, msgno, receiver) receipts
    exactly when the copies are at most ``duplicate_window`` rows apart (16
    bytes of memory per window row); copies farther apart may be missed, so it
    is a lower bound. Counting every duplicate needs memory that grows with the
    file; the load generator counts them online into its results
    (``StageResult.duplicates``). ``duplicate_window=0`` skips the count.

    Chunks are parsed by ``workers`` threads (default: the CPUs, at most 4; numpy
    releases the GIL), each with its own buffers and aggregates, merged at the end.
    """
    path = Path(path)
    config = config or HistogramConfig()
    workers = max(1, workers or min(4, os.cpu_count() or 1))
    duplicates = _Duplicates(duplicate_window) if duplicate_window > 0 else None
    f, rows = open_log(path, chunk_rows, allow_truncated)
    slots = [_Slot(min(chunk_rows, max(rows, 1)), config, duplicates is not None) for _ in range(workers)]
    pending: deque[Future[Any]] = deque()
    try:
        with f, ThreadPoolExecutor(workers, thread_name_prefix="eventlog-read") as pool:
            for k, done in enumerate(range(0, rows, chunk_rows)):
                if len(pending) == workers:  # the oldest chunk used this slot: wait for it, in order
                    _collect(pending.popleft(), duplicates)
                slot, n = slots[k % workers], min(chunk_rows, rows - done)
                read_rows(f, slot.parser.raw_view(n), path, done)
                pending.append(pool.submit(slot.add, n, path, done + 2))
            while pending:
                _collect(pending.popleft(), duplicates)
        repeated = duplicates.finish() if duplicates is not None else {}
    finally:
        for future in pending:
            future.cancel()
        if duplicates is not None:
            duplicates.close()
    stages: dict[int, _Stage] = {}
    for slot in slots:
        for index, stage in slot.stages.items():
            if index in stages:
                stages[index].merge(stage)
            else:
                stages[index] = stage
    return EventLogSummary(
        path, rows, {i: stages[i].result(repeated.get(i, 0)) for i in sorted(stages)},
        duplicate_window, truncated_bytes=os.stat(path).st_size - len(HEADER) - rows * ROW_BYTES)


def _collect(future: Future[Any], duplicates: _Duplicates | None) -> None:
    keys = future.result()
    if duplicates is not None:
        duplicates.add(*keys)


class _Slot:
    """One reading thread's buffers and its share of the aggregates."""

    def __init__(self, rows: int, config: HistogramConfig, keys: bool) -> None:
        self.parser = ChunkParser(rows)
        self.config = config
        self.keys = keys
        self.stages: dict[int, _Stage] = {}

    def add(self, n: int, path: Path, first_line: int) -> tuple[np.ndarray, np.ndarray, int] | None:
        chunk = self.parser.parse(n, path, first_line)
        low, high = int(chunk.stage.min()), int(chunk.stage.max())
        present = [low] if low == high else \
            (np.flatnonzero(np.bincount((chunk.stage - np.uint64(low)).astype(np.intp))) + low).tolist()
        for stage in present:
            if stage not in self.stages:
                self.stages[stage] = _Stage(stage, self.config)
            self.stages[stage].add(chunk, slice(None) if low == high else chunk.stage == np.uint64(stage))
        if not self.keys:
            return None
        r = chunk.receipt
        stages = chunk.stage[r].astype(np.uint32)  # a copy: the buffers are reused
        high_part = chunk.sender[r] * np.uint64(10**7) + chunk.msgno[r]
        low_part = chunk.receiver_or_size[r] * np.uint64(10**5) + chunk.stage[r]
        return high_part ^ (low_part * np.uint64(0x9E3779B97F4A7C15)), stages, n


class _Histogram:
    """Bins like LogHistogram (its config's bucket_index) and combines its moments
    the same way, without LogHistogram.record_many's BLAS dot product: OpenBLAS's
    thread pool made that 2-4x slower on a busy 2-core machine."""

    def __init__(self, config: HistogramConfig) -> None:
        self.config = config
        self.counts = np.zeros(config.n_buckets, dtype=np.int64)
        self.count = self.negative = 0
        self.total = self.m2 = 0.0
        self.low, self.high = np.inf, -np.inf

    def add(self, values: np.ndarray) -> None:
        n = values.size
        if not n:
            return
        self.counts += np.bincount(self.config.bucket_index(values), minlength=self.counts.size)
        total = float(values.sum())
        deviations = values - total / n
        m2 = float(np.multiply(deviations, deviations, out=deviations).sum())
        self._combine(n, int(np.count_nonzero(values < 0)), total, m2, float(values.min()),
                      float(values.max()))

    def merge(self, other: _Histogram) -> None:
        self.counts += other.counts
        if other.count:
            self._combine(other.count, other.negative, other.total, other.m2, other.low, other.high)

    def _combine(self, n: int, negative: int, total: float, m2: float, low: float, high: float) -> None:
        if self.count:  # Chan et al.'s pairwise update, as LogHistogram.merge
            delta = total / n - self.total / self.count
            m2 += self.m2 + delta * delta * (self.count * n / (self.count + n))
        self.count += n
        self.negative += negative
        self.total += total
        self.m2 = m2
        self.low, self.high = min(self.low, low), max(self.high, high)

    def histogram(self) -> LogHistogram:
        nonzero = np.flatnonzero(self.counts)
        return LogHistogram.from_dict({
            "version": 1, "config": self.config.to_dict(), "count": self.count,
            "negative": self.negative, "sum": self.total, "m2": self.m2,
            "min": self.low if self.count else None, "max": self.high if self.count else None,
            "bucket_index": nonzero.tolist(), "bucket_count": self.counts[nonzero].tolist()})


def _by_sender(ids: np.ndarray, count: np.ndarray, total: np.ndarray, high: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    unique, inverse = np.unique(ids, return_inverse=True)
    maxima = np.full(unique.size, -np.inf)
    np.maximum.at(maxima, inverse, high)
    return (unique, np.bincount(inverse, weights=count, minlength=unique.size).astype(np.int64),
            np.bincount(inverse, weights=total, minlength=unique.size), maxima)


class _Stage:
    """One stage's running aggregates while a log streams by."""

    def __init__(self, stage: int, config: HistogramConfig) -> None:
        self.stage = stage
        self.sends = self.receipts = self.echo_receipts = self.bytes_sent = 0
        self.first_ns, self.last_ns = 2**64, -1
        self.delivery, self.echo, self.send_lag = (_Histogram(config) for _ in range(3))
        self._echo_ids: list[np.ndarray] = []
        self._echo_seconds: list[np.ndarray] = []
        self._waiting = 0
        self._senders = (np.empty(0, np.uint64), np.empty(0, np.int64), np.empty(0), np.empty(0))

    def add(self, chunk: EventChunk, rows: np.ndarray | slice) -> None:
        receipt = chunk.receipt[rows]
        seconds = chunk.elapsed_ns[rows].astype(np.float64)
        seconds *= 1e-9
        self.first_ns = min(self.first_ns, int(chunk.scheduled_ns[rows].min()))
        self.last_ns = max(self.last_ns, int(chunk.event_ns[rows].max()))
        latency = seconds[receipt]
        self.receipts += latency.size
        self.delivery.add(latency)
        sends = ~receipt
        self.sends += receipt.size - latency.size
        self.bytes_sent += int(chunk.receiver_or_size[rows][sends].sum())
        self.send_lag.add(seconds[sends])
        sender = chunk.sender[rows]
        echo = receipt & (sender == chunk.receiver_or_size[rows])
        echo_latency = seconds[echo]
        self.echo_receipts += echo_latency.size
        self.echo.add(echo_latency)
        if echo_latency.size:
            self._echo_ids.append(sender[echo])
            self._echo_seconds.append(echo_latency)
            self._waiting += echo_latency.size
            if self._waiting > 1 << 18:
                self._fold_senders()

    def merge(self, other: _Stage) -> None:
        """Add the aggregates of another thread's share of this stage."""
        self.sends += other.sends
        self.receipts += other.receipts
        self.echo_receipts += other.echo_receipts
        self.bytes_sent += other.bytes_sent
        self.first_ns, self.last_ns = min(self.first_ns, other.first_ns), max(self.last_ns, other.last_ns)
        self.delivery.merge(other.delivery)
        self.echo.merge(other.echo)
        self.send_lag.merge(other.send_lag)
        self._fold_senders()
        other._fold_senders()
        self._senders = _by_sender(*(np.concatenate(pair) for pair in zip(self._senders, other._senders)))

    def _fold_senders(self) -> None:
        if self._echo_ids:
            ids, count, total, high = self._senders
            seconds = np.concatenate(self._echo_seconds)
            self._senders = _by_sender(
                np.concatenate([ids, *self._echo_ids]),
                np.concatenate([count, np.ones(seconds.size, np.int64)]),
                np.concatenate([total, seconds]), np.concatenate([high, seconds]))
            self._echo_ids.clear()
            self._echo_seconds.clear()
            self._waiting = 0

    def result(self, duplicates: int) -> StageEvents:
        self._fold_senders()
        ids, count, total, high = self._senders
        return StageEvents(self.stage, self.sends, self.receipts, self.echo_receipts, self.bytes_sent,
                           duplicates, self.first_ns, self.last_ns, self.delivery.histogram(),
                           self.echo.histogram(), self.send_lag.histogram(),
                           SenderEcho(ids, count, total / np.maximum(count, 1), high))


class _Duplicates:
    """Counts receipts whose (stage, sender, msgno, receiver) was seen before.

    Keys are gathered in blocks of at least ``window`` rows; each block is sorted
    and checked against itself and the block before, so every copy arriving at
    most ``window`` rows after an earlier one is counted; farther ones may not
    be. A key is a 64-bit mix of the four fields: a false duplicate needs a
    collision (odds about window**2 / 2**64). Blocks are checked on a second
    thread (numpy's sort releases the GIL) while the next block is parsed.
    """

    def __init__(self, window: int) -> None:
        self.window = window
        self._keys: list[np.ndarray] = []
        self._stages: list[np.ndarray] = []
        self._rows = 0
        self._previous = np.empty(0, np.uint64)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="eventlog-duplicates")
        self._pending: Future[Any] | None = None
        self.by_stage: dict[int, int] = {}

    def add(self, keys: np.ndarray, stages: np.ndarray, rows: int) -> None:
        """The receipt keys and stages of the next ``rows`` rows."""
        self._keys.append(keys)
        self._stages.append(stages)
        self._rows += rows
        if self._rows >= self.window:
            self._submit()

    def finish(self) -> dict[int, int]:
        """Wait for the last block; the count of repeated receipts per stage."""
        self._submit()
        if self._pending is not None:
            self._pending.result()
        return self.by_stage

    def close(self) -> None:
        self._pool.shutdown(cancel_futures=True)

    def _submit(self) -> None:
        if self._pending is not None:
            self._pending.result()  # one block in flight: memory stays bounded
            self._pending = None
        if self._keys:
            keys, stages = np.concatenate(self._keys), np.concatenate(self._stages)
            self._keys.clear()
            self._stages.clear()
            self._rows = 0
            self._pending = self._pool.submit(self._check, keys, stages)

    def _check(self, keys: np.ndarray, stages: np.ndarray) -> None:
        ordered = np.sort(keys)
        first = np.ones(ordered.size, dtype=bool)
        np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
        unique = ordered[first]
        previous = self._previous
        seen = np.zeros(unique.size, dtype=bool)
        if previous.size:
            position = np.minimum(np.searchsorted(previous, unique), previous.size - 1)
            seen = previous[position] == unique
        if unique.size < ordered.size or seen.any():
            # Rare: attribute each repeated key's extra copies to its stage.
            values, counts = np.unique(np.concatenate([ordered[~first], unique[seen]]), return_counts=True)
            match = values[np.minimum(np.searchsorted(values, keys), values.size - 1)] == keys
            stage_of = dict(zip(keys[match].tolist(), stages[match].tolist()))
            for key, count in zip(values.tolist(), counts.tolist()):
                self.by_stage[stage_of[key]] = self.by_stage.get(stage_of[key], 0) + count
        self._previous = unique
