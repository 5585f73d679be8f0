"""scalechat_broker_messages_received_total: what each node takes from the broker.

Two real ``scalechat serve`` replicas on the Redis at 127.0.0.1:6379 (a key
prefix of this test alone): a node counts each message of every room it has a
member in, its own senders' included, and nothing of other rooms; presence
events are not messages. The memory broker counts its own publishes.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import aiohttp
import orjson
import pytest
from redis.asyncio import Redis

pytestmark = pytest.mark.timeout(60)
REDIS_URL = "redis://127.0.0.1:6379/0"
METRIC = "scalechat_broker_messages_received_total"


@pytest.fixture
async def prefix():
    """A key prefix of this test alone; its keys are deleted afterwards."""
    name = f"test-broker-metrics-{uuid.uuid4().hex[:12]}"
    yield name
    redis = Redis.from_url(REDIS_URL)
    try:
        keys = [key async for key in redis.scan_iter(match=f"{name}:*", count=1000)]
        if keys:
            await redis.delete(*keys)
    finally:
        await redis.aclose()


async def next_of(ws: aiohttp.ClientWebSocketResponse, kind: str) -> dict:
    async with asyncio.timeout(5):
        while True:
            frame = orjson.loads((await ws.receive()).data)
            if frame["type"] == kind:
                return frame


async def send(ws: aiohttp.ClientWebSocketResponse, count: int, label: str) -> None:
    for i in range(count):
        await ws.send_str(orjson.dumps({"type": "message", "text": f"{label}{i}"}).decode())


def counts(*servers) -> list[tuple[float, float, float]]:
    """(published, from the broker, delivered) of each server."""
    return [(s.metric("scalechat_messages_received_total"), s.metric(METRIC),
             s.metric("scalechat_messages_delivered_total")) for s in servers]


async def counts_reach(expected: list[tuple[int, int, int]], *servers, timeout: float = 5.0):
    """The servers' counts once they equal ``expected`` (a sender's published count
    may trail its echo by a moment); the last counts seen at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        seen = await asyncio.to_thread(counts, *servers)
        if seen == expected or time.monotonic() > deadline:
            return seen
        await asyncio.sleep(0.05)


async def test_a_replica_counts_the_messages_of_the_rooms_it_has_members_in(prefix, start_server):
    args = ("--broker", "redis", "--redis-url", REDIS_URL, "--redis-prefix", prefix)
    s1, s2 = start_server(*args), start_server(*args)
    async with aiohttp.ClientSession() as http:
        alice = await http.ws_connect(s1.ws_url("shared", "name=alice"))  # shared on both
        bob = await http.ws_connect(s2.ws_url("shared", "name=bob"))
        carol = await http.ws_connect(s1.ws_url("only-one", "name=carol"))  # only on s1
        for ws in (alice, bob, carol):
            await next_of(ws, "history")
        await send(alice, 3, "a")
        await send(bob, 2, "b")
        await send(carol, 4, "c")
        for ws, expected in ((alice, 5), (bob, 5), (carol, 4)):
            for _ in range(expected):
                await next_of(ws, "message")  # counted before it is queued to anyone
        for ws in (alice, bob, carol):
            await ws.close()
    # s1: 5 shared + 4 of its own room, delivered to alice (5) and carol (4);
    # s2: the 5 shared, to bob. Presence events (joins, leaves) are not counted.
    expected = [(7, 9, 9), (2, 5, 5)]
    assert await counts_reach(expected, s1, s2) == expected


async def test_the_memory_broker_counts_its_own_publishes(start_server):
    server = start_server("--broker", "memory")
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(server.ws_url("solo", "name=solo"))
        await next_of(ws, "history")
        await send(ws, 3, "m")
        for _ in range(3):
            await next_of(ws, "message")
        await ws.close()
    assert await counts_reach([(3, 3, 3)], server) == [(3, 3, 3)]
