"""A :class:`~scalechat.chat.link.Link` over an upgraded aiohttp WebSocketResponse."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from aiohttp import WSMsgType, web


class AiohttpLink:
    """Frames go straight to the transport (built once per broadcast by ``framing``);
    the closing handshake and compressed frames go through aiohttp's WebSocket."""

    __slots__ = ("_ws", "_transport", "compress")

    def __init__(self, ws: web.WebSocketResponse, transport: asyncio.Transport) -> None:
        self._ws = ws
        self._transport = transport
        self.compress = bool(ws.compress)

    def write(self, data: bytes) -> None:
        if not self._transport.is_closing():
            self._transport.write(data)

    def writelines(self, parts: Sequence[bytes]) -> None:
        if not self._transport.is_closing():
            self._transport.writelines(parts)

    def buffered(self) -> int:
        return self._transport.get_write_buffer_size()

    def closing(self) -> bool:
        return self._transport.is_closing()

    async def send_compressed(self, payload: bytes) -> None:
        await self._ws.send_frame(payload, WSMsgType.TEXT)

    async def close(self, code: int, reason: str) -> None:
        await self._ws.close(code=code, message=reason.encode())

    def abort(self) -> None:
        self._transport.abort()
