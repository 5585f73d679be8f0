"""The floor for bench/fanout.py: one write per delivery and nothing else.

Not a chat server: no JSON, no checks, no seq, no history, no heartbeat, no
metrics. After a minimal RFC 6455 handshake it unmasks each client text frame
and writes it, framed once, to every socket of the same room at once: one
``transport.write`` per delivery from a bare ``asyncio.Protocol`` on uvloop,
with no task, no await and no timer per message.

What it spends per delivery is the kernel's loopback TCP cost of that write
(and of the read it shares with the room) plus the least Python that can move
the bytes. A server that does real work per message and still writes each
delivery on its own, as any server must when no window short enough for the
latency holds two frames for a socket (100 rooms x 4), cannot spend less.

    python bench/floor_server.py PORT

Protocol subset: ``GET /healthz`` answers 200; ``GET /ws/<room>`` upgrades and
sends one ``history`` frame. Unfragmented client frames up to 64 KiB: text is
forwarded (the sender included), ping is answered, close is echoed. Anything
else (fragments, binary, bigger frames) gets close code 1003 and the socket
is closed.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import sys

import uvloop

try:  # aiohttp's C masking, as in scalechat.loadgen.wsprotocol
    from aiohttp._websocket.mask import _websocket_mask_cython as _unmask
except ImportError:  # pragma: no cover
    def _unmask(key: bytes, body: bytearray) -> None:
        for i in range(len(body)):
            body[i] ^= key[i & 3]

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
HISTORY = b'{"type":"history","messages":[]}'
MAX_HEAD = 8192
rooms: dict[bytes, set[asyncio.Transport]] = {}


def frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked, final server frame (section 5.2)."""
    n = len(payload)
    if n < 126:
        return bytes((0x80 | opcode, n)) + payload
    return bytes((0x80 | opcode, 126, n >> 8, n & 0xFF)) + payload


def close_frame(code: int) -> bytes:
    return frame(0x8, code.to_bytes(2, "big"))


class FloorProtocol(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = b""
        self.room: set[asyncio.Transport] | None = None

    def data_received(self, data: bytes) -> None:
        if self.buffer:
            data, self.buffer = self.buffer + data, b""
        if self.room is None:
            data = self._handshake(data)
            if not data:
                return
        pos, n = 0, len(data)
        while pos + 2 <= n:
            b0, b1 = data[pos], data[pos + 1]
            length = b1 & 0x7F
            if not b0 & 0x80 or not b1 & 0x80 or length == 127:
                return self._fail(1003)  # fragmented, unmasked, 64-bit length
            start = pos + 6  # 2 header bytes, 4 mask bytes
            if length == 126:
                if pos + 4 > n:
                    break
                length = (data[pos + 2] << 8) | data[pos + 3]
                start += 2
            end = start + length
            if end > n:
                break
            body = bytearray(data[start:end])
            _unmask(data[start - 4:start], body)
            pos = end
            opcode = b0 & 0x0F
            if opcode == 0x1:
                out = frame(0x1, bytes(body))
                for transport in self.room:  # type: ignore[union-attr]
                    transport.write(out)
            elif opcode == 0x9:
                self.transport.write(frame(0xA, bytes(body)))
            elif opcode == 0x8:
                self.transport.write(frame(0x8, bytes(body[:2])))
                self.transport.close()
                return
            elif opcode != 0xA:
                return self._fail(1003)
        self.buffer = data[pos:]

    def _handshake(self, data: bytes) -> bytes:
        """Answer the HTTP request in ``data``; return the bytes after it (frames already sent)."""
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            if len(data) > MAX_HEAD:
                self.transport.close()
            else:
                self.buffer = data
            return b""
        lines = head.split(b"\r\n")
        parts = lines[0].split()
        path = parts[1].split(b"?")[0] if len(parts) == 3 else b""
        headers = dict(line.split(b":", 1) for line in lines[1:] if b":" in line)
        key = {k.strip().lower(): v.strip() for k, v in headers.items()}.get(b"sec-websocket-key")
        if path == b"/healthz":
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
            self.transport.close()
            return b""
        if not path.startswith(b"/ws/") or key is None:
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            self.transport.close()
            return b""
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                             b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
                             + frame(0x1, HISTORY))
        self.room = rooms.setdefault(path[4:], set())
        self.room.add(self.transport)
        return rest

    def _fail(self, code: int) -> None:
        self.transport.write(close_frame(code))
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.room is not None:
            self.room.discard(self.transport)


async def serve(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(FloorProtocol, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def main() -> None:
    if len(sys.argv) != 2 or not sys.argv[1].isdigit():
        raise SystemExit("usage: python bench/floor_server.py PORT")
    uvloop.run(serve(int(sys.argv[1])))


if __name__ == "__main__":
    main()
