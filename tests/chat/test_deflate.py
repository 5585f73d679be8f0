"""permessage-deflate's sending side: frames any RFC 7692 decompressor inflates."""

from __future__ import annotations

import zlib

import pytest

from scalechat.chat.deflate import Deflate


@pytest.mark.parametrize("takeover", [True, False])
def test_deflate_frames_inflate_with_a_standard_decompressor(takeover):
    deflate, inflater = Deflate(window_bits=10, takeover=takeover), zlib.decompressobj(wbits=-15)
    for text in (b"hello " * 100, b"hello " * 100, b"x"):
        frame = deflate.frame(text)
        assert frame[0] == 0xC1  # FIN, RSV1, text
        header = 2 if frame[1] < 126 else 4
        assert inflater.decompress(frame[header:] + b"\x00\x00\xff\xff") == text


def test_a_window_outside_zlibs_range_is_refused():
    with pytest.raises(ValueError, match="window_bits"):
        Deflate(window_bits=8)
