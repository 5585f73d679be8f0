"""iter_chunks: an event log read chunk by chunk into reused buffers, each chunk parsed at once (format.ChunkParser).

:func:`open_log` and :func:`read_rows` are the file side, shared with
:func:`~scalechat.eventlog.summary.read_event_log`.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path
from scalechat.eventlog.format import (DEFAULT_CHUNK_ROWS, HEADER, ROW_BYTES, ChunkParser, EventChunk,
                                       EventLogError)


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
    f, rows = open_log(path, chunk_rows, allow_truncated)
    with f:
        parser = ChunkParser(min(chunk_rows, max(rows, 1)))
        for done in range(0, rows, chunk_rows):
            n = min(chunk_rows, rows - done)
            read_rows(f, parser.raw_view(n), path, done)
            yield parser.parse(n, path, done + 2)


def open_log(path: Path, chunk_rows: int, allow_truncated: bool) -> tuple[io.RawIOBase, int]:
    """The file, positioned after its checked header, and how many whole rows it holds."""
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    try:
        f = open(path, "rb", buffering=0)
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


def read_rows(f: io.RawIOBase, view: memoryview, path: Path, done: int) -> None:
    """Fill ``view`` from ``f`` (rows after the first ``done``); EventLogError if the file shrank."""
    got = 0
    while got < view.nbytes:
        read = f.readinto(view[got:])
        if not read:
            raise EventLogError(f"{path}:{done + got // ROW_BYTES + 2}: file shrank while reading")
        got += read
