"""The baseline for bench/fanout.py: the naive aiohttp broadcast.

A set of sockets per room and ``await ws.send_str()`` to each in turn, the
way most tutorials (and the 2022 seed) fan out. It speaks just enough of the
scalechat protocol for the benchmark's generator: a ``history`` frame on join
and ``message`` frames with a per-room seq, serialized once per message (fair:
the cost measured is the fan-out, not JSON).

    python bench/naive_server.py PORT
"""

from __future__ import annotations

import sys
import time

import orjson
import uvloop
from aiohttp import WSMsgType, web

rooms: dict[str, set[web.WebSocketResponse]] = {}
seqs: dict[str, int] = {}


async def websocket(request: web.Request) -> web.WebSocketResponse:
    room = request.match_info["room"]
    name = request.query.get("name", "anon")
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    await ws.send_str(orjson.dumps({"type": "history", "room": room, "messages": []}).decode())
    members = rooms.setdefault(room, set())
    members.add(ws)
    try:
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                break
            frame = orjson.loads(msg.data)
            seqs[room] = seq = seqs.get(room, 0) + 1
            data = orjson.dumps({"type": "message", "room": room, "seq": seq, "from": name,
                                 "text": frame["text"], "ts": int(time.time() * 1000),
                                 "cid": frame.get("cid")}).decode()
            for peer in list(members):
                await peer.send_str(data)
    finally:
        members.discard(ws)
    return ws


def main() -> None:
    app = web.Application()
    app.router.add_get("/ws/{room}", websocket)
    app.router.add_get("/healthz", lambda request: web.json_response({"status": "ok"}))
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
