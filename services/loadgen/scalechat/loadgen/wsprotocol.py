"""RFC 6455, client side, without I/O: the opening handshake and frame encoding.

The frame parser is the one the chat server uses too, in its client's role:
:class:`scalechat.wsframes.FrameParser` (re-exported here with the close codes).

Bytes in, bytes or events out; nothing here touches a socket or an event
loop, so every rule is tested directly (tests/loadgen/test_wsprotocol.py).
:mod:`scalechat.loadgen.wsclient` moves the bytes.

Errors raised here: ValueError (a bad URL or close code), ProtocolError (an
invalid 101 response), HandshakeError (defined here for the shell to raise).
"""

from __future__ import annotations

import random
import struct
from collections.abc import Mapping
from urllib.parse import urlsplit

from scalechat.wsframes import (DEFAULT_MAX_MESSAGE_SIZE, CloseCode, CloseInfo, FrameParser, Opcode,
                                accept_key, encode_close, mask, valid_close_code, xor_mask)

__all__ = [
    "CloseCode",
    "CloseInfo",
    "ConnectionClosed",
    "FrameParser",
    "HandshakeError",
    "Opcode",
    "ProtocolError",
    "WSClientError",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "accept_key",
    "encode_close",
    "encode_frame",
    "valid_close_code",
    "xor_mask",
]

MAX_HEAD_SIZE = 64 * 1024  # HTTP response head, and the kept part of a reject body


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
    return head + mask(head[-4:], payload)
