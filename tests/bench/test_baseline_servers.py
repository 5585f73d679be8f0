"""bench/fanout.py's baselines speak what its generator needs, each as a real process.

The naive server and the floor must both send a history frame on join, echo
a message to its sender, deliver it to every member of the room and to no
other room; otherwise their CPU per delivery would not be comparable with
scalechat's. The floor also refuses what it does not implement with a close
code instead of misreading it.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from support import free_port, healthy, wait_until

from scalechat.loadgen.wsclient import connect

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(params=["naive", "floor"])
def baseline(request) -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(BENCH / f"{request.param}_server.py"), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: healthy(f"http://127.0.0.1:{port}") or proc.poll() is not None,
                   message="baseline server to answer /healthz")
        assert proc.poll() is None, f"{request.param} server exited with {proc.returncode}"
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


async def recv_json(client) -> dict:
    return orjson.loads(await asyncio.wait_for(client.recv(), 5))


async def test_history_then_room_fanout_with_echo(baseline: int) -> None:
    url = f"ws://127.0.0.1:{baseline}/ws/"
    a1, a2, b = (await connect(url + "a?name=a1"), await connect(url + "a?name=a2"),
                 await connect(url + "b?name=b1"))
    try:
        for client in (a1, a2, b):
            assert (await recv_json(client))["type"] == "history"
        text = "a1:12.5:" + "x" * 200  # over 125 bytes: a 16-bit length frame
        a1.send_text(orjson.dumps({"type": "message", "text": text}))
        for client in (a1, a2):  # the sender's echo, and the other member
            assert (await recv_json(client))["text"] == text
        b.send_text(orjson.dumps({"type": "message", "text": "b1:1.0:only b"}))
        assert (await recv_json(b))["text"] == "b1:1.0:only b"  # b got its own, never a1's
        a2.send_text(orjson.dumps({"type": "message", "text": "a2:2.0:after"}))
        assert (await recv_json(a1))["text"] == "a2:2.0:after"  # nothing from room b between
    finally:
        for client in (a1, a2, b):
            await client.close()


def test_floor_refuses_binary_with_1003() -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(BENCH / "floor_server.py"), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: healthy(f"http://127.0.0.1:{port}"), message="floor server to answer /healthz")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET /ws/a HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
            sock.sendall(bytes((0x82, 0x80 | 3)) + b"\0\0\0\0" + b"abc")  # masked binary frame
            received = b""
            while chunk := sock.recv(4096):
                received += chunk
        assert received.startswith(b"HTTP/1.1 101 ")
        assert b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in received  # RFC 6455's example accept key
        assert received.endswith(bytes((0x88, 2)) + struct.pack("!H", 1003))
    finally:
        proc.terminate()
        proc.wait(10)
