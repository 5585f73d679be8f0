"""The socket under one connection, as the rest of the server sees it.

A :class:`Link` is the only way the outbox (:class:`~scalechat.chat.connection.Connection`)
and the node reach a client socket: frames already built (``write``,
``writelines``), the bytes still buffered, a compressed frame when the client
negotiated permessage-deflate, and closing. Nothing above it touches aiohttp or
the transport; ``aiohttp_link.AiohttpLink`` is the implementation over an
upgraded aiohttp WebSocket.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class Link(Protocol):
    compress: bool  # permessage-deflate: frames go one by one through send_compressed

    def write(self, data: bytes) -> None:
        """Queue ``data`` (whole frames) for the socket; dropped once it is closing."""

    def writelines(self, parts: Sequence[bytes]) -> None:
        """Queue ``parts`` as one write, without joining them (shared history parts)."""

    def buffered(self) -> int:
        """Bytes written and not yet taken by the kernel."""
        ...

    def closing(self) -> bool:
        """Whether the socket is closing or closed: writes are dropped."""
        ...

    async def send_compressed(self, payload: bytes) -> None:
        """One text frame through the connection's compressor. Raises ConnectionError,
        RuntimeError once the socket is gone."""

    async def close(self, code: int, reason: str) -> None:
        """The closing handshake: a close frame, then the peer's. May wait on the peer;
        callers bound it with a timeout and :meth:`abort`."""

    def abort(self) -> None:
        """Drop the socket now (file descriptor and buffers released); idempotent."""
