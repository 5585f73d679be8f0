"""The raw event log: one fixed-width CSV row per send and per receipt.

Format (``events-shard-<i>-of-<n>.csv`` beside the results, see :mod:`scalechat.results`)::

    kind,stage,sender,msgno,receiver_or_size,scheduled_ns,event_ns
    S,00001,0000012,0000345,0000150,1732700000123456789,1732700000123470000
    R,00001,0000012,0000345,0000007,1732700000123456789,1732700000125000000

``kind`` is ``S`` (a send: ``receiver_or_size`` is the payload size in bytes,
``event_ns`` the time it was written) or ``R`` (a receipt: ``receiver_or_size``
is the receiving client, ``event_ns`` the time it arrived). Every row carries
the message's *scheduled* send time, so a receipt's latency is
``event_ns - scheduled_ns`` without a join, and a send's ``event_ns -
scheduled_ns`` is how far the generator lagged behind its schedule.

Every row is exactly :data:`ROW_BYTES` (72) bytes: zero-padded digits, commas at
fixed places, ``\\n`` last; field widths are in :data:`COLUMNS`. It stays a
plain CSV (any tool reads it), but a reader can also view a chunk as a
``(rows, 9)`` array of little-endian 8-byte words and turn digits into integers
with a few vectorised operations per word, no per-row Python: each word holds
the digits of one field (word 6 holds the tail of ``scheduled_ns`` and the head
of ``event_ns``), so parsing is masking, shifting and an 8-digits-at-once
multiply (:func:`_parse8`). Limits: stage < 10**5; sender, receiver, msgno and
size < 10**7; times in ``[0, 2**63)`` ns.

:class:`EventLogWriter` keeps the load generator's hot path to one tuple
appended to a list; a thread encodes batches with numpy and writes whole rows.
:func:`read_event_log` streams a file in chunks, parsed by a few threads (numpy
releases the GIL), into per-stage aggregates; its memory does not grow with the
file. :func:`iter_chunks` gives the parsed columns chunk by chunk for other
uses. All raise :class:`EventLogError` naming the file (and line).
``bench/eventlog.py`` measures them against ``wc -l`` and pandas.
"""

from __future__ import annotations

import io
import itertools
import os
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scalechat.histogram import HistogramConfig, LogHistogram

COLUMNS = (("kind", 1), ("stage", 5), ("sender", 7), ("msgno", 7),
           ("receiver_or_size", 7), ("scheduled_ns", 19), ("event_ns", 19))
HEADER = (",".join(name for name, _ in COLUMNS) + "\n").encode("ascii")
ROW_BYTES = sum(width for _, width in COLUMNS) + len(COLUMNS)  # commas and the newline
WORDS = ROW_BYTES // 8
SEND, RECEIPT = ord("S"), ord("R")
MAX_ID = 10**7 - 1  # sender, receiver, msgno and size
MAX_STAGE = 10**5 - 1
MAX_NS = 2**63 - 1
DEFAULT_CHUNK_ROWS = 1 << 16  # 4.5 MiB per chunk: its working set stays in the CPU caches
DEFAULT_DUPLICATE_WINDOW = 1 << 20

assert ROW_BYTES == 72 and len(HEADER) == 63


class EventLogError(ValueError):
    """A malformed event log, or events the writer could not store; names the file."""


# -- the word layout ----------------------------------------------------------
# Byte b of a row is byte b % 8 of word b // 8 (little-endian). Each word holds
# the digits of one field, but for word 6: the last 3 digits of scheduled_ns
# (bytes 0-2) and the first 4 of event_ns (bytes 4-7).
_U = np.uint64
_TILE = 64  # rows per operand of the per-word masks: long inner loops, few numpy calls


def _template() -> tuple[bytes, bytes, bytes]:
    """Per byte of a row: the XOR that maps it to a small number (digits to 0..9,
    separators and 'R' to 0, 'S' to 1), the largest allowed result, and which bytes are digits."""
    xor, limit, digits = bytearray(ROW_BYTES), bytearray(ROW_BYTES), bytearray(ROW_BYTES)
    pos = 0
    for index, (name, width) in enumerate(COLUMNS):
        for b in range(pos, pos + width):
            if name == "kind":
                xor[b], limit[b] = RECEIPT, RECEIPT ^ SEND
            else:
                xor[b], limit[b], digits[b] = 0x30, 9, 0xFF
        end = pos + width
        xor[end] = ord("\n") if index == len(COLUMNS) - 1 else ord(",")
        pos = end + 1
    return bytes(xor), bytes(limit), bytes(digits)


