"""RFC 6455, client side, without I/O: the opening handshake, frame encoding and FrameParser.

Bytes in, bytes or events out; nothing here touches a socket or an event
loop, so every rule is tested directly (tests/loadgen/test_wsprotocol.py).
:mod:`scalechat.loadgen.wsclient` moves the bytes.

Errors raised here: ValueError (a bad URL or close code), ProtocolError (an
invalid 101 response), HandshakeError (defined here for the shell to raise).
"""

from __future__ import annotations

import base64
import enum
import hashlib
import random
import struct
from collections.abc import Callable, Mapping
from typing import NamedTuple
from urllib.parse import urlsplit

try:  # aiohttp's Cython XOR loop (private API): 0.35 us vs 1.7 us per 150-byte frame.
    from aiohttp._websocket.mask import _websocket_mask_cython as _c_mask
except ImportError:  # pragma: no cover - aiohttp built without extensions
    _c_mask = None

__all__ = [
    "CloseCode",
    "CloseInfo",
    "ConnectionClosed",
    "FrameParser",
    "HandshakeError",
    "Opcode",
    "ProtocolError",
    "WSClientError",
    "encode_frame",
    "xor_mask",
]

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3
DEFAULT_MAX_MESSAGE_SIZE = 4 * 2**20  # same default as aiohttp
MAX_HEAD_SIZE = 64 * 1024  # HTTP response head, and the kept part of a reject body


class Opcode(enum.IntEnum):
    """Frame opcodes (RFC 6455 section 5.2)."""

    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


class CloseCode(enum.IntEnum):
    """Close codes this module sends or names (RFC 6455 section 7.4.1, IANA registry)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    NO_STATUS = 1005  # never on the wire: the close frame carried no code
    ABNORMAL = 1006  # never on the wire: the connection dropped without a close frame
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    TRY_AGAIN_LATER = 1013


class CloseInfo(NamedTuple):
    """How a connection ended: ``code, reason = await client.closed``."""

    code: int
    reason: str


class WSClientError(Exception):
    """Base of the errors raised by this module."""


class HandshakeError(WSClientError):
    """The server answered the upgrade request with a status other than 101."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"WebSocket upgrade rejected: HTTP {status}: {body}")
        self.status = status
        self.body = body


class ProtocolError(WSClientError):
    """The server's 101 response breaks RFC 6455 section 4.1."""


class ConnectionClosed(WSClientError):
    """The connection is closed (or closing): nothing more can be sent or received."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"WebSocket closed: {code} {reason}".rstrip())
        self.code = code
        self.reason = reason


# --------------------------------------------------------------------------- handshake


def parse_ws_url(url: str) -> tuple[str, int, str, str]:
    """Split ``ws://host[:port]/path?query`` into (host, port, resource, Host header)."""
    parts = urlsplit(url)
    if parts.scheme != "ws":
        if parts.scheme == "wss":
            raise ValueError(f"{url!r}: wss:// (TLS) is not supported by this client")
        raise ValueError(f"{url!r}: the URL must start with ws://")
    host = parts.hostname
    if not host:
        raise ValueError(f"{url!r}: the URL has no host")
    port = parts.port or 80
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host_header = f"[{host}]" if ":" in host else host
    if port != 80:
        host_header = f"{host_header}:{port}"
    return host, port, resource, host_header


