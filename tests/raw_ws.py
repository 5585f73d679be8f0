"""Raw-socket HTTP and WebSocket for tests that send what real clients never do.

Hand-built frames (unmasked, reserved bits, lying lengths) and requests
(HTTP/1.0 upgrades, partial heads) go to the real server process over a plain
TCP socket on 127.0.0.1; the server's frames are read back with the load
generator's sans-I/O parser. Every read has a deadline.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from dataclasses import dataclass, field

from scalechat.loadgen.wsprotocol import FrameParser, Opcode

KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 section 1.3's sample key
MASK = b"\x37\xfa\x21\x3d"


def upgrade_request(path: str, *, version: str = "1.1", host: str = "127.0.0.1",
                    headers: dict[str, str] | None = None) -> bytes:
    lines = [f"GET {path} HTTP/{version}", f"Host: {host}", "Upgrade: websocket",
             "Connection: Upgrade", f"Sec-WebSocket-Key: {KEY}", "Sec-WebSocket-Version: 13"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def client_frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0,
                 mask: bytes | None = MASK, length_bits: int | None = None,
                 length: int | None = None) -> bytes:
    """One frame as a client puts it on the wire (section 5.2), masked with ``mask`` unless None.

    ``length_bits`` (7, 16 or 64) forces a length encoding; ``length`` declares
    a length other than the payload's.
    """
    n = len(payload) if length is None else length
    bits = length_bits or (7 if n < 126 else 16 if n < 65536 else 64)
    mask_bit = 0x80 if mask is not None else 0
    head = bytes([(0x80 if fin else 0) | rsv | opcode])
    if bits == 7:
        head += bytes([mask_bit | n])
    elif bits == 16:
        head += bytes([mask_bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", n)
    if mask is None:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


def message(text: str, cid: str) -> bytes:
    return json.dumps({"type": "message", "text": text, "cid": cid}, ensure_ascii=False).encode()


@dataclass
class Outcome:
    """What the server sent after the upgrade, until it closed the TCP connection."""

    messages: list[dict] = field(default_factory=list)  # our room's `message` frames
    pongs: list[bytes] = field(default_factory=list)
    close: tuple[int, str] | None = None  # the server's close frame

    @property
    def code(self) -> int | None:
        return self.close[0] if self.close else None

    def texts(self) -> list[str]:
        return [m["text"] for m in self.messages]


class RawWebSocket:
    """An upgraded connection that writes whatever bytes it is given.

    A plain non-blocking socket, not an asyncio transport: a transport that
    fails a write (the server closed first) drops what it had not yet read,
    the server's close frame included.
    """

    def __init__(self, sock: socket.socket, after_head: bytes) -> None:
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.parser = FrameParser(max_message_size=1 << 22)
        self.received = Outcome()
        self.writable = True
        self._feed(after_head)

    @classmethod
    async def open(cls, port: int, path: str, *, pipelined: bytes = b"",
                   timeout: float = 5.0) -> RawWebSocket:
        """Upgrade (``pipelined`` goes in the same write as the request); assert the 101."""
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.setblocking(False)
        received = b""
        async with asyncio.timeout(timeout):
            await loop.sock_connect(sock, ("127.0.0.1", port))
            await loop.sock_sendall(sock, upgrade_request(path) + pipelined)
            while b"\r\n\r\n" not in received:
                chunk = await loop.sock_recv(sock, 65536)
                assert chunk, f"connection closed during the handshake: {received!r}"
                received += chunk
        head, rest = received.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101 "), head
        return cls(sock, rest)

    async def send(self, *chunks: bytes) -> None:
        """Each chunk in its own write, until the server has closed the connection."""
        for chunk in chunks:
            if not self.writable:
                return
            try:
                await self.loop.sock_sendall(self.sock, chunk)
            except OSError:  # EPIPE, ECONNRESET: the server failed the connection earlier
                self.writable = False
            await asyncio.sleep(0)  # let the write go out on its own

    async def messages(self, count: int, timeout: float = 5.0) -> list[str]:
        """Read until ``count`` message frames in all have arrived; their texts."""
        async with asyncio.timeout(timeout):
            while len(self.received.messages) < count and self._feed(await self._recv()):
                pass
        return self.received.texts()

    async def outcome(self, timeout: float = 5.0) -> Outcome:
        """Read until the server closes the connection (at most ``timeout`` seconds)."""
        try:
            async with asyncio.timeout(timeout):
                while self._feed(await self._recv()):
                    pass
        finally:
            self.sock.close()
        return self.received

    async def _recv(self) -> bytes:
        try:
            return await self.loop.sock_recv(self.sock, 65536)
        except ConnectionResetError:  # the server closed with our later frames unread
            return b""

    def _feed(self, chunk: bytes) -> bool:
        out = self.received
        for payload in self.parser.feed(chunk):
            frame = json.loads(payload)
            if frame.get("type") == "message":
                out.messages.append(frame)
        out.pongs += [p for op, p in self.parser.control if op == Opcode.PONG]
        self.parser.control.clear()
        if self.parser.close is not None and out.close is None:
            out.close = tuple(self.parser.close)
        return bool(chunk)


async def http_exchange(port: int, request: bytes, timeout: float = 5.0) -> tuple[int, bytes]:
    """Send raw bytes; return the status and the body the server answered with."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        async with asyncio.timeout(timeout):
            head = await reader.readuntil(b"\r\n\r\n")
            headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n")[1:] if line)
            length = int(headers.get("Content-Length", "0"))
            body = await reader.readexactly(length) if length else b""
    finally:
        writer.close()
    return int(head.split(b" ")[1]), body