def _tiled(row: bytes) -> np.ndarray:
    return np.tile(np.frombuffer(row, dtype="<u8").astype(_U), _TILE)


_XOR, _LIMIT, _DIGIT_BYTES = _template()
_PATTERN = _tiled(_XOR)
_NOT_KIND = _U(0xFFFFFFFFFFFFFF00)
# A byte x <= limit iff x + (0x7F - limit) leaves its top bit clear (and x's own is clear).
_ADD = _tiled(bytes(0x7F - v for v in _LIMIT))
_TOP_BITS = _U(0x8080808080808080)
# Shift each word's digits up so the field's last digit is the top byte, as _parse8 wants.
_SHIFT = np.tile(np.array([8, 8, 8, 8, 0, 0, 40, 0, 8], dtype=_U), _TILE)
_EVENT_HEAD = _U(0xFFFFFFFF00000000)  # word 6, bytes 4-7
_SCHED_TAIL = _U(0x0000000000FFFFFF)  # word 6, bytes 0-2
_PAD_ROW = b"R,00000,0000000,0000000,0000000,0000000000000000000,0000000000000000000\n"
assert ROW_BYTES == 72 and len(_PAD_ROW) == ROW_BYTES and HEADER.startswith(b"kind,stage,")
assert _DIGIT_BYTES[48:56] == b"\xff" * 3 + b"\0" + b"\xff" * 4  # the split word 6


def _parse8(words: np.ndarray) -> np.ndarray:
    """In place: words of 8 digit values 0..9, the first digit in the lowest byte,
    become the numbers they spell (the classic SWAR: pairs, quads, octets)."""
    words *= _U(10 * 256 + 1)
    words >>= _U(8)
    words &= _U(0x00FF00FF00FF00FF)
    words *= _U(100 * 65536 + 1)
    words >>= _U(16)
    words &= _U(0x0000FFFF0000FFFF)
    words *= _U(10000 * (1 << 32) + 1)
    words >>= _U(32)
    return words


def _ascii8(values: np.ndarray) -> np.ndarray:
    """Numbers < 10**8 (uint64) as words of 8 ASCII digits, the first in the lowest byte."""
    high = values // _U(10000)
    words = high | ((values - high * _U(10000)) << _U(32))  # two lanes of 4 digits
    hundreds = ((words * _U(5243)) >> _U(19)) & _U(0x0000007F0000007F)  # lane // 100
    words = hundreds | ((words - hundreds * _U(100)) << _U(16))  # four lanes of 2 digits
    tens = ((words * _U(103)) >> _U(10)) & _U(0x000F000F000F000F)  # lane // 10
    words = tens | ((words - tens * _U(10)) << _U(8))
    return words | _U(0x3030303030303030)


# -- encoding (the writer's thread, and benchmarks) ---------------------------

_LIMITS = np.array([255, MAX_STAGE, MAX_ID, MAX_ID, MAX_ID, MAX_NS, MAX_NS], dtype=np.int64)


def valid_rows(rows: np.ndarray) -> np.ndarray:
    """Boolean mask of the rows of an ``(n, 7)`` int64 array that fit the format."""
    kind = rows[:, 0]
    return ((kind == SEND) | (kind == RECEIPT)) & ((rows >= 0) & (rows <= _LIMITS)).all(axis=1)