def accept_key(key: str) -> str:
    """The Sec-WebSocket-Accept value the server must return for ``key`` (section 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def build_request(resource: str, host_header: str, key: str, headers: Mapping[str, str] | None) -> bytes:
    """The opening handshake request (section 4.1)."""
    lines = [
        f"GET {resource} HTTP/1.1",
        f"Host: {host_header}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def parse_response_head(head: bytes) -> tuple[int, dict[str, str]]:
    """Status and lower-cased headers of an HTTP/1.1 response head (no trailing CRLFCRLF)."""
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    version, _, rest = status_line.partition(" ")
    if not version.startswith("HTTP/1.") or not rest[:3].isdigit():
        raise ProtocolError(f"malformed HTTP status line {status_line!r}")
    headers: dict[str, str] = {}
    for line in header_lines:
        name, sep, value = line.partition(":")
        if not sep:
            raise ProtocolError(f"malformed HTTP header line {line!r}")
        name = name.strip().lower()
        value = value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return int(rest[:3]), headers


def check_upgrade(headers: Mapping[str, str], key: str) -> None:
    """Validate a 101 response's headers as section 4.1 requires a client to."""
    if headers.get("upgrade", "").lower() != "websocket":
        raise ProtocolError(f"101 response has Upgrade: {headers.get('upgrade')!r}")
    if "upgrade" not in (t.strip().lower() for t in headers.get("connection", "").split(",")):
        raise ProtocolError(f"101 response has Connection: {headers.get('connection')!r}")
    if headers.get("sec-websocket-accept") != accept_key(key):
        raise ProtocolError("101 response has a wrong Sec-WebSocket-Accept")
    # We offer no extension and no subprotocol, so the server must select none.
    for name in ("sec-websocket-extensions", "sec-websocket-protocol"):
        if headers.get(name):
            raise ProtocolError(f"101 response selects {name} {headers[name]!r} that was not offered")


def dechunk(body: bytes) -> bytes | None:
    """Decode a chunked body; None while it is incomplete."""
    out, pos = [], 0
    while True:
        eol = body.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(body[pos:eol].split(b";")[0] or b"0", 16)
        if size == 0:
            return b"".join(out)
        if len(body) < eol + 2 + size + 2:
            return None
        out.append(body[eol + 2 : eol + 2 + size])
        pos = eol + 2 + size + 2


# --------------------------------------------------------------------------- framing

_PACK_SHORT = struct.Struct("!BBI").pack  # FIN|opcode, MASK|len, masking key
_PACK_MEDIUM = struct.Struct("!BBHI").pack
_PACK_LONG = struct.Struct("!BBQI").pack


def encode_frame(opcode: int, payload: bytes) -> bytes:
    """One final, masked client frame (sections 5.2 and 5.3).

    The masking key comes from ``random.getrandbits`` per frame, as in aiohttp:
    the key's unpredictability defends browsers against cache poisoning by
    scripts (section 10.3), which does not apply to a load generator.
    """
    n = len(payload)
    key = random.getrandbits(32)
    if n < 126:
        head = _PACK_SHORT(0x80 | opcode, 0x80 | n, key)
    elif n < 65536:
        head = _PACK_MEDIUM(0x80 | opcode, 0xFE, n, key)
    else:
        head = _PACK_LONG(0x80 | opcode, 0xFF, n, key)
    if not n:
        return head
    if _c_mask is None:
        return head + xor_mask(head[-4:], payload)
    body = bytearray(payload)
    _c_mask(head[-4:], body)
    return head + body


def xor_mask(key: bytes, payload: bytes) -> bytes:
    """Mask (or unmask) ``payload`` with the 4-byte ``key`` (section 5.3), in pure Python.

    One big-integer XOR against the key repeated over the payload: faster than
    per-byte loops or translate tables for frames up to a few hundred bytes.
    Used only when aiohttp's C helper is missing.
    """
    n = len(payload)
    keys = key * ((n + 3) >> 2)
    return (int.from_bytes(payload, "big") ^ int.from_bytes(keys[:n], "big")).to_bytes(n, "big")


def encode_close(code: int, reason: str = "") -> bytes:
    """Close frame payload: 2-byte code then UTF-8 reason (section 5.5.1); empty for 1005."""
    if code == CloseCode.NO_STATUS:
        return b""
    return code.to_bytes(2, "big") + reason.encode()[:123]


def valid_close_code(code: int) -> bool:
    """Whether a peer may send ``code`` in a close frame."""
    # Section 7.4: 1004-1006 and 1015 must never be sent; 1016-2999 are unassigned.
    return code in (1000, 1001, 1002, 1003) or 1007 <= code <= 1014 or 3000 <= code <= 4999


