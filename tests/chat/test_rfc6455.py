"""RFC 6455 conformance of the real server process, one hand-built frame at a time.

Each case upgrades a raw socket, writes frames no well-behaved client would,
then a valid close (1000), and reads what the server sends until it closes
the TCP connection: a protocol error must come back as the matching close
code (1002, or 1007 for text that is not UTF-8), valid traffic as echoes, a
pong, and a normal close. The server reads frames with scalechat's own parser
(scalechat.wsframes, unit-tested in tests/test_wsframes.py); these cases hold
the whole process to the RFC.
"""

from __future__ import annotations

import itertools
import os
import subprocess

import pytest

from raw_ws import RawWebSocket, client_frame, close_payload, message
from support import SCALECHAT, ServerProcess, free_port, healthy, wait_until

TEXT, BINARY, CLOSE, PING, PONG, CONT = 0x1, 0x2, 0x8, 0x9, 0xA, 0x0
MAX_MESSAGE_BYTES = 131072
_rooms = itertools.count()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCALECHAT_")}
    port, metrics_port = free_port(), free_port()
    log_path = tmp_path_factory.mktemp("rfc6455") / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [*SCALECHAT, "serve", "--port", str(port), "--metrics-port", str(metrics_port),
             "--max-message-bytes", str(MAX_MESSAGE_BYTES), "--rate-burst", "1000"],
            stdout=log, stderr=subprocess.STDOUT, env=env)
    server = ServerProcess(port, metrics_port, proc, log_path)
    try:
        wait_until(lambda: proc.poll() is None and healthy(server.http_url), 15, "the server")
        yield server
    finally:
        server.stop()
    assert "Traceback" not in server.log()


async def connect(server, pipelined: bytes = b"") -> RawWebSocket:
    return await RawWebSocket.open(server.port, f"/ws/rfc{next(_rooms)}", pipelined=pipelined)


async def exchange(server, *chunks: bytes, pipelined: bytes = b"", echoes: int = 0):
    """Upgrade, write each chunk, await ``echoes`` messages, close with 1000; return what came."""
    ws = await connect(server, pipelined)
    await ws.send(*chunks)
    await ws.messages(echoes)
    await ws.send(client_frame(CLOSE, close_payload(1000)))
    return await ws.outcome()


async def after_a_message(server, *chunks: bytes):
    """Exchange one valid message first, then write each chunk, one more message and a close.

    What follows a frame that fails the connection must not be read: only the
    first message comes back.
    """
    ws = await connect(server)
    await ws.send(text("before", "b"))
    assert await ws.messages(1) == ["before"]
    await ws.send(*chunks, text("after", "a"), client_frame(CLOSE, close_payload(1000)))
    out = await ws.outcome()
    assert out.texts() == ["before"]
    return out


def text(body: str, cid: str = "c", **kwargs) -> bytes:
    return client_frame(TEXT, message(body, cid), **kwargs)


# --- valid traffic ---------------------------------------------------------------------


async def test_a_masked_text_frame_is_echoed_and_the_close_answered_with_1000(server):
    out = await exchange(server, text("hello"), echoes=1)
    assert out.texts() == ["hello"] and out.code == 1000


@pytest.mark.parametrize("bits", [7, 16, 64])
async def test_each_length_encoding_of_the_same_frame_is_read(server, bits):
    # The minimal encoding, and longer ones than needed (accepted, as by aiohttp and websockets).
    out = await exchange(server, text("x" * 20, length_bits=bits), echoes=1)
    assert out.texts() == ["x" * 20] and out.code == 1000


@pytest.mark.parametrize("size", [125, 126, 65535, 65536, 100_000])
async def test_payloads_at_the_length_encoding_boundaries(server, size):
    # 125: the last 7-bit length; 126 and 65535: 16-bit; 65536 and up: 64-bit. The
    # text is padded with spaces inside the JSON to exactly `size` bytes; past 4,000
    # characters the server answers text_too_long, which shows the frame was read.
    body = message("t", "c")
    payload = body[:-1] + b" " * (size - len(body)) + b"}"
    out = await exchange(server, client_frame(TEXT, payload), echoes=1)
    assert out.texts() == ["t"] and out.code == 1000


async def test_a_fragmented_message_with_a_ping_between_fragments(server):
    payload = message("fragmented", "f")
    out = await exchange(server,
                         client_frame(TEXT, payload[:5], fin=False),
                         client_frame(PING, b"ping!"),  # control frames may interleave (5.4)
                         client_frame(CONT, payload[5:12], fin=False),
                         client_frame(CONT, payload[12:]), echoes=1)
    assert out.texts() == ["fragmented"] and out.pongs == [b"ping!"] and out.code == 1000


async def test_utf8_split_inside_a_character_across_fragments(server):
    payload = message("h\u00e9\u20ac\U0001f600", "u")  # 2-, 3- and 4-byte characters
    cut = payload.index("\u20ac".encode()) + 1
    out = await exchange(server, client_frame(TEXT, payload[:cut], fin=False),
                         client_frame(CONT, payload[cut:]), echoes=1)
    assert out.texts() == ["h\u00e9\u20ac\U0001f600"] and out.code == 1000


async def test_frames_pipelined_with_the_upgrade_request_are_read(server):
    out = await exchange(server, pipelined=text("early"), echoes=1)
    assert out.texts() == ["early"] and out.code == 1000


