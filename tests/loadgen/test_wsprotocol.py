"""The sans-I/O side of the lean client (services/loadgen/scalechat/loadgen/wsprotocol.py): no sockets, no event loop."""

from __future__ import annotations

import struct

import pytest
from ws_frames import FRAGMENTED_MESSAGES, FRAGMENTED_STREAM, server_frame, unmask_client_frame

from scalechat.loadgen.wsprotocol import CloseCode, CloseInfo, FrameParser, Opcode, encode_frame, xor_mask

def feed_all(parser: FrameParser, chunks: list[bytes]) -> list[bytes]:
    return [message for chunk in chunks for message in parser.feed(chunk)]


def test_parser_gives_each_message_once_in_order_whatever_the_split() -> None:
    stream = FRAGMENTED_STREAM
    splits = [[stream[:i], stream[i:]] for i in range(len(stream) + 1)]
    splits.append([stream[i : i + 1] for i in range(len(stream))])
    splits.append([stream[i : i + 3] for i in range(0, len(stream), 3)])
    for chunks in splits:
        parser = FrameParser()
        assert feed_all(parser, chunks) == FRAGMENTED_MESSAGES
        assert parser.control == [(Opcode.PING, b"p")]
        assert parser.close == CloseInfo(1013, "slow consumer")
        assert parser.error is None


@pytest.mark.parametrize("size", [65535, 65536, 200_000])
def test_parser_handles_16_and_64_bit_lengths_fed_byte_by_byte(size: int) -> None:
    payload = bytes(i % 251 for i in range(size))
    stream = server_frame(Opcode.TEXT, payload) + server_frame(Opcode.TEXT, b"next")
    parser = FrameParser()
    assert feed_all(parser, [stream[i : i + 1] for i in range(len(stream))]) == [payload, b"next"]
    parser = FrameParser()
    assert feed_all(parser, [stream[:5], stream[5:1000], stream[1000:]]) == [payload, b"next"]


@pytest.mark.parametrize(
    ("stream", "code"),
    [
        (server_frame(Opcode.TEXT, b"x", mask=b"abcd"), CloseCode.PROTOCOL_ERROR),
        (server_frame(Opcode.TEXT, b"x", rsv=0x40), CloseCode.PROTOCOL_ERROR),
        (server_frame(Opcode.CONTINUATION, b"x"), CloseCode.PROTOCOL_ERROR),
        (server_frame(Opcode.PING, b"x", fin=False), CloseCode.PROTOCOL_ERROR),
        (server_frame(Opcode.PING, b"x" * 126), CloseCode.PROTOCOL_ERROR),
        (server_frame(0x3, b"x"), CloseCode.PROTOCOL_ERROR),
        (server_frame(0xB, b"x"), CloseCode.PROTOCOL_ERROR),
        (server_frame(Opcode.TEXT, b"a", fin=False) + server_frame(Opcode.TEXT, b"b"), CloseCode.PROTOCOL_ERROR),
        (server_frame(Opcode.CLOSE, b"\x03"), CloseCode.PROTOCOL_ERROR),
        (server_frame(Opcode.CLOSE, struct.pack("!H", 1005)), CloseCode.PROTOCOL_ERROR),
        (server_frame(Opcode.CLOSE, struct.pack("!H", 999)), CloseCode.PROTOCOL_ERROR),
        (server_frame(Opcode.CLOSE, struct.pack("!H", 1000) + b"\xff"), CloseCode.INVALID_DATA),
        (server_frame(Opcode.TEXT, b"x" * 1001), CloseCode.MESSAGE_TOO_BIG),
        (server_frame(Opcode.TEXT, b"x" * 70_000), CloseCode.MESSAGE_TOO_BIG),
        (
            server_frame(Opcode.TEXT, b"x" * 600, fin=False) + server_frame(Opcode.CONTINUATION, b"x" * 600),
            CloseCode.MESSAGE_TOO_BIG,
        ),
    ],
)
def test_parser_reports_violations_with_their_close_code(stream: bytes, code: int) -> None:
    parser = FrameParser(max_message_size=1000)
    good = server_frame(Opcode.TEXT, b"before")
    assert parser.feed(good + stream) == [b"before"]  # what came first still counts
    assert parser.error is not None and parser.error.code == code
    assert parser.feed(server_frame(Opcode.TEXT, b"after")) == []


def test_parser_rejects_an_oversized_frame_from_its_header_alone() -> None:
    parser = FrameParser(max_message_size=1000)
    assert parser.feed(server_frame(Opcode.TEXT, b"x" * 5000)[:4]) == []
    assert parser.error is not None and parser.error.code == CloseCode.MESSAGE_TOO_BIG


def test_close_frame_without_payload_means_no_status() -> None:
    parser = FrameParser()
    parser.feed(server_frame(Opcode.CLOSE, b""))
    assert parser.close == CloseInfo(CloseCode.NO_STATUS, "")


@pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 125, 126, 65535, 65536])
def test_encode_frame_masks_with_a_fresh_key(size: int) -> None:
    payload = bytes(i % 256 for i in range(size))
    frame = encode_frame(Opcode.TEXT, payload)
    b0, masked, unmasked = unmask_client_frame(frame)
    assert (b0, masked, unmasked) == (0x81, True, payload)
    keys = {encode_frame(Opcode.TEXT, b"x")[2:6] for _ in range(20)}
    assert len(keys) > 1


@pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 150, 4097])
def test_pure_python_mask_matches_the_rfc_definition(size: int) -> None:
    key = b"\x9a\x01\xff\x37"
    payload = bytes((i * 7) % 256 for i in range(size))
    expected = bytes(b ^ key[i % 4] for i, b in enumerate(payload))  # section 5.3
    assert xor_mask(key, payload) == expected
    assert xor_mask(key, expected) == payload
