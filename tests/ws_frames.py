"""WebSocket frames as a server or a client puts them on the wire, for tests (RFC 6455 section 5.2)."""

from __future__ import annotations

import struct

from scalechat.loadgen.wsprotocol import Opcode


def server_frame(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, mask: bytes | None = None) -> bytes:
    """A server-to-client frame, unmasked unless ``mask`` is given."""
    b0 = (0x80 if fin else 0) | rsv | opcode
    n = len(payload)
    mask_bit = 0x80 if mask else 0
    if n < 126:
        head = bytes([b0, mask_bit | n])
    elif n < 65536:
        head = bytes([b0, mask_bit | 126]) + struct.pack("!H", n)
    else:
        head = bytes([b0, mask_bit | 127]) + struct.pack("!Q", n)
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        head += mask
    return head + payload


def unmask_client_frame(frame: bytes) -> tuple[int, bool, bytes]:
    """(first byte, mask bit set, unmasked payload) of one complete client frame."""
    length = frame[1] & 0x7F
    pos = 2
    if length == 126:
        length, pos = struct.unpack("!H", frame[2:4])[0], 4
    elif length == 127:
        length, pos = struct.unpack("!Q", frame[2:10])[0], 10
    key, payload = frame[pos : pos + 4], frame[pos + 4 :]
    assert len(payload) == length
    return frame[0], bool(frame[1] & 0x80), bytes(b ^ key[i % 4] for i, b in enumerate(payload))


# A server stream with every kind of frame: fragments, an interleaved ping, 16-bit lengths, a close.
DATA_AND_PING = b"".join(
    [
        server_frame(Opcode.TEXT, b"hello"),
        server_frame(Opcode.TEXT, b"frag", fin=False),
        server_frame(Opcode.PING, b"p"),  # control frames may interleave (section 5.4)
        server_frame(Opcode.CONTINUATION, b"men", fin=False),
        server_frame(Opcode.CONTINUATION, b"ted", fin=True),
        server_frame(Opcode.BINARY, bytes(range(256)) * 2),  # 16-bit length
        server_frame(Opcode.TEXT, b""),
    ]
)
FRAGMENTED_STREAM = (
    DATA_AND_PING
    + server_frame(Opcode.CLOSE, struct.pack("!H", 1013) + b"slow consumer")
    + server_frame(Opcode.TEXT, b"after close: ignored")
)
FRAGMENTED_MESSAGES = [b"hello", b"fragmented", bytes(range(256)) * 2, b""]