async def test_a_frame_written_one_byte_at_a_time(server):
    frame = text("slow")
    out = await exchange(server, *(frame[i:i + 1] for i in range(len(frame))), echoes=1)
    assert out.texts() == ["slow"] and out.code == 1000


async def test_unsolicited_pong_and_empty_ping_are_fine(server):
    out = await exchange(server, client_frame(PONG, b"unsolicited"), client_frame(PING), text("ok"),
                         echoes=1)
    assert out.pongs == [b""] and out.texts() == ["ok"] and out.code == 1000


@pytest.mark.parametrize("code", [1000, 1001, 1003, 1007, 1011, 1014, 3000, 4000, 4999])
async def test_a_close_with_an_allowed_code_is_answered_normally(server, code):
    ws = await connect(server)
    await ws.send(client_frame(CLOSE, close_payload(code, b"bye")))
    assert (await ws.outcome()).code == 1000


async def test_a_close_without_a_code_is_answered_normally(server):
    ws = await connect(server)
    await ws.send(client_frame(CLOSE))
    assert (await ws.outcome()).code == 1000


# --- protocol errors: 1002 -------------------------------------------------------------


PROTOCOL_ERRORS = {
    "unmasked text": client_frame(TEXT, message("x", "u"), mask=None),
    "unmasked ping": client_frame(PING, b"p", mask=None),
    "unmasked close": client_frame(CLOSE, close_payload(1000), mask=None),
    "RSV1 without an extension": text("r", rsv=0x40),
    "RSV2": text("r", rsv=0x20),
    "RSV3": text("r", rsv=0x10),
    **{f"reserved opcode {op:#x}": client_frame(op, b"") for op in (3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF)},
    "fragmented ping": client_frame(PING, b"p", fin=False),
    "fragmented close": client_frame(CLOSE, close_payload(1000), fin=False),
    "ping of 126 bytes": client_frame(PING, b"p" * 126),
    "close of 126 bytes": client_frame(CLOSE, close_payload(1000, b"r" * 124)),
    "continuation without a message": client_frame(CONT, b"orphan"),
    "new message inside a fragmented one": client_frame(TEXT, b'{"type":', fin=False) + text("x"),
    "64-bit length with its top bit set": client_frame(TEXT, b"", length=1 << 63, length_bits=64),
    "close with a 1-byte payload": client_frame(CLOSE, b"\x03"),
    **{f"close code {code}": client_frame(CLOSE, close_payload(code))
       for code in (0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535)},
}


@pytest.mark.parametrize("frame", PROTOCOL_ERRORS.values(), ids=PROTOCOL_ERRORS.keys())
async def test_protocol_errors_close_with_1002(server, frame):
    assert (await after_a_message(server, frame)).code == 1002


async def test_an_unmasked_frame_pipelined_with_the_upgrade_request(server):
    out = await exchange(server, pipelined=client_frame(TEXT, message("x", "u"), mask=None))
    assert out.texts() == [] and out.code == 1002


async def test_an_unmasked_header_split_across_writes(server):
    frame = client_frame(TEXT, message("x", "u"), mask=None)
    assert (await after_a_message(server, frame[:1], frame[1:])).code == 1002


async def test_protocol_errors_are_counted(server):
    before = server.metric("scalechat_messages_rejected_total", 'reason="protocol_error"')
    await exchange(server, client_frame(TEXT, message("x", "u"), mask=None))
    wait_until(lambda: server.metric("scalechat_messages_rejected_total",
                                     'reason="protocol_error"') == before + 1, 5, "the count")


# --- text that is not UTF-8: 1007 ------------------------------------------------------


INVALID_TEXT = {
    "in one frame": [client_frame(TEXT, b'{"type":"message","text":"\xff"}')],
    "in the second fragment": [client_frame(TEXT, b'{"type":"message",', fin=False),
                               client_frame(CONT, b'"text":"\xc3\x28"}')],
    "a character cut off by the end of the message": [
        client_frame(TEXT, b'{"type":"message","text":"\xe2\x82', fin=False),
        client_frame(CONT, b"")],
    "an overlong encoding": [client_frame(TEXT, b'{"type":"message","text":"\xc0\xaf"}')],
    "a UTF-16 surrogate": [client_frame(TEXT, b'{"type":"message","text":"\xed\xa0\x80"}')],
    "in a close reason": [client_frame(CLOSE, close_payload(1000, b"\xff"))],
}


@pytest.mark.parametrize("frames", INVALID_TEXT.values(), ids=INVALID_TEXT.keys())
async def test_invalid_utf8_closes_with_1007(server, frames):
    assert (await after_a_message(server, *frames)).code == 1007


# --- other data ------------------------------------------------------------------------


async def test_binary_closes_with_1003_and_too_big_with_1009(server):
    assert (await exchange(server, client_frame(BINARY, b"\x00"))).code == 1003
    big = client_frame(TEXT, b"x" * (MAX_MESSAGE_BYTES + 1))  # max_message_bytes is accepted
    assert (await exchange(server, big)).code == 1009
    fragments = [client_frame(TEXT, b"x" * 70000, fin=False), client_frame(CONT, b"x" * 70000)]
    assert (await exchange(server, *fragments)).code == 1009
