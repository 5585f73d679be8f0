"""The Hub's two flush tiers, on a real event loop with recording transports (no sockets needed)."""

from __future__ import annotations

import asyncio

from scalechat.chat.connection import Connection
from scalechat.chat.hub import PROMPT_WINDOW, Hub
from scalechat.chat.ratelimit import TokenBucket

INTERVAL = 0.02
assert PROMPT_WINDOW < INTERVAL / 4


class _Transport:
    """Records the loop time of every write and how many frames it held."""

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


async def broadcasts(hub: Hub, room: str, per_interval: float, intervals: int) -> list[float]:
    """Broadcast to ``room`` at ``per_interval`` frames per INTERVAL; return the loop times."""
    loop = asyncio.get_running_loop()
    sent, owed = [], 0.0
    for _ in range(intervals):
        owed += per_interval
        while owed >= 1:
            hub.broadcast(room, b'{"type":"message"}', received_at=0.0)
            sent.append(loop.time())
            owed -= 1
        await asyncio.sleep(INTERVAL)
    return sent


async def test_a_busy_socket_batches_and_a_quiet_one_is_written_promptly():
    loop = asyncio.get_running_loop()
    hub = Hub(loop, lambda received, now: None, INTERVAL)
    busy, busy_t = member(hub, loop, "big")
    quiet, quiet_t = member(hub, loop, "small")
    # the big room: three frames per interval (all in one tick); the small one: one per two intervals
    big = asyncio.create_task(broadcasts(hub, "big", 3, 40))
    small_sent = await broadcasts(hub, "small", 0.5, 40)
    await big
    await asyncio.sleep(2 * INTERVAL)
    assert busy.batching and not quiet.batching
    assert sum(n for _, n in busy_t.writes) == 120
    assert [n for _, n in quiet_t.writes] == [1] * 20
    # prompt: each quiet frame went out within the prompt window (1 ms), not the interval
    assert all(w - s < INTERVAL / 2 for (w, _), s in zip(quiet_t.writes, small_sent))
    gaps = [b[0] - a[0] for a, b in zip(busy_t.writes[-6:], busy_t.writes[-5:])]
    assert all(gap >= INTERVAL * 0.9 for gap in gaps), gaps  # at most one write per interval


async def test_a_socket_leaves_the_batching_tier_when_its_room_quiets_down():
    loop = asyncio.get_running_loop()
    hub = Hub(loop, lambda received, now: None, INTERVAL)
    conn, transport = member(hub, loop, "r")
    await broadcasts(hub, "r", 4, 30)
    assert conn.batching
    await broadcasts(hub, "r", 1.5, 20)  # between one and two per interval: stays
    assert conn.batching
    await broadcasts(hub, "r", 1 / 3, 90)
    assert not conn.batching
    sent = await broadcasts(hub, "r", 1 / 3, 12)
    written = [t for t, _ in transport.writes[-4:]]
    assert all(w - s < INTERVAL / 2 for w, s in zip(written, sent[-4:]))


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
    assert not conn.batching


async def test_processing_time_is_observed_when_the_last_write_is_made():
    loop = asyncio.get_running_loop()
    observed = []
    hub = Hub(loop, lambda received, now: observed.append((len(received), now)), INTERVAL)
    member(hub, loop, "r")
    hub.broadcast("r", b"{}", received_at=1.0)
    hub.broadcast("r", b"{}", received_at=2.0)
    assert observed == []
    await asyncio.sleep(0)
    assert [n for n, _ in observed] == [2]
