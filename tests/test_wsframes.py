"""The shared frame parser in the server's role (masked client frames), without a socket.

The client's role is tested in tests/loadgen/test_wsprotocol.py; the server
process's answers to the same frames in tests/chat/test_rfc6455.py.
"""

from __future__ import annotations

import zlib

import pytest

from raw_ws import client_frame, close_payload
from scalechat.chat.deflate import Deflate
from scalechat.wsframes import CloseInfo, FrameParser, Opcode, encode_close, valid_close_code

TEXT, BINARY, CLOSE, PING, PONG, CONT = 0x1, 0x2, 0x8, 0x9, 0xA, 0x0

GOOD = b"".join([
    client_frame(TEXT, b"hello"),
    client_frame(TEXT, b"frag", fin=False),
    client_frame(PING, b"p"),
    client_frame(CONT, b"x" * 300, fin=True),  # 16-bit length
    client_frame(TEXT, b"y" * 70000),  # 64-bit length
    client_frame(TEXT, b"short", length_bits=64),  # longer encoding than needed: accepted
    client_frame(TEXT, b""),
    client_frame(CLOSE, close_payload(4999, b"bye")),
])
GOOD_MESSAGES = [b"hello", b"frag" + b"x" * 300, b"y" * 70000, b"short", b""]


def server_parser(**kwargs) -> FrameParser:
    return FrameParser(1 << 20, masked=True, text_only=True, **kwargs)


def feed_in_chunks(parser: FrameParser, data: bytes, size: int) -> list[bytes]:
    return [m for pos in range(0, len(data), size) for m in parser.feed(data[pos:pos + size])]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 13, 100, 65536, len(GOOD)])
def test_masked_frames_are_unmasked_into_whole_messages_whatever_the_chunking(size):
    parser = server_parser()
    assert feed_in_chunks(parser, GOOD, size) == GOOD_MESSAGES
    assert parser.control == [(Opcode.PING, b"p")]
    assert parser.close == CloseInfo(4999, "bye") and parser.error is None


BAD = [
    (client_frame(TEXT, b"hi", mask=None), 1002, "masked"),
    (client_frame(PING, b"", mask=None), 1002, "masked"),
    (client_frame(CLOSE, close_payload(1000), mask=None), 1002, "masked"),
    (client_frame(TEXT, b"", length=1 << 63, length_bits=64), 1002, "most significant bit"),
    (client_frame(TEXT, b"x", rsv=0x40), 1002, "reserved bits"),  # no extension negotiated
    (client_frame(0x3, b"x"), 1002, "unknown opcode"),
    (client_frame(PING, b"x" * 126), 1002, "control frame"),
    (client_frame(CONT, b"x"), 1002, "continuation"),
    (client_frame(CLOSE, b"\x03"), 1002, "1-byte"),
    (client_frame(BINARY, b"\x00"), 1003, "binary"),
    (client_frame(BINARY, b"\x00", fin=False), 1003, "binary"),
    (client_frame(TEXT, b"x" * 1025), 1009, "exceeds limit 1024"),
    (client_frame(TEXT, b"x", length=1 << 40, length_bits=64), 1009, "exceeds limit"),
    (client_frame(TEXT, b"x" * 600, fin=False) + client_frame(CONT, b"x" * 600), 1009, "exceeds"),
    (client_frame(CLOSE, close_payload(1000, b"\xff")), 1007, "not UTF-8"),
    *[(client_frame(CLOSE, close_payload(code)), 1002, f"close code {code}")
      for code in (0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535)],
]


@pytest.mark.parametrize("frame,code,reason", BAD, ids=[r for _, _, r in BAD])
@pytest.mark.parametrize("split", [None, 1, 2, 5])
def test_a_broken_rule_stops_the_parser_after_the_messages_before_it(frame, code, reason, split):
    before = client_frame(TEXT, b"before") + client_frame(TEXT, b"z" * 200)
    data = before + frame + client_frame(TEXT, b"after")
    parser = FrameParser(1024, masked=True, text_only=True)
    cut = len(data) if split is None else len(before) + split  # inside the bad frame's header
    messages = parser.feed(data[:cut]) + parser.feed(data[cut:])
    assert messages == [b"before", b"z" * 200]
    assert parser.error is not None and parser.error.code == code and reason in parser.error.reason
    assert parser.feed(client_frame(TEXT, b"more")) == []  # nothing is read after it


def test_a_limit_below_the_7_bit_lengths_holds_for_short_frames_too():
    parser = FrameParser(64, masked=True)
    assert parser.feed(client_frame(TEXT, b"x" * 64)) == [b"x" * 64]
    assert parser.feed(client_frame(TEXT, b"x" * 65)) == [] and parser.error.code == 1009


def test_close_codes_allowed_on_the_wire():
    allowed = {c for c in range(70000) if valid_close_code(c)}
    assert allowed == {1000, 1001, 1002, 1003, *range(1007, 1015), *range(3000, 5000)}


def test_a_close_reason_is_cut_to_the_frame_without_splitting_a_character():
    payload = encode_close(1000, "é" * 100)
    assert len(payload) <= 125 and payload[2:].decode() == "é" * 61


# --- permessage-deflate ---------------------------------------------------------------


def client_deflate(message: bytes, compressor=None) -> bytes:
    compressor = compressor or zlib.compressobj(wbits=-15)
    data = compressor.compress(message) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return data[:-4]  # without the 00 00 ff ff tail (RFC 7692 section 7.2.1)


def test_compressed_messages_inflate_across_fragments_and_with_context_takeover():
    compressor = zlib.compressobj(wbits=-15)
    first, second = b'{"text":"' + b"compressible " * 50 + b'"}', b'{"text":"compressible "}'
    one, two = client_deflate(first, compressor), client_deflate(second, compressor)
    data = (client_frame(TEXT, one, rsv=0x40)
            + client_frame(TEXT, two[:3], rsv=0x40, fin=False) + client_frame(CONT, two[3:])
            + client_frame(TEXT, b"plain"))
    parser = server_parser(inflater=Deflate())
    assert feed_in_chunks(parser, data, 5) == [first, second, b"plain"]
    assert parser.error is None


@pytest.mark.parametrize("frames,code", [
    ([client_frame(TEXT, client_deflate(b"x" * 2000), rsv=0x40)], 1009),  # a zip bomb, small
    ([client_frame(TEXT, b"\xff\xff\xff", rsv=0x40)], 1007),
    ([client_frame(TEXT, b"a", fin=False), client_frame(CONT, b"b", rsv=0x40)], 1002),
    ([client_frame(PING, b"", rsv=0x40)], 1002),
    ([client_frame(TEXT, b"a", rsv=0x20)], 1002),
])
def test_compressed_messages_that_break_a_rule(frames, code):
    parser = FrameParser(1024, masked=True, text_only=True, inflater=Deflate())
    parser.feed(b"".join(frames))
    assert parser.error is not None and parser.error.code == code


def test_an_unmasked_frame_fails_at_its_first_two_bytes():
    parser = FrameParser(1024, masked=True)
    assert parser.feed(client_frame(PING, b"", mask=None)) == []  # 2 bytes, nothing after
    assert parser.error is not None and parser.error.code == 1002
