"""Server-to-client WebSocket framing (RFC 6455 section 5.2), done once per broadcast.

Server frames are never masked (section 5.1), so one frame's bytes are valid
for every recipient: a broadcast is encoded once and framed once.
"""

from __future__ import annotations

import struct

_FIN_TEXT = 0x81  # FIN bit + opcode 0x1 (text)
_RSV1 = 0x40  # permessage-deflate: a compressed message (RFC 7692 section 6)
_LEN16 = struct.Struct("!BBH")
_LEN64 = struct.Struct("!BBQ")


def frame_text(payload: bytes) -> bytes:
    """One unmasked, unfragmented text frame carrying ``payload`` (UTF-8 JSON)."""
    return text_header(len(payload)) + payload


def payload_of(frame: bytes) -> bytes:
    """The payload of a frame built here (the inverse of :func:`frame_text`)."""
    code = frame[1]
    return frame[2 if code < 126 else 4 if code == 126 else 10:]


def text_header(n: int, compressed: bool = False) -> bytes:
    """The header of an unmasked, unfragmented text frame of ``n`` payload bytes."""
    b0 = _FIN_TEXT | _RSV1 if compressed else _FIN_TEXT
    if n < 126:
        return bytes((b0, n))
    if n < 65536:
        return _LEN16.pack(b0, 126, n)
    return _LEN64.pack(b0, 127, n)


def control_frame(opcode: int, payload: bytes = b"") -> bytes:
    """One unmasked control frame (close 0x8, ping 0x9, pong 0xA) of at most 125 bytes."""
    if len(payload) > 125:
        raise ValueError(f"a control frame carries at most 125 bytes, not {len(payload)}")
    return bytes((0x80 | opcode, len(payload))) + payload
