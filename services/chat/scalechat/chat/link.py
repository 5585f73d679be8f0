"""The socket under one connection, as the rest of the server sees it.

A :class:`Link` is the only way the outbox (:class:`~scalechat.chat.outbox.Outbox`)
and the node reach a client socket: frames already built (``write``,
``writelines``), the bytes still buffered, a compressed frame when the client
negotiated permessage-deflate, and closing. Nothing above it touches aiohttp or
the transport; ``client_socket.ClientSocket`` is the implementation over the
upgraded socket.
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

    def send_compressed(self, payload: bytes) -> None:
        """Queue one text frame carrying ``payload`` through the connection's compressor."""

    async def close(self, code: int, reason: str, timeout: float) -> bool:
        """The closing handshake, bounded: a close frame, then up to ``timeout`` for the
        peer's; then the TCP close after what is buffered, aborted if the peer has not
        taken it within ``timeout`` more. A peer that reads nothing never lets a graceful
        close finish, so the socket is gone within twice ``timeout`` (file descriptor and
        buffers released). Returns whether it was aborted with bytes the peer never took."""
        ...

    def abort(self) -> None:
        """Drop the socket now (file descriptor and buffers released); idempotent."""
