"""The socket after the upgrade, with a real Node and memory broker and a recording transport.

What the transport sees (writes, pauses, closes) for bytes handed to the
protocol callbacks, as uvloop would hand them; the same paths over real
sockets are in test_rfc6455.py and test_server.py.
"""

from __future__ import annotations

import asyncio

import orjson

from raw_ws import client_frame, close_payload, message
from scalechat.chat.broker import create_broker
from scalechat.chat.client_socket import ClientSocket, Heartbeat
from scalechat.chat.counters import HotCounters
from scalechat.chat.hub import Hub
from scalechat.chat.metrics import Metrics
from scalechat.chat.node import Node
from scalechat.chat.outbox import Outbox
from scalechat.chat.protocol import CloseCode
from scalechat.chat.ratelimit import TokenBucket
from scalechat.chat.settings import Settings
from scalechat.wsframes import FrameParser

TEXT, CLOSE, PING = 0x1, 0x8, 0x9


class RecordingTransport:
    """The calls a ClientSocket makes on its transport; ``unread`` bytes stay buffered."""

    def __init__(self) -> None:
        self.data = b""
        self.reading = True
        self.closed = self.aborted = False
        self.unread = 0
        self.protocol: ClientSocket | None = None

    def write(self, data: bytes) -> None:
        self.data += data

    def writelines(self, parts) -> None:
        self.data += b"".join(parts)

    def get_write_buffer_size(self) -> int:
        return self.unread

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def close(self) -> None:
        self.closed = True
        if not self.unread:  # flushed: the socket is gone
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        if not self.aborted:
            self.aborted = True
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def frames(self) -> tuple[list[dict], list[tuple[int, bytes]], object]:
        """The server's messages (decoded), control frames, and close frame."""
        parser = FrameParser()
        messages = [orjson.loads(m) for m in parser.feed(self.data)]
        return messages, parser.control, parser.close


async def session(settings: Settings, heartbeat: Heartbeat | None = None):
    loop = asyncio.get_running_loop()
    hub = Hub(loop, HotCounters())
    node = Node(settings, create_broker(settings), Metrics(lambda: 0, lambda: 0, {}), hub)
    await node.start()
    sock = ClientSocket(node, heartbeat, settings.max_message_bytes)
    now = loop.time()
    sock.conn = conn = Outbox(sock, "r", "n", 1 << 20, TokenBucket(1000, 1000, now),
                                  hub.schedule_flush, node.condemn_slow,
                                  TokenBucket(settings.rate_limit_bytes,
                                              settings.rate_limit_bytes, now))
    transport = RecordingTransport()
    transport.protocol = sock
    sock.connection_made(transport)
    return node, sock, conn, transport


def texts(transport: RecordingTransport) -> list[str]:
    return [m["text"] for m in transport.frames()[0] if m["type"] == "message"]


async def test_messages_read_during_the_join_are_handled_after_it_in_order():
    node, sock, conn, transport = await session(Settings(metrics_port=0))
    assert not transport.reading  # nothing is read until the join is complete
    sock.data_received(b"".join(client_frame(TEXT, message(f"m{i}", str(i))) for i in range(3)))
    await node.join(conn, None, None)
    assert texts(transport) == []
    assert sock.start() and transport.reading
    await asyncio.sleep(0.01)
    assert texts(transport) == ["m0", "m1", "m2"]
    await node.close(0.1)


async def test_a_client_over_its_bytes_per_second_is_read_later_and_loses_nothing():
    frame = client_frame(TEXT, message("x" * 400, "c"))
    node, sock, conn, transport = await session(Settings(metrics_port=0, rate_limit_bytes=2000))
    await node.join(conn, None, None)
    sock.start()
    sock.data_received(frame * 10)  # about 4,300 bytes against a budget of 2,000 a second
    await asyncio.sleep(0.01)
    handled = len(texts(transport))
    assert 0 < handled < 10 and not transport.reading  # the rest wait, reading paused
    deadline = asyncio.get_running_loop().time() + 5
    while len(texts(transport)) < 10 and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    assert len(texts(transport)) == 10 and transport.reading
    assert node.metrics.throttled._value.get() >= 1
    await node.close(0.1)


async def test_a_peer_close_is_answered_with_1000_and_the_room_left_once():
    node, sock, conn, transport = await session(Settings(metrics_port=0))
    await node.join(conn, None, None)
    sock.start()
    sock.data_received(client_frame(TEXT, message("bye", "b")) + client_frame(CLOSE, close_payload(1001)))
    await asyncio.sleep(0.01)
    _, _, close = transport.frames()
    assert close.code == 1000 and transport.closed
    assert texts(transport) == []  # the peer closed first: what was still queued is not sent
    assert node.hub.connection_count == 0
    await node.close(0.1)


async def test_a_peer_that_answers_no_close_is_closed_then_aborted_within_twice_the_timeout():
    node, sock, conn, transport = await session(Settings(metrics_port=0))
    await node.join(conn, None, None)
    sock.start()
    transport.unread = 1000  # it reads nothing: our close frame stays buffered
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await conn.close(1013, "slow consumer", 0.05) is True  # aborted with bytes unread
    assert transport.closed and transport.aborted and loop.time() - started < 1
    assert transport.frames()[2].code == 1013
    await node.close(0.1)


async def test_an_idle_socket_is_pinged_and_a_silent_one_dropped():
    heartbeat = Heartbeat(asyncio.get_running_loop(), 0.1)
    node, sock, conn, transport = await session(Settings(metrics_port=0), heartbeat)
    await node.join(conn, None, None)
    sock.start()
    await asyncio.sleep(0.13)
    sock.data_received(client_frame(0xA))  # a pong: alive
    await asyncio.sleep(0.12)
    assert not transport.aborted
    await asyncio.sleep(0.3)
    pings = [c for c in transport.frames()[1] if c[0] == PING]
    assert pings and transport.aborted
    heartbeat.stop()
    await node.close(0.1)


async def test_a_failed_join_handles_nothing_read_and_reads_on_for_the_close_handshake():
    node, sock, conn, transport = await session(Settings(metrics_port=0))
    sock.data_received(client_frame(TEXT, message("early", "e")))  # read during the join
    node.close_soon(conn, CloseCode.TRY_AGAIN_LATER, "broker unavailable, retry")
    sock.abandon()
    assert transport.reading  # for the peer's close frame
    await asyncio.sleep(0.01)
    sock.data_received(client_frame(CLOSE, close_payload(1000)))
    await asyncio.sleep(0.01)
    _, _, close = transport.frames()
    assert close.code == 1013 and transport.closed
    assert texts(transport) == [] and node.metrics.hot.received == 0
    await node.close(0.1)
