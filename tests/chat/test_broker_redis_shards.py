"""Rooms sharded over several real redis-servers; Redis Cluster refused, with the reason tested.

Each test starts throwaway redis-servers on free ports (``support.ThrowawayRedis``)
and SIGKILLs them; every wait polls with a deadline.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections import Counter

import orjson
import pytest
import redis as redis_sync

from support import SCALECHAT, ThrowawayRedis, eventually, free_port

from scalechat.chat.broker import Draft
from scalechat.chat.broker_redis import RedisBroker, jump_hash, shard_of
from scalechat.chat.errors import BrokerUnavailable
from scalechat.chat.redis_scripts import PUBLISH
from scalechat.chat.redis_shard import RoomKeys
from scalechat.chat.settings import Settings

pytestmark = pytest.mark.timeout(60)
ROOMS = [f"room-{i}" for i in range(400)]


# --- the hash ------------------------------------------------------------------------


def test_jump_hash_matches_the_papers_reference_values():
    # Values of the reference implementation (Lamping and Veach 2014, Google's Guava).
    assert [jump_hash(k, 1) for k in (0, 1, 0xDEAD10CC)] == [0, 0, 0]
    assert jump_hash(0xDEAD10CC, 2) == jump_hash(0xDEAD10CC, 2)
    assert all(0 <= jump_hash(k * 7919, 5) < 5 for k in range(1000))


def test_rooms_spread_evenly_and_adding_a_shard_moves_only_its_share():
    three = Counter(shard_of(room, 3) for room in ROOMS)
    assert set(three) == {0, 1, 2} and min(three.values()) > len(ROOMS) / 3 * 0.75
    moved = [room for room in ROOMS if shard_of(room, 3) != shard_of(room, 4)]
    assert all(shard_of(room, 4) == 3 for room in moved)  # rooms only move to the new shard
    assert len(moved) < len(ROOMS) / 4 * 1.35


def test_one_url_means_one_shard_and_every_room_on_it():
    assert {shard_of(room, 1) for room in ROOMS} == {0}


# --- two real shards ---------------------------------------------------------------------


@pytest.fixture
def two_redis(tmp_path):
    servers = [ThrowawayRedis(tmp_path / f"shard-{i}").start() for i in range(2)]
    yield servers
    for server in servers:
        server.kill()


class Recorder:
    def __init__(self) -> None:
        self.seqs: dict[str, list[int]] = {}

    def deliver(self, room: str, seq: int, payload: bytes, received_at: float) -> None:
        self.seqs.setdefault(room, []).append(seq)

    def deliver_event(self, room: str, payload: bytes) -> None:
        pass


async def publish(broker: RedisBroker, room: str, text: str) -> int:
    return (await broker.publish(Draft(room, "alice", text, None, time.perf_counter()))).seq


async def test_rooms_live_on_their_own_shard_and_one_shard_down_spares_the_others(two_redis):
    url = ",".join(server.url for server in two_redis)
    broker, rec = RedisBroker(Settings(broker="redis", redis_url=url, node_id="n")), Recorder()
    await broker.start(rec.deliver, rec.deliver_event)
    try:
        assert broker.shards_up == [True, True]
        on = {i: [r for r in ROOMS[:40] if shard_of(r, 2) == i][:3] for i in (0, 1)}
        for room in on[0] + on[1]:
            await broker.subscribe(room)
            assert await publish(broker, room, "before") == 1
        for i, server in enumerate(two_redis):  # each room's keys are on its shard alone
            keys = server.command("KEYS", "*:epoch").decode()
            assert all(f"{{{r}}}" in keys for r in on[i])
            assert not any(f"{{{r}}}" in keys for r in on[1 - i])

        two_redis[1].kill()
        await eventually(lambda: broker.shards_up == [True, False], 5, "shard 1 to be seen down")
        assert broker.ready  # the other shard still serves its rooms
        for room in on[0]:
            assert await publish(broker, room, "during") == 2
        for room in on[1]:
            with pytest.raises(BrokerUnavailable, match="shard 1"):
                await publish(broker, room, "lost")
        await eventually(lambda: all(rec.seqs.get(r) == [1, 2] for r in on[0]))

        two_redis[1].start()  # same port, empty
        await eventually(lambda: broker.shards_up == [True, True], 10, "shard 1 to recover")
        for room in on[1]:
            seq = await eventually(lambda room=room: _try(publish(broker, room, "after")), 10,
                                   "publishing on the recovered shard")
            assert seq == 1  # Redis lost the data: a new epoch
        await eventually(lambda: all(rec.seqs.get(r) == [1, 1] for r in on[1]), 10,
                         "delivery on the recovered shard, resubscribed by itself")
    finally:
        await broker.close()


async def _try(coro):
    try:
        return await coro
    except BrokerUnavailable:
        return None


async def test_a_server_on_two_shards_chats_in_rooms_of_both(two_redis, start_server):
    import aiohttp

    url = ",".join(server.url for server in two_redis)
    server = start_server("--broker", "redis", "--redis-url", url)
    rooms = [next(r for r in ROOMS if shard_of(r, 2) == i) for i in (0, 1)]
    async with aiohttp.ClientSession() as http:
        for room in rooms:
            ws = await http.ws_connect(server.ws_url(room, "name=alice"))
            assert (await ws.receive_json())["type"] == "history"
            await ws.send_json({"type": "message", "text": "hi", "cid": "1"})
            frame = await _next(ws, "message")
            assert (frame["seq"], frame["text"]) == (1, "hi")
            await ws.close()
    info = orjson.loads(await asyncio.to_thread(_get, server.http_url + "/info"))
    assert info["settings"]["redis_url"] == url  # no password here to mask
    ready = orjson.loads(await asyncio.to_thread(_get, server.http_url + "/readyz"))
    assert ready == {"ready": True, "shards_up": [True, True]}
    two_redis[1].kill()
    await eventually(lambda: orjson.loads(_get(server.http_url + "/readyz"))["shards_up"]
                     == [True, False], 5, "readyz to show shard 1 down")


async def _next(ws, kind: str) -> dict:
    while True:
        frame = await ws.receive_json(timeout=5)
        if frame["type"] == kind:
            return frame


def _get(url: str) -> bytes:
    import urllib.request
    return urllib.request.urlopen(url, timeout=5).read()


# --- Redis Cluster ---------------------------------------------------------------------


@pytest.fixture
def cluster_node(tmp_path):
    node = ThrowawayRedis(tmp_path, "--cluster-enabled", "yes", "--cluster-port", str(free_port()),
                          "--cluster-config-file", str(tmp_path / "nodes.conf")).start()
    node.command("CLUSTER", "ADDSLOTSRANGE", "0", "16383")  # one node serving every slot
    client = redis_sync.Redis(port=node.port)
    try:
        deadline = time.monotonic() + 10
        while b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
            assert time.monotonic() < deadline, "the one-node cluster did not come up"
            time.sleep(0.05)
        yield node, client
    finally:
        client.close()
        node.kill()


def test_a_rooms_keys_share_one_cluster_slot_but_a_batch_over_rooms_does_not(cluster_node):
    _, client = cluster_node
    keys = RoomKeys("scalechat", "lobby")
    slots = {client.execute_command("CLUSTER", "KEYSLOT", k) for k in (*keys.stored, keys.channel)}
    assert len(slots) == 1
    one_room = [*RoomKeys("p", "lobby").stored[:4]]
    two_rooms = one_room + RoomKeys("p", "other").stored[:4]
    args = [1000, 10, 10, "e1", "p:room:{lobby}", 1, b'{"seq":', b"", b"}", b""]
    client.execute_command("EVAL", PUBLISH.source, len(one_room), *one_room, *args)
    with pytest.raises(redis_sync.ResponseError, match="don't hash to the same slot"):  # CROSSSLOT
        client.execute_command("EVAL", PUBLISH.source, len(two_rooms), *two_rooms, *args,
                               "e2", "p:room:{other}", 1, b'{"seq":', b"", b"}", b"")


def test_serve_refuses_a_redis_cluster_node_naming_the_setting(cluster_node):
    node, _ = cluster_node
    done = subprocess.run([*SCALECHAT, "serve", "--broker", "redis", "--redis-url", node.url,
                           "--port", "0", "--metrics-port", "0"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "redis_url" in done.stderr and "Redis Cluster" in done.stderr
    assert "Traceback" not in done.stderr