class FrameParser:
    """Sans-I/O parser of server-to-client frames (RFC 6455 section 5).

    ``feed(chunk)`` returns the payloads of the data messages completed by the
    chunk, in arrival order; each complete message appears in exactly one
    ``feed`` result, whatever the chunk boundaries. Control frames are queued
    in ``control`` as ``(opcode, payload)`` for pings and pongs; a close frame
    sets ``close``; a protocol violation sets ``error`` to the close code and
    reason the client must send. After ``close`` or ``error`` is set the parser
    ignores all further input. ``events`` is true whenever one of the three is
    set, so callers check one attribute per chunk.
    """

    def __init__(self, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        if max_message_size < 125:
            raise ValueError(f"max_message_size must be >= 125, got {max_message_size}")
        self.max_message_size = max_message_size
        self.control: list[tuple[int, bytes]] = []
        self.close: CloseInfo | None = None
        self.error: CloseInfo | None = None
        self.events = False
        self._done = False
        self._pending: bytearray | None = None  # an incomplete frame
        self._need = 0  # bytes _pending must reach before a parse can progress
        self._fragments: list[bytes] | None = None  # a fragmented message in progress
        self._fragments_size = 0

    def feed(self, data: bytes) -> list[bytes]:
        if self._done:
            return []
        if self._pending is not None:
            pending = self._pending
            pending += data
            if len(pending) < self._need:
                return []
            data = bytes(pending)
            self._pending = None
        messages: list[bytes] = []
        append = messages.append
        limit = self.max_message_size
        # While a fragmented message is in progress a final text/binary frame is
        # an error (section 5.4), so it must not take the fast path.
        fin_text, fin_binary = (0x81, 0x82) if self._fragments is None else (-1, -1)
        n = len(data)
        pos = 0
        while pos < n:
            if pos + 2 > n:
                need = 2
                break
            b0 = data[pos]
            length = data[pos + 1]
            if length < 126:
                start = pos + 2
            elif length == 126:
                start = pos + 4
                if start > n:
                    need = 4
                    break
                length = (data[pos + 2] << 8) | data[pos + 3]
                if length > limit:
                    self._fail(CloseCode.MESSAGE_TOO_BIG, f"frame of {length} bytes exceeds limit {limit}")
                    return messages
            elif length == 127:
                start = pos + 10
                if start > n:
                    need = 10
                    break
                length = int.from_bytes(data[pos + 2 : start], "big")
                if length > limit:
                    self._fail(CloseCode.MESSAGE_TOO_BIG, f"frame of {length} bytes exceeds limit {limit}")
                    return messages
            else:  # MASK bit set: a server must not mask (section 5.1)
                self._fail(CloseCode.PROTOCOL_ERROR, "masked frame from server")
                return messages
            end = start + length
            if end > n:
                need = end - pos
                break
            if b0 == fin_text or b0 == fin_binary:  # the hot path: one whole message
                append(data[start:end])
            else:
                self._frame(b0, data[start:end], append)
                if self._done:
                    return messages
                fin_text, fin_binary = (0x81, 0x82) if self._fragments is None else (-1, -1)
            pos = end
        else:
            return messages
        self._pending = bytearray(memoryview(data)[pos:])
        self._need = need
        return messages

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

    def _frame(self, b0: int, payload: bytes, append: Callable[[bytes], None]) -> None:
        """Everything but a final unfragmented data frame."""
        opcode = b0 & 0x0F
        fin = b0 & 0x80
        if b0 & 0x70:  # no extension was negotiated, so RSV1-3 must be 0 (section 5.2)
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
            self._fragments, self._fragments_size = [], 0
            self._add_fragment(payload, fin, append)
        else:
            self._fail(CloseCode.PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")

    def _add_fragment(self, payload: bytes, fin: int, append: Callable[[bytes], None]) -> None:
        assert self._fragments is not None
        self._fragments.append(payload)
        self._fragments_size += len(payload)
        if self._fragments_size > self.max_message_size:
            return self._fail(
                CloseCode.MESSAGE_TOO_BIG,
                f"message of {self._fragments_size}+ bytes exceeds limit {self.max_message_size}",
            )
        if fin:
            append(b"".join(self._fragments))
            self._fragments = None

    def _close_frame(self, payload: bytes) -> None:
        if not payload:
            self.close = CloseInfo(CloseCode.NO_STATUS, "")
        elif len(payload) == 1:
            return self._fail(CloseCode.PROTOCOL_ERROR, "close frame with a 1-byte payload")
        else:
            code = int.from_bytes(payload[:2], "big")
            if not valid_close_code(code):
                return self._fail(CloseCode.PROTOCOL_ERROR, f"invalid close code {code}")
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
