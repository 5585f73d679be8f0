"""The RFC 6455 rules aiohttp's frame reader does not enforce, sans I/O.

aiohttp's reader (its C and Python twins) already fails the connection with
the right code for reserved bits without an extension, unknown opcodes,
fragmented or oversized control frames, continuation frames out of sequence
(1002), a 1-byte close payload (1002) and invalid UTF-8 in a text message or a
close reason, across fragments too (1007). It does not check three rules,
and :class:`ClientFrameCheck` does:

* every client frame is masked (section 5.1: "The server MUST close the
  connection upon receiving a frame that is not masked");
* a 64-bit payload length has its most significant bit clear (section 5.2);
  aiohttp answers such a length with 1009, as if it were merely too big;
* a close frame's code is one an endpoint may send (section 7.4): not 0-999,
  1004 (reserved), 1005, 1006, 1015 (never on the wire), 1016-2999
  (unassigned) or 5000 and above. aiohttp lets 1006 and everything from 3000
  up through and answers with 1000.

Length encodings longer than needed (a 5-byte payload in a 16-bit length) are
accepted, as aiohttp and python-websockets accept them.

The check follows frame boundaries by reading headers and skipping payloads,
so it costs a few operations per frame, not per byte. It holds back an
incomplete header (and, for a close frame, its first two payload bytes) until
it can judge it; everything it returns is whole frames or payload, so the
reader behind it is at a frame boundary whenever a violation is found.
"""

from __future__ import annotations

from typing import NamedTuple

PROTOCOL_ERROR = 1002
_OPCODE_CLOSE = 0x8


def valid_close_code(code: int) -> bool:
    """May an endpoint send ``code`` in a close frame (RFC 6455 section 7.4, IANA registry)?"""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


class Violation(NamedTuple):
    """A rule broken by the frame starting where the passed bytes end; close with ``code``."""

    code: int
    reason: str


class ClientFrameCheck:
    """Feed the client-to-server bytes after the upgrade; pass on what ``feed`` returns.

    ``feed(data)`` returns ``(passed, violation)``: the bytes that may go to the
    frame reader now, and the first broken rule, if any. After a violation the
    check passes nothing more.
    """

    __slots__ = ("_held", "_payload_left", "violation")

    def __init__(self) -> None:
        self._held = b""  # the start of a frame whose header is incomplete
        self._payload_left = 0  # payload bytes of the current frame still to come
        self.violation: Violation | None = None

    def feed(self, data: bytes) -> tuple[bytes, Violation | None]:
        if self.violation is not None:
            return b"", self.violation
        buf = self._held + data if self._held else data
        n = len(buf)
        pos = 0
        while pos < n:
            if self._payload_left:
                step = min(self._payload_left, n - pos)
                self._payload_left -= step
                pos += step
                continue
            if n - pos < 2:
                break
            b0, b1 = buf[pos], buf[pos + 1]
            if not b1 & 0x80:
                return self._fail(buf, pos, "client frames must be masked (RFC 6455 section 5.1)")
            length = b1 & 0x7F
            head = 6 if length < 126 else 8 if length == 126 else 14  # with the 4-byte mask key
            if n - pos < head:
                break
            if length == 126:
                length = int.from_bytes(buf[pos + 2:pos + 4], "big")
            elif length == 127:
                length = int.from_bytes(buf[pos + 2:pos + 10], "big")
                if length >> 63:
                    return self._fail(buf, pos, "64-bit payload length with the most significant "
                                                "bit set (RFC 6455 section 5.2)")
            if b0 & 0x0F == _OPCODE_CLOSE and length >= 2:
                if n - pos < head + 2:
                    break
                key = pos + head - 4
                code = (buf[key + 4] ^ buf[key]) << 8 | (buf[key + 5] ^ buf[key + 1])
                if not valid_close_code(code):
                    return self._fail(buf, pos, f"close code {code} may not be sent "
                                                "(RFC 6455 section 7.4)")
            pos += head
            self._payload_left = length
        if pos < n:  # an incomplete header: held until the next feed
            self._held = buf[pos:]
            return buf[:pos], None
        self._held = b""
        return buf, None

    def _fail(self, buf: bytes, pos: int, reason: str) -> tuple[bytes, Violation]:
        self.violation = Violation(PROTOCOL_ERROR, reason)
        self._held = b""
        return buf[:pos], self.violation
