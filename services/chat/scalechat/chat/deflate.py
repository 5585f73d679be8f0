"""permessage-deflate (RFC 7692) for one connection, sans I/O.

The server compresses each frame it sends to this client (one zlib stream per
connection: the per-connection cost the default, no compression, avoids) and
inflates the client's compressed messages within the message size limit.
Negotiation is the transport's (``app.py``): this holds what it agreed.
"""

from __future__ import annotations

import zlib

from scalechat.chat.framing import text_header

_TAIL = b"\x00\x00\xff\xff"  # the empty stored block a sync flush ends with (section 7.2.1)


class Deflate:
    """One connection's compressor and decompressor.

    ``window_bits``: the server's LZ77 window (server_max_window_bits, 9-15);
    ``takeover``: whether a message may refer to earlier ones
    (false when the client asked for server_no_context_takeover).
    """

    __slots__ = ("_window_bits", "_takeover", "_compressor", "_decompressor")

    def __init__(self, window_bits: int = 15, takeover: bool = True) -> None:
        if not 9 <= window_bits <= 15:
            raise ValueError(f"window_bits must be 9-15, got {window_bits}")
        self._window_bits = window_bits
        self._takeover = takeover
        self._compressor: zlib._Compress | None = None
        self._decompressor = zlib.decompressobj(wbits=-15)  # whatever window the client uses

    def frame(self, payload: bytes) -> bytes:
        """One compressed text frame (RSV1 set) carrying ``payload``."""
        compressor = self._compressor
        if compressor is None:
            compressor = zlib.compressobj(wbits=-self._window_bits)
            if self._takeover:
                self._compressor = compressor
        data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
        if data.endswith(_TAIL):
            data = data[:-4]
        return text_header(len(data), compressed=True) + data

    def inflate(self, payload: bytes, limit: int) -> bytes | None:
        """The message ``payload`` (a compressed message's joined frames) inflates to;
        None if it exceeds ``limit`` bytes. Raises ValueError on invalid deflate data."""
        try:
            out = self._decompressor.decompress(payload + _TAIL, limit + 1)
        except zlib.error as exc:
            raise ValueError(str(exc)) from None
        if len(out) > limit or self._decompressor.unconsumed_tail:
            return None
        return out
