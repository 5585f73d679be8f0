"""Tests for the lean WebSocket client.

The parser tests need no socket; the rest talk to a real aiohttp server, or to
a raw asyncio server that writes hand-made frames aiohttp cannot produce.
Everything binds 127.0.0.1 and every wait is bounded.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import uvloop
from aiohttp import WSMsgType, web
from support import aiohttp_ws_server
from ws_frames import DATA_AND_PING, FRAGMENTED_MESSAGES, server_frame

from scalechat.loadgen.wsclient import (
    CloseCode,
    CloseInfo,
    ConnectionClosed,
    HandshakeError,
    Opcode,
    ProtocolError,
    connect,
)

pytestmark = pytest.mark.timeout(20)
WAIT = 5.0  # upper bound for any single wait in these tests


# --------------------------------------------------------------------------- helpers


async def read_client_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Read one masked client frame; returns (first byte, unmasked payload)."""
    head = await reader.readexactly(2)
    assert head[1] & 0x80, "client frames must be masked (RFC 6455 section 5.3)"
    length = head[1] & 0x7F
    if length == 126:
        length = struct.unpack("!H", await reader.readexactly(2))[0]
    elif length == 127:
        length = struct.unpack("!Q", await reader.readexactly(8))[0]
    key = await reader.readexactly(4)
    payload = await reader.readexactly(length)
    return head[0], bytes(b ^ key[i % 4] for i, b in enumerate(payload))


