"""A lean Redis connection: RESP over an asyncio protocol, replies parsed in C by hiredis.

One socket, no pool. Two modes:

* *commands*: :meth:`RedisLink.send` writes a packed command and returns a
  future; replies resolve the futures in the order the commands were written,
  so any number of requests are in flight at once (pipelining) and a burst
  never waits for a free connection. A reply error fails its future with
  :class:`ReplyError`.
* *push* (pub/sub): after :meth:`RedisLink.push_to`, every reply parsed from
  one socket read is handed to the callback in one list, in order, within the
  same loop callback: no task or await per message.

A lost connection fails every pending future with :class:`ConnectionError` and
calls ``on_lost`` once; nothing is retried here (the owner reconnects).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis

pack_command = hiredis.pack_command

Push = Callable[[list], None]


class ReplyError(Exception):
    """Redis answered a command with an error reply (``-ERR ...``, ``-NOSCRIPT ...``)."""


@dataclass(frozen=True, slots=True)
class RedisAddress:
    """Where one Redis listens, parsed from ``redis://``, ``rediss://`` or ``unix://`` URLs."""

    host: str = "127.0.0.1"
    port: int = 6379
    path: str = ""  # a unix socket instead of host:port
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False

    @classmethod
    def parse(cls, url: str) -> RedisAddress:
        """Raise ValueError with a reason a user can act on."""
        parts = urlsplit(url.strip())
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"{url!r}: scheme must be redis://, rediss:// or unix://")
        query = parse_qs(parts.query)
        default_db = "0" if parts.scheme == "unix" else parts.path.lstrip("/") or "0"
        db_text = (query.get("db") or [default_db])[0]
        if not (db_text.isascii() and db_text.isdigit()):
            raise ValueError(f"{url!r}: the database must be a number, got {db_text!r}")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"{url!r}: the port must be a number from 0 to 65535") from None
        if parts.scheme == "unix":
            if not parts.path:
                raise ValueError(f"{url!r}: a unix:// URL needs a socket path")
            return cls(path=parts.path, db=int(db_text),
                       username=unquote(parts.username) if parts.username else None,
                       password=unquote(parts.password) if parts.password else None)
        if not parts.hostname:
            raise ValueError(f"{url!r}: no host")
        return cls(host=parts.hostname, port=port or 6379, db=int(db_text),
                   username=unquote(parts.username) if parts.username else None,
                   password=unquote(parts.password) if parts.password else None,
                   tls=parts.scheme == "rediss")

    def __str__(self) -> str:  # never shows the password
        where = f"unix://{self.path}" if self.path else \
            f"{'rediss' if self.tls else 'redis'}://{self.host}:{self.port}"
        return f"{where}/{self.db}"


class RedisLink(asyncio.Protocol):
    """One Redis connection (see the module docstring)."""

    def __init__(self, on_lost: Callable[[Exception | None], None] | None = None) -> None:
        self._reader = hiredis.Reader(replyError=ReplyError)
        self._waiting: deque[tuple[asyncio.Future, float]] = deque()
        self._push: Push | None = None
        self._on_lost = on_lost
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @classmethod
    async def open(cls, address: RedisAddress, *, name: str, timeout: float,
                   on_lost: Callable[[Exception | None], None] | None = None) -> RedisLink:
        """Connect, authenticate, select the database and name the client, within ``timeout``."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            if address.path:
                _, link = await loop.create_unix_connection(lambda: cls(on_lost), address.path)
            else:
                context = ssl.create_default_context() if address.tls else None
                _, link = await loop.create_connection(lambda: cls(on_lost), address.host,
                                                       address.port, ssl=context)
            try:
                hello = []
                if address.password is not None:
                    hello.append(link.call("AUTH", *([address.username] if address.username else []),
                                           address.password))
                if address.db:
                    hello.append(link.call("SELECT", address.db))
                hello.append(link.call("CLIENT", "SETNAME", name.replace(" ", "_")))
                await asyncio.gather(*hello)
            except BaseException:
                link.close()
                raise
        return link

    # --- asyncio.Protocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        push = self._push
        if push is not None:
            replies = []
            reply = reader.gets()
            while reply is not False:
                replies.append(reply)
                reply = reader.gets()
            if replies:
                push(replies)
            return
        waiting = self._waiting
        reply = reader.gets()
        while reply is not False:
            if not waiting:  # a reply nobody asked for: the stream is out of step
                self._fail(ConnectionError("unexpected reply from Redis"))
                return
            future = waiting.popleft()[0]
            if not future.done():  # a caller that gave up leaves its future cancelled
                if isinstance(reply, ReplyError):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
            reply = reader.gets()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionError("Redis closed the connection"))

    # --- use ------------------------------------------------------------------------

    def send(self, packed: bytes) -> asyncio.Future:
        """Write one packed command; its reply resolves the returned future."""
        future = asyncio.get_running_loop().create_future()
        if self.closed:
            future.set_exception(ConnectionError("the Redis connection is closed"))
            return future
        self._waiting.append((future, time.monotonic()))
        self.transport.write(packed)
        return future

    def send_many(self, packed: list[bytes]) -> list[asyncio.Future]:
        """Write several packed commands in one system call."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in packed]
        if self.closed:
            for future in futures:
                future.set_exception(ConnectionError("the Redis connection is closed"))
            return futures
        now = time.monotonic()
        self._waiting.extend((future, now) for future in futures)
        self.transport.write(b"".join(packed))
        return futures

    def call(self, *args) -> asyncio.Future:
        return self.send(pack_command(args))

    def write(self, *args) -> None:
        """Write a command whose replies arrive as pushes (SUBSCRIBE, PING in push mode)."""
        if not self.closed:
            self.transport.write(pack_command(args))

    def push_to(self, callback: Push) -> None:
        """From now on every reply goes to ``callback`` (no command may be pending)."""
        assert not self._waiting, "replies still pending"
        self._push = callback

    def oldest_wait(self) -> float:
        """Seconds the oldest unanswered command has waited (0 when none)."""
        return time.monotonic() - self._waiting[0][1] if self._waiting else 0.0

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()
        self._fail(ConnectionError("the Redis connection was closed"))

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        self._fail(ConnectionError("the Redis connection was aborted"))

    def _fail(self, exc: Exception) -> None:
        if self.closed:
            return
        self.closed = True
        waiting, self._waiting = self._waiting, deque()
        for future, _ in waiting:
            if not future.done():
                future.set_exception(ConnectionError(str(exc)) if not isinstance(exc, ConnectionError)
                                     else exc)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()
        if not self.lost.done():
            self.lost.set_result(None)
        if self._on_lost is not None:
            self._on_lost(exc)
