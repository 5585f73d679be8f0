"""The sans-I/O protocol core: no socket, no event loop."""

import sys

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scalechat.chat.errors import ProtocolError
from scalechat.chat.framing import frame_text
from scalechat.chat.protocol import (ErrorCode, encode_error, encode_history, encode_message,
                                     extract_cid, parse_client_frame, parse_since, validate_name,
                                     validate_room)


@pytest.mark.parametrize("room", ["a", "lobby", "Room_1.x-y", "9" * 64])
def test_valid_rooms(room):
    assert validate_room(room) == room


@pytest.mark.parametrize("room", ["", "-a", "_a", ".a", "a b", "a/b", "ä", "a" * 65, "a?b"])
def test_invalid_rooms(room):
    with pytest.raises(ValueError, match="room must match"):
        validate_room(room)


@pytest.mark.parametrize("name", ["x", "Alice", "x" * 32, "José Ñ", "a b"])
def test_valid_names(name):
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", "x" * 33, "tab\there", "nl\n", " lead", "trail "])
def test_invalid_names(name):
    with pytest.raises(ValueError, match="name must be"):
        validate_name(name)


def test_since_parsing():
    assert parse_since(None) is None and parse_since("") is None
    assert parse_since("0") == 0 and parse_since("42") == 42
    for bad in ("-1", "x", "1.5"):
        with pytest.raises(ValueError, match="since"):
            parse_since(bad)


def test_parse_message():
    request = parse_client_frame('{"type":"message","text":"hi","cid":"c1"}', 100)
    assert (request.text, request.cid) == ("hi", "c1")
    assert parse_client_frame('{"type":"message","text":"hi"}', 100).cid is None


@pytest.mark.parametrize("frame,code", [
    ("not json", ErrorCode.BAD_JSON),
    ("[1,2]", ErrorCode.BAD_FRAME),
    ('{"type":"shout","text":"x"}', ErrorCode.UNKNOWN_TYPE),
    ('{"text":"x"}', ErrorCode.UNKNOWN_TYPE),
    ('{"type":"message"}', ErrorCode.BAD_FRAME),
    ('{"type":"message","text":5}', ErrorCode.BAD_FRAME),
    ('{"type":"message","text":"   "}', ErrorCode.EMPTY_TEXT),
    ('{"type":"message","text":""}', ErrorCode.EMPTY_TEXT),
    ('{"type":"message","text":"%s"}' % ("x" * 101), ErrorCode.TEXT_TOO_LONG),
    ('{"type":"message","text":"x","cid":7}', ErrorCode.BAD_FRAME),
])
def test_rejected_frames_carry_a_code(frame, code):
    with pytest.raises(ProtocolError) as info:
        parse_client_frame(frame, 100)
    assert info.value.code is code and info.value.reason


def test_encoded_message_fields():
    frame = orjson.loads(encode_message("r", 7, "ep", "bob", "<b>x</b>", 123, "c"))
    assert frame == {"type": "message", "room": "r", "seq": 7, "id": "ep-7", "from": "bob",
                     "text": "<b>x</b>", "ts": 123, "cid": "c"}


@given(room=st.text(), seq=st.integers(0, 2**53), epoch=st.text(), sender=st.text(),
       text=st.text(), ts=st.integers(0, 2**53), cid=st.none() | st.text())
def test_encoded_message_is_orjsons_encoding_of_the_frame(room, seq, epoch, sender, text, ts, cid):
    # Byte for byte what the Redis broker's Lua script writes (redis_scripts.py), in a
    # buffer of its own size.
    payload = encode_message(room, seq, epoch, sender, text, ts, cid)
    assert payload == orjson.dumps({"type": "message", "room": room, "seq": seq,
                                    "id": f"{epoch}-{seq}", "from": sender, "text": text,
                                    "ts": ts, "cid": cid})
    assert sys.getsizeof(payload) - len(payload) < 64  # no spare buffer kept in a history


def test_history_embeds_encoded_messages_verbatim():
    messages = [encode_message("r", s, "ep", "a", f"m{s}", 1, None) for s in (1, 2)]
    frame = orjson.loads(encode_history("r", "ep", 2, "me", "node1", False, messages))
    assert frame["type"] == "history" and frame["epoch"] == "ep" and frame["name"] == "me"
    assert frame["last_seq"] == 2
    assert [m["seq"] for m in frame["messages"]] == [1, 2]
    assert orjson.loads(encode_history("r", "ep", 0, "me", "n", True, []))["messages"] == []


def test_error_frame_and_cid_extraction():
    assert orjson.loads(encode_error(ErrorCode.RATE_LIMITED, "slow down", "c9")) == {
        "type": "error", "code": "rate_limited", "reason": "slow down", "cid": "c9"}
    assert extract_cid('{"cid":"c1","type":"x"}') == "c1"
    assert extract_cid("nope") is None and extract_cid("[]") is None


@pytest.mark.parametrize("size,header", [(0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10)])
def test_frame_header_lengths(size, header):
    payload = b"x" * size
    frame = frame_text(payload)
    assert frame[0] == 0x81 and len(frame) == header + size and frame.endswith(payload)
    assert frame[1] & 0x80 == 0  # server frames are never masked