Scenario = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def tcp_server(scenario: Scenario) -> AsyncIterator[int]:
    """Run ``scenario`` per connection on 127.0.0.1; yields the port.

    On exit, waits (bounded) for the scenarios to end, then closes every socket.
    """
    tasks: set[asyncio.Task[None]] = set()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tasks.add(asyncio.current_task())  # type: ignore[arg-type]
        try:
            await scenario(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        if tasks:
            await asyncio.wait(tasks, timeout=WAIT)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


@contextlib.asynccontextmanager
async def raw_ws_server(scenario: Scenario) -> AsyncIterator[str]:
    """A server that completes the handshake by hand, then runs ``scenario``."""

    async def handshake_then_scenario(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        key = next(
            line.split(b":", 1)[1].strip()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        await scenario(reader, writer)

    async with tcp_server(handshake_then_scenario) as port:
        yield f"ws://127.0.0.1:{port}/"


# --------------------------------------------------------------------------- against aiohttp


async def echo(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(max_msg_size=2 * 2**20)
    await ws.prepare(request)
    async for msg in ws:
        await ws.send_str(msg.data)
    return ws


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 2**20])
async def test_echo_round_trip(size: int) -> None:
    text = "".join(chr(ord("a") + i % 26) for i in range(size))
    async with aiohttp_ws_server(echo) as url:
        async with asyncio.timeout(WAIT):
            client = await connect(url + "?room=1")
            client.send_text(text)
            assert await client.recv() == text.encode()
            client.send_text(text.encode())
            assert await client.recv() == text.encode()
            assert await client.close() == CloseInfo(1000, "")


def test_works_under_uvloop() -> None:
    async def scenario() -> tuple[bytes, CloseInfo]:
        async with aiohttp_ws_server(echo) as url, asyncio.timeout(WAIT):
            client = await connect(url)
            client.send_text("héllo")
            return await client.recv(), await client.close()

    assert uvloop.run(scenario()) == (b"h\xc3\xa9llo", CloseInfo(1000, ""))


@pytest.mark.parametrize("batch", [True, False])
async def test_callbacks_get_every_message_once_in_order(batch: bool) -> None:
    count = 2000

    async def burst(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        for i in range(count):
            await ws.send_str(f'{{"seq":{i}}}')
        await ws.close(code=1001, message=b"done")
        return ws

    received: list[bytes] = []
    async with aiohttp_ws_server(burst) as url, asyncio.timeout(WAIT):
        if batch:
            client = await connect(url, on_messages=received.extend)
        else:
            client = await connect(url, on_message=received.append)
        assert await client.closed == CloseInfo(1001, "done")
    assert received == [f'{{"seq":{i}}}'.encode() for i in range(count)]


async def test_ping_is_answered_with_a_pong_carrying_its_payload() -> None:
    pong: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def pinger(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        await ws.ping(b"are you there")
        msg = await ws.receive()
        pong.set_result(msg.data if msg.type is WSMsgType.PONG else msg.type)
        await ws.close()
        return ws

    async with aiohttp_ws_server(pinger) as url, asyncio.timeout(WAIT):
        client = await connect(url)
        assert await pong == b"are you there"
        await client.closed


async def test_heartbeat_keeps_an_idle_connection_open() -> None:
    heartbeat = 0.2  # aiohttp drops the connection if a pong is late by heartbeat / 2

    async def idle(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=heartbeat)
        await ws.prepare(request)
        await asyncio.sleep(heartbeat * 4)  # several ping rounds with no data
        await ws.send_str("still here")
        await ws.receive()
        return ws

    async with aiohttp_ws_server(idle) as url, asyncio.timeout(WAIT):
        client = await connect(url)
        assert await client.recv() == b"still here"
        assert await client.close() == CloseInfo(1000, "")


@pytest.mark.parametrize(
    ("code", "reason"), [(1013, "slow consumer"), (1009, "too big"), (1008, "policy"), (1001, "going away")]
)
async def test_server_close_code_and_reason_reach_closed(code: int, reason: str) -> None:
    async def closer(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str("last words")
        await ws.close(code=code, message=reason.encode())
        return ws

    async with aiohttp_ws_server(closer) as url, asyncio.timeout(WAIT):
        client = await connect(url)
        assert await client.closed == CloseInfo(code, reason)
        assert await client.recv() == b"last words"
        with pytest.raises(ConnectionClosed) as raised:
            await client.recv()
        assert (raised.value.code, raised.value.reason) == (code, reason)
        with pytest.raises(ConnectionClosed):
            client.send_text("too late")


async def test_client_close_sends_the_server_1000() -> None:
    seen: asyncio.Future[tuple[WSMsgType, object, int | None]] = asyncio.get_running_loop().create_future()

    async def watcher(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        msg = await ws.receive()
        seen.set_result((msg.type, msg.data, ws.close_code))
        return ws

    async with aiohttp_ws_server(watcher) as url, asyncio.timeout(WAIT):
        client = await connect(url)
        assert await client.close() == CloseInfo(1000, "")
        assert await seen == (WSMsgType.CLOSE, 1000, 1000)


async def test_oversized_message_fails_the_connection_with_1009() -> None:
    seen: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()

    async def big(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str("x" * 2000)
        await ws.receive()
        seen.set_result(ws.close_code)
        return ws

    async with aiohttp_ws_server(big) as url, asyncio.timeout(WAIT):
        client = await connect(url, max_message_size=1000)
        code, _ = await client.closed
        assert code == CloseCode.MESSAGE_TOO_BIG
        assert await seen == CloseCode.MESSAGE_TOO_BIG


async def test_handshake_rejection_carries_status_and_body() -> None:
    async def guarded(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Origin") != "http://chat.example":
            return web.Response(status=403, text="origin not allowed")
        return await echo(request)

    async with aiohttp_ws_server(guarded) as url, asyncio.timeout(WAIT):
        with pytest.raises(HandshakeError) as raised:
            await connect(url)
        assert (raised.value.status, raised.value.body) == (403, "origin not allowed")
        client = await connect(url, headers={"Origin": "http://chat.example"})
        client.send_text("ok")
        assert await client.recv() == b"ok"
        await client.close()


async def test_chunked_rejection_body_is_decoded() -> None:
    async def busy(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=503)
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(b"server ")
        await response.write(b"full")
        await response.write_eof()
        return response

    async with aiohttp_ws_server(busy) as url, asyncio.timeout(WAIT):
        with pytest.raises(HandshakeError) as raised:
            await connect(url)
        assert (raised.value.status, raised.value.body) == (503, "server full")


async def test_both_callbacks_at_once_is_refused() -> None:
    with pytest.raises(ValueError, match="not both"):
        await connect("ws://127.0.0.1:1/", on_message=print, on_messages=print)


async def test_wss_is_refused_naming_the_url() -> None:
    with pytest.raises(ValueError, match="wss://127.0.0.1:1/x"):
        await connect("wss://127.0.0.1:1/x")


async def test_connection_refused_is_an_oserror() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(OSError):
        await connect(f"ws://127.0.0.1:{port}/", timeout=WAIT)


async def test_silent_server_times_out() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    async with tcp_server(silent) as port:
        with pytest.raises(TimeoutError):
            await connect(f"ws://127.0.0.1:{port}/", timeout=0.2)


async def test_wrong_accept_key_is_a_protocol_error() -> None:
    async def liar(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: bm90IHRoZSByaWdodCBrZXk=\r\n\r\n"
        )
        await reader.read()

    async with tcp_server(liar) as port, asyncio.timeout(WAIT):
        with pytest.raises(ProtocolError, match="Accept"):
            await connect(f"ws://127.0.0.1:{port}/")


# --------------------------------------------------------------------------- against raw frames


async def test_fragmented_message_and_ping_over_the_wire() -> None:
    pong: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()

    async def scenario(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(DATA_AND_PING)
        pong.set_result(await read_client_frame(reader))
        opcode, payload = await read_client_frame(reader)  # the client's close
        writer.write(server_frame(opcode & 0x0F, payload))

    async with raw_ws_server(scenario) as url, asyncio.timeout(WAIT):
        client = await connect(url)
        assert [await client.recv() for _ in FRAGMENTED_MESSAGES] == FRAGMENTED_MESSAGES
        assert await pong == (0x80 | Opcode.PONG, b"p")
        assert await client.close(4000, "done") == CloseInfo(4000, "done")


async def test_masked_server_frame_fails_the_connection_with_1002() -> None:
    close_frame: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()

    async def scenario(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(server_frame(Opcode.TEXT, b"sneaky", mask=b"\x01\x02\x03\x04"))
        close_frame.set_result(await read_client_frame(reader))
        await reader.read()

    async with raw_ws_server(scenario) as url, asyncio.timeout(WAIT):
        client = await connect(url)
        b0, payload = await close_frame
        assert b0 == 0x80 | Opcode.CLOSE
        assert int.from_bytes(payload[:2], "big") == CloseCode.PROTOCOL_ERROR
        assert (await client.closed).code == CloseCode.PROTOCOL_ERROR


async def test_server_close_is_echoed_and_the_server_closes_tcp_first() -> None:
    echoed: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()

    async def scenario(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(server_frame(Opcode.CLOSE, struct.pack("!H", 1013) + b"slow consumer"))
        echoed.set_result(await read_client_frame(reader))
        # returning closes TCP from the server side

    async with raw_ws_server(scenario) as url, asyncio.timeout(WAIT):
        client = await connect(url)
        assert await echoed == (0x80 | Opcode.CLOSE, struct.pack("!H", 1013))
        assert await client.closed == CloseInfo(1013, "slow consumer")


async def test_silent_peer_is_aborted_after_close_timeout() -> None:
    async def scenario(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers the close frame

    async with raw_ws_server(scenario) as url, asyncio.timeout(WAIT):
        client = await connect(url, close_timeout=0.1)
        assert (await client.close()).code == CloseCode.ABNORMAL


async def test_drop_without_close_frame_gives_1006() -> None:
    async def scenario(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(server_frame(Opcode.TEXT, b"bye"))

    async with raw_ws_server(scenario) as url, asyncio.timeout(WAIT):
        client = await connect(url)
        assert (await client.closed).code == CloseCode.ABNORMAL
        assert await client.recv() == b"bye"
        with pytest.raises(ConnectionClosed):
            await client.recv()
