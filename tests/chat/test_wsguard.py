"""ClientFrameCheck without a socket: what it passes on, where it stops, whatever the chunking."""

from __future__ import annotations

import pytest

from raw_ws import client_frame, close_payload
from scalechat.chat.wsguard import ClientFrameCheck, valid_close_code

TEXT, CLOSE, PING, CONT = 0x1, 0x8, 0x9, 0x0

GOOD = b"".join([
    client_frame(TEXT, b"hello"),
    client_frame(TEXT, b"frag", fin=False),
    client_frame(PING, b"p"),
    client_frame(CONT, b"x" * 300, fin=True),  # 16-bit length
    client_frame(TEXT, b"y" * 70000),  # 64-bit length
    client_frame(TEXT, b"short", length_bits=64),  # longer encoding than needed: accepted
    client_frame(CLOSE, close_payload(4999, b"bye")),
])


def feed_in_chunks(data: bytes, sizes) -> tuple[bytes, object]:
    check, passed, pos = ClientFrameCheck(), b"", 0
    for size in sizes:
        out, violation = check.feed(data[pos:pos + size])
        passed += out
        pos += size
        if violation:
            return passed, violation
    out, violation = check.feed(data[pos:])
    return passed + out, violation


@pytest.mark.parametrize("size", [1, 2, 3, 7, 13, 100, 65536, len(GOOD)])
def test_valid_frames_pass_unchanged_whatever_the_chunking(size):
    passed, violation = feed_in_chunks(GOOD, [size] * (len(GOOD) // size))
    assert violation is None and passed == GOOD


def test_a_split_header_is_held_until_complete_then_passed():
    check = ClientFrameCheck()
    frame = client_frame(TEXT, b"x" * 300)
    assert check.feed(frame[:3]) == (b"", None)  # 2 of 8 header bytes, then 1 more
    assert check.feed(frame[3:]) == (frame, None)


BAD = [
    (client_frame(TEXT, b"hi", mask=None), "masked"),
    (client_frame(PING, b"", mask=None), "masked"),
    (client_frame(CLOSE, close_payload(1000), mask=None), "masked"),
    (client_frame(TEXT, b"", length=1 << 63, length_bits=64), "most significant bit"),
    *[(client_frame(CLOSE, close_payload(code)), f"close code {code}")
      for code in (0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535)],
]


@pytest.mark.parametrize("frame,reason", BAD, ids=[r for _, r in BAD])
@pytest.mark.parametrize("split", [None, 1, 2, 5])
def test_a_violation_passes_exactly_the_frames_before_it(frame, reason, split):
    before = client_frame(TEXT, b"before") + client_frame(TEXT, b"z" * 200)
    after = client_frame(TEXT, b"after")
    data = before + frame + after
    sizes = [] if split is None else [len(before) + split]  # cut inside the bad frame's header
    passed, violation = feed_in_chunks(data, sizes)
    assert passed == before
    assert violation.code == 1002 and reason in violation.reason
    check = ClientFrameCheck()
    check.feed(data)
    assert check.feed(after) == (b"", check.violation)  # nothing passes after a violation


def test_close_frames_without_a_code_or_with_a_1_byte_payload_are_left_to_the_reader():
    # An empty close is valid; a 1-byte one aiohttp's reader fails with 1002 itself.
    for payload in (b"", b"\x03"):
        frame = client_frame(CLOSE, payload)
        assert ClientFrameCheck().feed(frame) == (frame, None)


def test_close_codes_allowed_on_the_wire():
    allowed = {c for c in range(70000) if valid_close_code(c)}
    assert allowed == {1000, 1001, 1002, 1003, *range(1007, 1015), *range(3000, 5000)}
