"""Server frames: built once per broadcast, read back by an independent RFC 6455 parser."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from scalechat.chat.framing import frame_text, payload_of, text_header
from scalechat.loadgen.wsprotocol import FrameParser


@given(st.binary(max_size=70_000))
def test_a_frame_is_read_back_whole_by_the_load_generators_parser(payload):
    frame = frame_text(payload)
    assert FrameParser(1 << 20).feed(frame) == [payload]
    assert payload_of(frame) == payload
    assert frame == text_header(len(payload)) + payload


def test_the_length_takes_the_shortest_form_rfc_6455_allows():
    assert text_header(125) == bytes((0x81, 125))
    assert text_header(126) == bytes((0x81, 126)) + struct.pack("!H", 126)
    assert text_header(65535) == bytes((0x81, 126)) + struct.pack("!H", 65535)
    assert text_header(65536) == bytes((0x81, 127)) + struct.pack("!Q", 65536)