def encode_rows(rows: np.ndarray) -> bytes:
    """Rows of an ``(n, 7)`` int64 array in :data:`COLUMNS` order (kind as ``ord('S')``
    or ``ord('R')``) as CSV bytes; every row must pass :func:`valid_rows`."""
    rows = np.asarray(rows, dtype=np.int64)
    n = rows.shape[0]
    col = rows.view(np.uint64)
    out = np.empty((n, WORDS), dtype="<u8")
    comma, newline = _U(0x2C), _U(0x0A)
    out[:, 0] = ((_ascii8(col[:, 1]) >> _U(8)) & _U(0x00FFFFFFFFFF0000)) | col[:, 0] \
        | (comma << _U(8)) | (comma << _U(56))
    for word, column in ((1, 2), (2, 3), (3, 4)):
        out[:, word] = (_ascii8(col[:, column]) >> _U(8)) | (comma << _U(56))
    scheduled, event = col[:, 5], col[:, 6]
    top = scheduled // _U(10**11)
    middle = (scheduled - top * _U(10**11)) // _U(1000)
    out[:, 4] = _ascii8(top)
    out[:, 5] = _ascii8(middle)
    tail = scheduled - top * _U(10**11) - middle * _U(1000)
    head = event // _U(10**15)
    rest = event - head * _U(10**15)
    body = rest // _U(10**7)
    out[:, 6] = (_ascii8(tail) >> _U(40)) | (comma << _U(24)) | (_ascii8(head) & _EVENT_HEAD)
    out[:, 7] = _ascii8(body)
    out[:, 8] = (_ascii8(rest - body * _U(10**7)) >> _U(8)) | (newline << _U(56))
    return out.tobytes()


