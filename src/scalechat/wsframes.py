"""RFC 6455 frames for both ends of a WebSocket, without I/O.

:class:`FrameParser` reads the frames one end receives: server-to-client
frames (unmasked) in the load generator, client-to-server frames (masked,
optionally compressed with permessage-deflate, text only) in the chat server.
One parser, so both ends enforce the same rules; bytes in, messages and events
out, nothing here touches a socket or an event loop (tests/test_wsframes.py).
"""

from __future__ import annotations

import base64
import enum
import hashlib
import struct
from collections.abc import Callable
from typing import NamedTuple, Protocol

# aiohttp's Cython XOR loop (private API): 0.35 us vs 1.7 us per 150-byte frame. Both
# services install aiohttp; the core does not require it and falls back to xor_mask.
try:
    from aiohttp._websocket.mask import _websocket_mask_cython as _c_mask  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - aiohttp built without extensions
    _c_mask = None

DEFAULT_MAX_MESSAGE_SIZE = 4 * 2**20  # same default as aiohttp
Payload = bytes | bytearray  # a message's payload: a server's parser unmasks into a bytearray
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3


def accept_key(key: str) -> str:
    """The Sec-WebSocket-Accept value for the client's Sec-WebSocket-Key (section 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


class Opcode(enum.IntEnum):
    """Frame opcodes (RFC 6455 section 5.2)."""

    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


class CloseCode(enum.IntEnum):
    """Close codes the parser reports or the ends name (RFC 6455 section 7.4.1, IANA registry)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS = 1005  # never on the wire: the close frame carried no code
    ABNORMAL = 1006  # never on the wire: the connection dropped without a close frame
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    TRY_AGAIN_LATER = 1013


class CloseInfo(NamedTuple):
    """A close frame received (``close``) or a broken rule (``error``): code and reason."""

    code: int
    reason: str


class Inflater(Protocol):
    """permessage-deflate's receiving side (RFC 7692), as the parser uses it."""

    def inflate(self, payload: bytes, limit: int) -> bytes | None:
        """The message ``payload`` decompresses to; None if that exceeds ``limit`` bytes.
        Raises ValueError if ``payload`` is not valid deflate data."""
        ...


def valid_close_code(code: int) -> bool:
    """Whether a peer may send ``code`` in a close frame."""
    # Section 7.4: 1004-1006 and 1015 must never be sent; 1016-2999 are unassigned.
    return code in (1000, 1001, 1002, 1003) or 1007 <= code <= 1014 or 3000 <= code <= 4999


def encode_close(code: int, reason: str = "") -> bytes:
    """Close frame payload: 2-byte code then UTF-8 reason (section 5.5.1); empty for 1005.

    The reason is cut to fit a control frame's 125 bytes, never inside a character.
    """
    if code == CloseCode.NO_STATUS:
        return b""
    encoded = reason.encode()
    if len(encoded) > 123:
        encoded = encoded[:123].decode(errors="ignore").encode()
    return code.to_bytes(2, "big") + encoded


def xor_mask(key: bytes, payload: bytes) -> bytes:
    """Mask (or unmask) ``payload`` with the 4-byte ``key`` (section 5.3), in pure Python.

    One big-integer XOR against the key repeated over the payload: faster than
    per-byte loops or translate tables for frames up to a few hundred bytes.
    Used only when aiohttp's C helper is missing.
    """
    n = len(payload)
    keys = key * ((n + 3) >> 2)
    return (int.from_bytes(payload, "big") ^ int.from_bytes(keys[:n], "big")).to_bytes(n, "big")


def mask(key: bytes, payload: bytes) -> Payload:
    """``payload`` XORed with the 4-byte ``key``: the same operation masks and unmasks.

    A bytearray when aiohttp's C helper does it (no copy back into bytes: the
    parser hands it on, the client appends it to a header).
    """
    if _c_mask is None:
        return xor_mask(key, payload)
    body = bytearray(payload)
    _c_mask(key, body)
    return body


_LENGTH16 = struct.Struct("!H").unpack_from
_LENGTH64 = struct.Struct("!Q").unpack_from


