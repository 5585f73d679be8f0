"""The Hub's two flush tiers, on a real event loop with recording transports (no sockets needed)."""

from __future__ import annotations

import asyncio

from scalechat.chat.connection import Connection
from scalechat.chat.hub import Hub
from scalechat.chat.ratelimit import TokenBucket


class _Transport:
    """Records the loop time of every write."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop, self.writes = loop, []

    def write(self, data: bytes) -> None:
        self.writes.append((self.loop.time(), data.count(b"\x81")))

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return False


class _WS:
    compress = 0


def member(hub: Hub, loop, room: str) -> tuple[Connection, _Transport]:
    transport = _Transport(loop)
    conn = Connection(_WS(), transport, room, "n", 1 << 20, TokenBucket(100, 100, 0.0), hub.schedule_flush,
                      lambda c: None)
    hub.add(conn)
    return conn, transport


async def test_a_socket_with_several_frames_per_write_moves_to_the_longer_window():
    loop = asyncio.get_running_loop()
    interval = 0.02
    hub = Hub(loop, lambda received, now: None, interval)
    busy, busy_t = member(hub, loop, "big")
    quiet, quiet_t = member(hub, loop, "small")
    for i in range(12):  # the big room: three messages per interval; the small one: one per two
        for _ in range(3):
            hub.broadcast("big", b'{"type":"message"}', received_at=0.0)
        if i % 2 == 0:
            hub.broadcast("small", b'{"type":"message"}', received_at=0.0)
        await asyncio.sleep(interval)
    await asyncio.sleep(4 * interval)
    assert busy.batching and not quiet.batching
    busy_writes, quiet_writes = busy_t.writes, quiet_t.writes
    assert sum(n for _, n in busy_writes) == 36 and [n for _, n in quiet_writes] == [1] * 6
    gaps = [b[0] - a[0] for a, b in zip(busy_writes[-4:], busy_writes[-3:])]
    assert all(gap >= 2 * interval * 0.9 for gap in gaps), gaps  # at least 2 x interval apart
    assert max(n for _, n in busy_writes[-3:]) >= 5  # larger writes once in the longer window


async def test_without_an_interval_every_socket_is_written_each_tick():
    loop = asyncio.get_running_loop()
    hub = Hub(loop, lambda received, now: None, 0.0)
    conn, transport = member(hub, loop, "r")
    for _ in range(5):
        for _ in range(3):
            hub.broadcast("r", b"{}", received_at=0.0)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
    assert [n for _, n in transport.writes] == [3] * 5
