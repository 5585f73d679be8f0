"""Node.close_connection, in-process against a real aiohttp server (no mocks): what is queued is sent first."""

from __future__ import annotations

import aiohttp
import pytest

from scalechat.chat.app import create_app, node_key
from scalechat.chat.framing import frame_text
from scalechat.chat.protocol import CloseCode
from scalechat.chat.settings import Settings


@pytest.mark.parametrize("compression", [False, True])
async def test_close_sends_every_queued_frame_before_the_close_frame(aiohttp_client, compression):
    app = create_app(Settings(compression=compression, metrics_port=0))
    client = await aiohttp_client(app)
    ws = await client.ws_connect("/ws/room?name=a", compress=15 if compression else 0)
    assert (await ws.receive_json())["type"] == "history"
    assert bool(ws.compress) == compression
    node = app[node_key]
    (conn,) = node.hub.connections()
    for i in range(20):  # queued in this tick, written by the flush (or the compressor) later
        conn.push(frame_text(b'{"type":"message","n":%d,"text":"%s"}' % (i, b"compressible " * 40)))
    await node.close_connection(conn, CloseCode.GOING_AWAY, "going away")
    received = []
    while True:
        msg = await ws.receive()
        if msg.type is not aiohttp.WSMsgType.TEXT:
            break
        frame = msg.json()
        if frame["type"] == "message":  # a presence frame may come first
            received.append(frame["n"])
    assert received == list(range(20))
    assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == CloseCode.GOING_AWAY