class FrameParser:
    """Sans-I/O parser of the frames one end receives (RFC 6455 section 5).

    ``feed(chunk)`` returns the payloads of the data messages completed by the
    chunk, in arrival order (bytes; a bytearray where a server's parser
    unmasked a single frame); each complete message appears in exactly one
    ``feed`` result, whatever the chunk boundaries. Control frames are queued
    in ``control`` as ``(opcode, payload)`` for pings and pongs; a close frame
    sets ``close``; a broken rule sets ``error`` to the close code and reason
    this end must send. After ``close`` or ``error`` is set the parser ignores
    all further input. ``events`` is true whenever one of the three is set, so
    callers check one attribute per chunk.

    The receiving end sets the rules: ``masked`` (a server's parser: every
    frame must be masked, section 5.1; a client's: none may be),
    ``text_only`` (a binary message fails with 1003) and ``inflater`` (the
    permessage-deflate extension was negotiated: RSV1 marks a compressed
    message, which must inflate within ``max_message_size``). Messages and
    frames over ``max_message_size`` fail with 1009, before their payload is
    read. Text is not checked for UTF-8 here: decoding it is the caller's
    first step anyway, and fails with 1007.
    """

    __slots__ = ("max_message_size", "control", "close", "error", "events", "_done", "_pending",
                 "_need", "_fragments", "_fragments_size", "_masked", "_text_only", "_inflater",
                 "_compressed")

    def __init__(self, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE, *, masked: bool = False,
                 text_only: bool = False, inflater: Inflater | None = None) -> None:
        if max_message_size < 1:
            raise ValueError(f"max_message_size must be positive, got {max_message_size}")
        self.max_message_size = max_message_size
        self.control: list[tuple[int, Payload]] = []
        self.close: CloseInfo | None = None
        self.error: CloseInfo | None = None
        self.events = False
        self._done = False
        self._pending: bytearray | None = None  # an incomplete frame
        self._need = 0  # bytes _pending must reach before a parse can progress
        self._fragments: list[Payload] | None = None  # a fragmented message in progress
        self._fragments_size = 0
        self._masked = masked
        self._text_only = text_only
        self._inflater = inflater
        self._compressed = False  # the message in progress had RSV1 set

    def feed(self, data: bytes) -> list[Payload]:
        if self._done:
            return []
        if self._pending is not None:
            pending = self._pending
            pending += data
            if len(pending) < self._need:
                return []
            data = bytes(pending)
            self._pending = None
        messages: list[Payload] = []
        append = messages.append
        limit = self.max_message_size
        masked = self._masked
        mask_bit = 0x80 if masked else 0
        key_size = 4 if masked else 0
        short = 2 + key_size  # header bytes with a 7-bit length
        # While a fragmented message is in progress a final text/binary frame is
        # an error (section 5.4), so it must not take the fast path.
        fin_text, fin_binary = self._fast_opcodes()
        n = len(data)
        pos = 0
        while pos < n:
            if pos + 2 > n:
                need = 2
                break
            b0 = data[pos]
            length = data[pos + 1] ^ mask_bit  # the 7-bit length, or > 127 if the mask bit is wrong
            if length > 127:
                self._fail(CloseCode.PROTOCOL_ERROR,
                           "client frames must be masked (RFC 6455 section 5.1)" if masked
                           else "masked frame from server")
                return messages
            if length < 126:
                start = pos + short
                if start > n:  # the masking key is still to come
                    need = short
                    break
            elif length == 126:
                start = pos + 4 + key_size
                if start > n:
                    need = start - pos
                    break
                length = _LENGTH16(data, pos + 2)[0]
            else:
                start = pos + 10 + key_size
                if start > n:
                    need = start - pos
                    break
                length = _LENGTH64(data, pos + 2)[0]
                if length >> 63:
                    self._fail(CloseCode.PROTOCOL_ERROR, "64-bit payload length with the most "
                                                         "significant bit set (RFC 6455 section 5.2)")
                    return messages
            if length > limit:
                self._fail(CloseCode.MESSAGE_TOO_BIG, f"frame of {length} bytes exceeds limit {limit}")
                return messages
            end = start + length
            if end > n:
                need = end - pos
                break
            if masked and length:
                payload = mask(data[start - 4:start], data[start:end])
            else:
                payload = data[start:end]
            if b0 == fin_text or b0 == fin_binary:  # the hot path: one whole message
                append(payload)
            else:
                self._frame(b0, payload, append)
                if self._done:
                    return messages
                fin_text, fin_binary = self._fast_opcodes()
            pos = end
        else:
            return messages
        self._pending = bytearray(memoryview(data)[pos:])
        self._need = need
        return messages

    def _fast_opcodes(self) -> tuple[int, int]:
        """The first bytes of the frames ``feed`` may append at once (FIN, no RSV, text/binary)."""
        if self._fragments is not None:
            return -1, -1
        return 0x81, -1 if self._text_only else 0x82

    @property
    def idle(self) -> bool:
        """True between whole messages: no partial frame held, no fragmented message open, not done."""
        return self._pending is None and self._fragments is None and not self._done

    @property
    def fragmented(self) -> bool:
        """A fragmented message is in progress (its continuation frames must follow)."""
        return self._fragments is not None

    def bytes_to_finish(self, data: bytes) -> int:
        """How many bytes after the partial frame held complete it (0 if none is held).

        May exceed ``len(data)``. Feeding exactly that many leaves the parser
        between frames, so what follows in ``data`` starts at a frame boundary.
        For a client's parser (unmasked frames).
        """
        pending = self._pending
        if pending is None:
            return 0
        head = bytes(pending[:10]) + data[:10]
        if len(head) < 2:
            return 1 << 62
        length = head[1]
        header = 2 if length < 126 else 4 if length == 126 else 10
        if length > 127:  # masked: the parser fails the connection on it, whatever follows
            return len(data)
        if len(head) < header:
            return 1 << 62
        if length >= 126:
            length = int.from_bytes(head[2:header], "big")
        return header + length - len(pending)

    def take_pending(self) -> bytes:
        """The partial frame held, handed over (the parser then holds none)."""
        pending = bytes(self._pending or b"")
        self._pending = None
        return pending

    def _frame(self, b0: int, payload: Payload, append: Callable[[Payload], None]) -> None:
        """Everything but a final unfragmented uncompressed data frame."""
        opcode = b0 & 0x0F
        fin = b0 & 0x80
        rsv = b0 & 0x70
        # RSV1 marks a compressed message, on its first frame only (RFC 7692 section 6);
        # RSV2-3 belong to no extension we negotiate (RFC 6455 section 5.2).
        if rsv and not (rsv == 0x40 and self._inflater is not None
                        and opcode in (Opcode.TEXT, Opcode.BINARY)):
            return self._fail(CloseCode.PROTOCOL_ERROR, "reserved bits set")
        if opcode >= 8:
            if not fin or len(payload) > 125:  # section 5.5
                return self._fail(CloseCode.PROTOCOL_ERROR, "fragmented or oversized control frame")
            if opcode == Opcode.CLOSE:
                return self._close_frame(payload)
            if opcode not in (Opcode.PING, Opcode.PONG):
                return self._fail(CloseCode.PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")
            self.control.append((opcode, payload))
            self.events = True
        elif opcode == Opcode.CONTINUATION:
            if self._fragments is None:
                return self._fail(CloseCode.PROTOCOL_ERROR, "continuation frame without a message to continue")
            self._add_fragment(payload, fin, append)
        elif opcode in (Opcode.TEXT, Opcode.BINARY):
            if self._fragments is not None:
                return self._fail(CloseCode.PROTOCOL_ERROR, "new message before the fragmented one ended")
            if opcode == Opcode.BINARY and self._text_only:
                return self._fail(CloseCode.UNSUPPORTED_DATA, "binary messages are not accepted; send text")
            self._fragments, self._fragments_size, self._compressed = [], 0, bool(rsv)
            self._add_fragment(payload, fin, append)
        else:
            self._fail(CloseCode.PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")

    def _add_fragment(self, payload: Payload, fin: int, append: Callable[[Payload], None]) -> None:
        assert self._fragments is not None
        self._fragments.append(payload)
        self._fragments_size += len(payload)
        limit = self.max_message_size
        if self._fragments_size > limit:
            return self._fail(CloseCode.MESSAGE_TOO_BIG,
                              f"message of {self._fragments_size}+ bytes exceeds limit {limit}")
        if not fin:
            return
        message = b"".join(self._fragments)
        self._fragments = None
        if self._compressed:
            assert self._inflater is not None
            try:
                inflated = self._inflater.inflate(message, limit)
            except ValueError:
                return self._fail(CloseCode.INVALID_DATA, "invalid compressed data")
            if inflated is None:
                return self._fail(CloseCode.MESSAGE_TOO_BIG,
                                  f"message inflates to more than the limit of {limit} bytes")
            message = inflated
        append(message)

    def _close_frame(self, payload: Payload) -> None:
        if not payload:
            self.close = CloseInfo(CloseCode.NO_STATUS, "")
        elif len(payload) == 1:
            return self._fail(CloseCode.PROTOCOL_ERROR, "close frame with a 1-byte payload")
        else:
            code = int.from_bytes(payload[:2], "big")
            if not valid_close_code(code):
                return self._fail(CloseCode.PROTOCOL_ERROR,
                                  f"close code {code} may not be sent (RFC 6455 section 7.4)")
            try:
                reason = payload[2:].decode()
            except UnicodeDecodeError:  # section 8.1
                return self._fail(CloseCode.INVALID_DATA, "close reason is not UTF-8")
            self.close = CloseInfo(code, reason)
        self._done = self.events = True

    def _fail(self, code: int, reason: str) -> None:
        self.error = CloseInfo(code, reason)
        self._done = self.events = True
        self._pending = self._fragments = None
