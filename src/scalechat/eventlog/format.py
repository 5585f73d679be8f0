"""The event log's row format (see the package): fixed 72-byte CSV rows, encoded and parsed with numpy.

A chunk of rows is viewed as 8-byte words and parsed without per-row Python (:class:`ChunkParser`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np



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
    digits: np.ndarray = words | _U(0x3030303030303030)
    return digits


# -- encoding (the writer's thread, and benchmarks) ---------------------------

_LIMITS = np.array([255, MAX_STAGE, MAX_ID, MAX_ID, MAX_ID, MAX_NS, MAX_NS], dtype=np.int64)


def valid_rows(rows: np.ndarray) -> np.ndarray:
    """Boolean mask of the rows of an ``(n, 7)`` int64 array that fit the format."""
    kind = rows[:, 0]
    mask: np.ndarray = ((kind == SEND) | (kind == RECEIPT)) & ((rows >= 0) & (rows <= _LIMITS)).all(axis=1)
    return mask


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



def row_fits(row: tuple[int, ...]) -> bool:
    """Whether one row tuple can be written: seven integers within the columns' limits."""
    try:
        array = np.array([row], dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        return False
    return array.shape == (1, 7) and bool(valid_rows(array)[0])


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
        elapsed: np.ndarray = (self.event_ns - self.scheduled_ns).view(np.int64)
        return elapsed


class ChunkParser:
    """Buffers for one chunk, and the vectorised parse; no temporaries the size of a chunk.

    Fill :meth:`raw_view` with ``n`` rows of the file, then :meth:`parse` them;
    the arrays of the chunk it returns are views into these buffers.
    """

    def __init__(self, rows: int) -> None:
        tiles = -(-rows // _TILE)
        self.raw = np.empty(tiles * _TILE * ROW_BYTES, dtype=np.uint8)
        self.words = self.raw.view("<u8").reshape(tiles, _TILE * WORDS)
        self.x = np.empty(self.words.shape, dtype=_U)
        self.t = np.empty(self.words.shape, dtype=_U)

    def raw_view(self, rows: int) -> memoryview:
        return memoryview(self.raw.data)[: rows * ROW_BYTES]

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