class _Closed:
    """Stands in for the row list after close(): a late event fails loudly."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def append(self, _row: tuple) -> None:
        raise EventLogError(f"{self._path}: event log is closed")


class EventLogWriter:
    """Appends events to a fixed-width CSV from a background thread.

    ``send`` and ``receipt`` only append a tuple to a list (call them from one
    thread, e.g. the event loop's). Every ``flush_interval`` seconds the thread
    takes what has accumulated, encodes it with numpy and writes it, whole rows
    only. ``close()`` writes everything left and closes the file, which then
    ends with a complete row; it raises :class:`EventLogError` when events were
    rejected (a value outside the format's limits: they are left out, the rest
    is written) or the file could not be written. Memory grows with the events
    the thread has not yet written (it encodes several 100,000 events per second).
    """

    def __init__(self, path: str | os.PathLike[str], *, flush_interval: float = 0.2,
                 batch_rows: int = 1 << 16) -> None:
        self.path = Path(path)
        self._rows: list[tuple] = []
        self._file = open(self.path, "wb")  # noqa: SIM115 - closed by close()
        self._file.write(HEADER)
        self._interval = flush_interval
        self._batch_rows = batch_rows
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self.written = 0
        self.rejected = 0
        self._first_rejected: tuple | None = None
        self._thread = threading.Thread(target=self._run, name=f"eventlog:{self.path.name}", daemon=True)
        self._thread.start()

    # The hot path: one tuple per event, in COLUMNS order.
    def send(self, stage: int, sender: int, msgno: int, scheduled_ns: int, sent_ns: int, size: int) -> None:
        self._rows.append((SEND, stage, sender, msgno, size, scheduled_ns, sent_ns))

    def receipt(self, stage: int, sender: int, msgno: int, receiver: int, scheduled_ns: int,
                received_ns: int) -> None:
        self._rows.append((RECEIPT, stage, sender, msgno, receiver, scheduled_ns, received_ns))

    def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        self._rows = _Closed(self.path)  # type: ignore[assignment]
        try:
            self._file.close()
        except OSError as exc:
            self._error = self._error or exc
        if self._error is not None:
            raise EventLogError(f"{self.path}: event log not fully written: {self._error}") from self._error
        if self.rejected:
            raise EventLogError(
                f"{self.path}: {self.rejected} events left out, their values outside the format's "
                f"limits (stage <= {MAX_STAGE}, ids and size <= {MAX_ID}, 0 <= times < 2**63); "
                f"first: {self._first_rejected}")

    def __enter__(self) -> EventLogWriter:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _run(self) -> None:
        while True:
            stopping = self._stop.wait(self._interval)
            self._drain()
            if stopping:
                return

    def _drain(self) -> None:
        rows = self._rows
        while rows:
            # Appends are atomic and land after index n, so taking [:n] loses nothing.
            n = min(len(rows), self._batch_rows)
            batch = rows[:n]
            del rows[:n]
            if self._error is None:
                try:
                    self._file.write(self._encode(batch))
                except Exception as exc:  # disk full, a bug: keep draining, report at close()
                    self._error = exc

    def _encode(self, batch: list[tuple]) -> bytes:
        try:
            array = np.fromiter(itertools.chain.from_iterable(batch), dtype=np.int64,
                                count=7 * len(batch)).reshape(-1, 7)
            ok = valid_rows(array)
        except (TypeError, ValueError, OverflowError):  # a value that is no int64
            ok = np.array([_row_fits(row) for row in batch], dtype=bool)
            array = np.array([row if fits else (SEND, 0, 0, 0, 0, 0, 0)
                              for row, fits in zip(batch, ok)], dtype=np.int64)
        if not ok.all():
            bad = np.flatnonzero(~ok)
            self.rejected += bad.size
            self._first_rejected = self._first_rejected or batch[bad[0]]
            array = array[ok]
        self.written += array.shape[0]
        return encode_rows(array)


def _row_fits(row: tuple) -> bool:
    try:
        array = np.array([row], dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        return False
    return array.shape == (1, 7) and bool(valid_rows(array)[0])


# -- reading -----------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class EventChunk:
    """Consecutive rows, parsed: one array per column (uint64; int64 where signed)."""

    first_line: int  # file line of the first row (the header is line 1)
    receipt: np.ndarray  # bool: an R row (else S)
    stage: np.ndarray
    sender: np.ndarray
    msgno: np.ndarray
    receiver_or_size: np.ndarray
    scheduled_ns: np.ndarray
    event_ns: np.ndarray

    def __len__(self) -> int:
        return self.receipt.size

    @property
    def elapsed_ns(self) -> np.ndarray:
        """``event_ns - scheduled_ns`` (int64): latency of a receipt, lag of a send."""
        return (self.event_ns - self.scheduled_ns).view(np.int64)


def iter_chunks(path: str | os.PathLike[str], *, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                allow_truncated: bool = False) -> Iterator[EventChunk]:
    """Parse an event log ``chunk_rows`` rows at a time (memory ~200 bytes per chunk row).

    A chunk's arrays are views into buffers that the next chunk reuses: copy
    what you keep. Raises :class:`EventLogError` naming the file and line for a
    wrong header, a malformed row or a truncated last line (unless
    ``allow_truncated``, which skips an incomplete last line, as a writer that
    was killed leaves it).
    """
    path = Path(path)
    f, rows = _open(path, chunk_rows, allow_truncated)
    with f:
        parser = _Parser(min(chunk_rows, max(rows, 1)))
        for done in range(0, rows, chunk_rows):
            n = min(chunk_rows, rows - done)
            _fill(f, parser.raw_view(n), path, done)
            yield parser.parse(n, path, done + 2)


def _open(path: Path, chunk_rows: int, allow_truncated: bool) -> tuple[io.RawIOBase, int]:
    """The file, positioned after its checked header, and how many whole rows it holds."""
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    try:
        f = open(path, "rb", buffering=0)  # noqa: SIM115 - the caller closes it
    except OSError as exc:
        raise EventLogError(f"{path}: cannot open event log: {exc.strerror or exc}") from None
    try:
        header = f.read(len(HEADER))
        if header != HEADER:
            first = (header + f.read(200)).split(b"\n", 1)[0]
            raise EventLogError(f"{path}:1: not a scalechat event log: header {first[:120]!r}, "
                                f"expected {HEADER.rstrip().decode()!r}")
        rows, partial = divmod(os.fstat(f.fileno()).st_size - len(HEADER), ROW_BYTES)
        if partial and not allow_truncated:
            raise EventLogError(f"{path}:{rows + 2}: truncated last line ({partial} of {ROW_BYTES} "
                                f"bytes): the writer did not finish")
    except BaseException:
        f.close()
        raise
    return f, rows


def _fill(f: io.RawIOBase, view: memoryview, path: Path, done: int) -> None:
    got = 0
    while got < view.nbytes:
        read = f.readinto(view[got:])
        if not read:
            raise EventLogError(f"{path}:{done + got // ROW_BYTES + 2}: file shrank while reading")
        got += read


class _Parser:
    """Buffers for one chunk, and the vectorised parse; no temporaries the size of a chunk."""

    def __init__(self, rows: int) -> None:
        tiles = -(-rows // _TILE)
        self.raw = np.empty(tiles * _TILE * ROW_BYTES, dtype=np.uint8)
        self.words = self.raw.view("<u8").reshape(tiles, _TILE * WORDS)
        self.x = np.empty(self.words.shape, dtype=_U)
        self.t = np.empty(self.words.shape, dtype=_U)

    def raw_view(self, rows: int) -> memoryview:
        return memoryview(self.raw)[: rows * ROW_BYTES]

    def parse(self, n: int, path: Path, first_line: int) -> EventChunk:
        tiles = -(-n // _TILE)
        pad = tiles * _TILE - n
        if pad:
            self.raw[n * ROW_BYTES: (n + pad) * ROW_BYTES] = np.frombuffer(_PAD_ROW * pad, np.uint8)
        words, x, t = self.words[:tiles], self.x[:tiles], self.t[:tiles]
        np.bitwise_xor(words, _PATTERN, out=x)
        np.add(x, _ADD, out=t)
        t |= x
        t &= _TOP_BITS
        if t.any():
            i = int(np.flatnonzero(t.reshape(-1, WORDS).any(axis=1))[0])
            row = self.raw[i * ROW_BYTES: (i + 1) * ROW_BYTES].tobytes()
            raise EventLogError(f"{path}:{first_line + i}: not an event row: {row!r}")
        rows = x.reshape(-1, WORDS)[:n]
        # Valid rows are all zeros now but for the digits and the kind byte (R 0, S 1).
        receipt = (rows[:, 0] & _U(0xFF)) == 0
        rows[:, 0] &= _NOT_KIND
        head = rows[:, 6] & _EVENT_HEAD
        rows[:, 6] &= _SCHED_TAIL
        x <<= _SHIFT
        _parse8(x)
        _parse8(head)
        scheduled = rows[:, 4] * _U(10**11)
        scheduled += rows[:, 5] * _U(1000)
        scheduled += rows[:, 6]
        event = head * _U(10**15)
        event += rows[:, 7] * _U(10**7)
        event += rows[:, 8]
        return EventChunk(first_line, receipt, rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3],
                          scheduled, event)


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
    f, rows = _open(path, chunk_rows, allow_truncated)
    slots = [_Slot(min(chunk_rows, max(rows, 1)), config, duplicates is not None) for _ in range(workers)]
    pending: deque[Future] = deque()
    try:
        with f, ThreadPoolExecutor(workers, thread_name_prefix="eventlog-read") as pool:
            for k, done in enumerate(range(0, rows, chunk_rows)):
                if len(pending) == workers:  # the oldest chunk used this slot: wait for it, in order
                    _collect(pending.popleft(), duplicates)
                slot, n = slots[k % workers], min(chunk_rows, rows - done)
                _fill(f, slot.parser.raw_view(n), path, done)
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


def _collect(future: Future, duplicates: _Duplicates | None) -> None:
    keys = future.result()
    if duplicates is not None:
        duplicates.add(*keys)


class _Slot:
    """One reading thread's buffers and its share of the aggregates."""

    def __init__(self, rows: int, config: HistogramConfig, keys: bool) -> None:
        self.parser = _Parser(rows)
        self.config = config
        self.keys = keys
        self.stages: dict[int, _Stage] = {}

    def add(self, n: int, path: Path, first_line: int) -> tuple[np.ndarray, np.ndarray, int] | None:
        chunk = self.parser.parse(n, path, first_line)
        low, high = int(chunk.stage.min()), int(chunk.stage.max())
        present = [low] if low == high else \
            (np.flatnonzero(np.bincount((chunk.stage - _U(low)).astype(np.intp))) + low).tolist()
        for stage in present:
            if stage not in self.stages:
                self.stages[stage] = _Stage(stage, self.config)
            self.stages[stage].add(chunk, slice(None) if low == high else chunk.stage == _U(stage))
        if not self.keys:
            return None
        r = chunk.receipt
        stages = chunk.stage[r].astype(np.uint32)  # a copy: the buffers are reused
        high_part = chunk.sender[r] * _U(10**7) + chunk.msgno[r]
        low_part = chunk.receiver_or_size[r] * _U(10**5) + chunk.stage[r]
        return high_part ^ (low_part * _U(0x9E3779B97F4A7C15)), stages, n


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
        self._pending: Future | None = None
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
