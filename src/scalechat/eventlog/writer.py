"""EventLogWriter: the hot path appends a tuple; a thread encodes batches and writes whole rows."""

from __future__ import annotations

import itertools
import os
import threading
from pathlib import Path

import numpy as np

from scalechat.eventlog.format import (HEADER, MAX_ID, MAX_STAGE, RECEIPT, SEND, EventLogError, row_fits,
                                       encode_rows, valid_rows)


class _Closed:
    """Stands in for the row list after close(): a late event fails loudly."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def append(self, _row: tuple[int, ...]) -> None:
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
        self._rows: list[tuple[int, ...]] = []
        self._file = open(self.path, "wb")
        self._file.write(HEADER)
        self._interval = flush_interval
        self._batch_rows = batch_rows
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self.written = 0
        self.rejected = 0
        self._first_rejected: tuple[int, ...] | None = None
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

    def _encode(self, batch: list[tuple[int, ...]]) -> bytes:
        try:
            array = np.fromiter(itertools.chain.from_iterable(batch), dtype=np.int64,
                                count=7 * len(batch)).reshape(-1, 7)
            ok = valid_rows(array)
        except (TypeError, ValueError, OverflowError):  # a value that is no int64
            ok = np.array([row_fits(row) for row in batch], dtype=bool)
            array = np.array([row if fits else (SEND, 0, 0, 0, 0, 0, 0)
                              for row, fits in zip(batch, ok)], dtype=np.int64)
        if not ok.all():
            bad = np.flatnonzero(~ok)
            self.rejected += bad.size
            self._first_rejected = self._first_rejected or batch[bad[0]]
            array = array[ok]
        self.written += array.shape[0]
        return encode_rows(array)
