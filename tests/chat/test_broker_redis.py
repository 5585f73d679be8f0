"""The Redis broker against real Redis: order, isolation, history, gaps, outages.

Ordinary tests share the Redis on 127.0.0.1:6379 under a unique key prefix and
delete their keys; fault tests start a throwaway redis-server on a free port
and SIGKILL it. The last test runs two ``scalechat serve`` replicas. Every
wait polls with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import aiohttp
import orjson
import pytest

from support import ThrowawayRedis, eventually, free_port
from redis.asyncio import Redis

from scalechat.chat.broker import Draft
from scalechat.chat.broker_redis import RedisBroker
from scalechat.chat.redis_shard import RoomKeys
from scalechat.chat.errors import BrokerUnavailable
from scalechat.chat.protocol import encode_message
from scalechat.chat.settings import Settings

pytestmark = pytest.mark.timeout(60)
REDIS_URL = "redis://127.0.0.1:6379/0"


# --- helpers --------------------------------------------------------------------------


class Recorder:
    """The node's side of the broker: what was delivered, in order."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, int, bytes]] = []
        self.events: list[tuple[str, bytes]] = []

    def deliver(self, room: str, seq: int, payload: bytes, received_at: float) -> None:
        self.messages.append((room, seq, payload))

    def deliver_event(self, room: str, payload: bytes) -> None:
        self.events.append((room, payload))

    def seqs(self, room: str) -> list[int]:
        return [seq for r, seq, _ in self.messages if r == room]

    def payloads(self, room: str) -> list[bytes]:
        return [p for r, _, p in self.messages if r == room]


async def publish(broker: RedisBroker, room: str, text: str, sender: str = "alice",
                  cid: str | None = None) -> int:
    return (await broker.publish(Draft(room, sender, text, cid, time.perf_counter()))).seq


def seqs(history) -> list[int]:
    return [orjson.loads(p)["seq"] for p in history.messages]


@pytest.fixture
async def redis():
    client = Redis.from_url(REDIS_URL)
    yield client
    await client.aclose()


@pytest.fixture
async def prefix(redis):
    """A key prefix of this test alone; its keys are deleted afterwards."""
    name = f"test-broker-{uuid.uuid4().hex[:12]}"
    yield name
    keys = [key async for key in redis.scan_iter(match=f"{name}:*", count=1000)]
    if keys:
        await redis.delete(*keys)


@pytest.fixture
async def make_broker(prefix):
    """Factory: a started RedisBroker ("replica") and the Recorder it delivers to."""
    brokers: list[RedisBroker] = []

    async def make(**overrides) -> tuple[RedisBroker, Recorder]:
        overrides.setdefault("redis_url", REDIS_URL)
        settings = Settings(broker="redis", redis_prefix=prefix,
                            node_id=f"replica-{len(brokers)}", **overrides)
        broker, recorder = RedisBroker(settings), Recorder()
        await broker.start(recorder.deliver, recorder.deliver_event)
        brokers.append(broker)
        return broker, recorder

    yield make
    for broker in brokers:
        await broker.close()


# --- order, isolation, format ---------------------------------------------------------


async def test_publish_returns_consecutive_seqs_per_room(make_broker):
    broker, _ = await make_broker()
    assert [await publish(broker, "a", str(i)) for i in range(3)] == [1, 2, 3]
    assert await publish(broker, "b", "x") == 1
    assert broker.ready


async def test_payload_is_byte_for_byte_encode_message(make_broker):
    broker, rec = await make_broker()
    await broker.subscribe("fmt")
    texts = ['quote " back \\ slash / done', "é ü 中文 😀", "ctl \x01 \t \n \x7f", "<b>&amp;</b>"]
    for i, text in enumerate(texts):
        await publish(broker, "fmt", text, sender="Zoë \"z\"", cid=None if i % 2 else f"c{i}")
    await eventually(lambda: len(rec.seqs("fmt")) == len(texts), message="all messages")
    for i, payload in enumerate(rec.payloads("fmt")):
        frame = orjson.loads(payload)
        epoch = frame["id"].rsplit("-", 1)[0]
        assert payload == encode_message("fmt", i + 1, epoch, 'Zoë "z"', texts[i], frame["ts"],
                                         None if i % 2 else f"c{i}")
        assert abs(frame["ts"] - time.time() * 1000) < 60_000  # server time in ms


async def test_two_replicas_deliver_every_message_in_the_same_order(make_broker):
    (a, rec_a), (b, rec_b) = await make_broker(), await make_broker()
    await a.subscribe("lobby")
    await b.subscribe("lobby")
    # Both replicas publish concurrently; Redis alone decides the order.
    results = await asyncio.gather(*(publish(a if i % 2 else b, "lobby", f"m{i}")
                                     for i in range(40)))
    assert sorted(results) == list(range(1, 41))
    for rec in (rec_a, rec_b):
        await eventually(lambda rec=rec: len(rec.seqs("lobby")) == 40, message="40 deliveries")
    assert rec_a.seqs("lobby") == list(range(1, 41))
    assert rec_a.payloads("lobby") == rec_b.payloads("lobby")


async def test_a_replica_receives_only_the_rooms_it_subscribed(make_broker, redis, prefix):
    (a, rec_a), (c, rec_c) = await make_broker(), await make_broker()
    await a.subscribe("busy")
    await c.subscribe("quiet")
    busy, quiet = RoomKeys(prefix, "busy").channel, RoomKeys(prefix, "quiet").channel
    assert dict(await redis.pubsub_numsub(busy, quiet)) == {busy.encode(): 1, quiet.encode(): 1}
    for i in range(10):
        await publish(a, "busy", f"m{i}")
    # Redis delivers to one connection in publish order: once the later "quiet"
    # message is in, any "busy" traffic for c would have arrived before it.
    await publish(a, "quiet", "sentinel")
    await eventually(lambda: rec_c.seqs("quiet") == [1], message="sentinel")
    await eventually(lambda: len(rec_a.seqs("busy")) == 10, message="busy traffic on a")
    assert [r for r, _, _ in rec_c.messages] == ["quiet"]

    await c.unsubscribe("quiet")
    deadline = time.monotonic() + 5
    while dict(await redis.pubsub_numsub(quiet))[quiet.encode()] != 0:
        assert time.monotonic() < deadline, "UNSUBSCRIBE never reached Redis"
        await asyncio.sleep(0.01)
    await a.subscribe("quiet")
    await publish(a, "quiet", "after")
    await eventually(lambda: rec_a.seqs("quiet") == [2], message="a delivers after subscribing")
    assert rec_c.seqs("quiet") == [1]


# --- history --------------------------------------------------------------------------


async def test_history_tail_since_and_wrong_epoch(make_broker):
    broker, _ = await make_broker(history_size=20, history_on_join=5)
    empty = await broker.history("h", None, None, 5)
    assert (empty.last_seq, list(empty.messages), empty.continuity_lost) == (0, [], False)
    for i in range(8):
        await publish(broker, "h", str(i))
    latest = await broker.history("h", None, None, 3)
    assert latest.epoch == empty.epoch  # the epoch a joiner saw is the one messages get
    assert seqs(latest) == [6, 7, 8] and latest.last_seq == 8 and not latest.continuity_lost
    resumed = await broker.history("h", 2, latest.epoch, 3)
    assert seqs(resumed) == [3, 4, 5, 6, 7, 8] and not resumed.continuity_lost
    assert seqs(await broker.history("h", 8, latest.epoch, 3)) == []
    assert seqs(await broker.history("h", 0, None, 3)) == list(range(1, 9))
    for since, epoch in ((4, "deadbeef"), (9, latest.epoch)):
        lost = await broker.history("h", since, epoch, 3)
        assert seqs(lost) == [6, 7, 8] and lost.continuity_lost


async def test_the_stream_stays_capped_at_history_size(make_broker, redis, prefix):
    broker, _ = await make_broker(history_size=5, history_on_join=5)
    for i in range(12):
        await publish(broker, "cap", str(i))
    assert await redis.xlen(RoomKeys(prefix, "cap").stream) == 5
    latest = await broker.history("cap", None, None, 5)
    assert seqs(latest) == [8, 9, 10, 11, 12]
    assert seqs(await broker.history("cap", 7, latest.epoch, 5)) == [8, 9, 10, 11, 12]
    trimmed = await broker.history("cap", 3, latest.epoch, 2)
    assert seqs(trimmed) == [11, 12] and trimmed.continuity_lost


# --- gaps and reconnects --------------------------------------------------------------


async def test_a_lost_pubsub_message_is_backfilled_from_the_stream(make_broker, redis, prefix):
    broker, rec = await make_broker()
    await broker.subscribe("gap")
    await publish(broker, "gap", "one")
    await eventually(lambda: rec.seqs("gap") == [1])
    # Store seq 2 the way publish does, but without its PUBLISH: a lost notification.
    keys = RoomKeys(prefix, "gap")
    epoch = (await redis.get(keys.epoch)).decode()
    lost = encode_message("gap", 2, epoch, "bob", "lost", 1, None)
    assert await redis.incr(keys.seq) == 2
    await redis.xadd(keys.stream, {"payload": lost}, id="2-0")
    assert await publish(broker, "gap", "three") == 3
    await eventually(lambda: len(rec.seqs("gap")) >= 3)
    assert rec.seqs("gap") == [1, 2, 3]
    assert rec.payloads("gap")[1] == lost


async def test_reconnect_resubscribes_and_backfills_what_was_missed(make_broker, redis, prefix):
    (sub, rec), (pub, _) = await make_broker(), await make_broker()
    await sub.subscribe("rc")
    await publish(pub, "rc", "before")
    await eventually(lambda: rec.seqs("rc") == [1])
    name = f"{prefix}:pubsub:replica-0:0"  # <prefix>:pubsub:<node>:<shard>
    [client] = [c for c in await redis.client_list(_type="pubsub") if c["name"] == name]
    await redis.client_kill_filter(_id=client["id"])
    for i in range(3):  # published while sub's pub/sub connection is gone
        await publish(pub, "rc", f"missed {i}")
    await eventually(lambda: len(rec.seqs("rc")) >= 4, message="backfill after reconnect")
    await eventually(lambda: sub.ready, message="ready again")
    await publish(pub, "rc", "after")
    await eventually(lambda: len(rec.seqs("rc")) >= 5, message="live delivery after reconnect")
    assert rec.seqs("rc") == [1, 2, 3, 4, 5]


async def test_lost_room_data_restarts_seq_tracking_instead_of_dropping(make_broker, redis,
                                                                        prefix):
    (sub, rec), (pub, _) = await make_broker(), await make_broker()
    await sub.subscribe("wiped")
    for text in ("one", "two"):
        await publish(pub, "wiped", text)
    await eventually(lambda: rec.seqs("wiped") == [1, 2])
    await redis.delete(*RoomKeys(prefix, "wiped").stored)  # eviction, FLUSHALL, failover
    for text in ("new one", "new two", "new three"):
        await publish(pub, "wiped", text)
    await eventually(lambda: len(rec.seqs("wiped")) >= 5, message="the new epoch's messages")
    assert rec.seqs("wiped") == [1, 2, 1, 2, 3]
    epochs = {orjson.loads(p)["id"].rsplit("-", 1)[0] for p in rec.payloads("wiped")}
    assert len(epochs) == 2


async def test_history_returns_after_its_messages_reached_the_subscribed_node(make_broker):
    # A joiner drops live messages its history covers only until history() returns.
    (a, rec_a), (b, _) = await make_broker(), await make_broker()
    await a.subscribe("race")

    async def talk():
        for i in range(300):
            await publish(b, "race", str(i))

    publisher = asyncio.create_task(talk())
    checked = 0
    try:
        while not publisher.done():
            history = await a.history("race", None, None, 10)
            assert max(rec_a.seqs("race"), default=0) >= history.last_seq
            checked += history.last_seq > 0
    finally:
        publisher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await publisher
    assert checked > 10


# --- presence and expiry --------------------------------------------------------------


async def test_presence_counts_across_replicas_and_events_are_not_stored(make_broker):
    (a, rec_a), (b, rec_b) = await make_broker(), await make_broker()
    await a.subscribe("p")
    await b.subscribe("p")
    assert await a.presence("p", +1) == 1
    assert await b.presence("p", +1) == 2
    assert await b.presence("p", -1) == 1
    assert await a.presence("p", -5) == 0  # floor at 0
    await b.publish_event("p", b'{"type":"presence"}')
    for rec in (rec_a, rec_b):
        await eventually(lambda rec=rec: rec.events == [("p", b'{"type":"presence"}')])
    history = await a.history("p", None, None, 10)
    assert history.last_seq == 0 and list(history.messages) == []
    assert rec_a.messages == []


async def test_a_replica_that_stops_renewing_drops_out_of_the_count(make_broker, prefix, redis):
    # A replica killed without its leaves (SIGKILL) stops renewing its lease: its members stop
    # counting once the lease runs out, while a live replica's lease is renewed and holds.
    live, _ = await make_broker()
    settings = Settings(broker="redis", redis_url=REDIS_URL, redis_prefix=prefix, node_id="doomed")
    doomed = RedisBroker(settings)
    await doomed.start(Recorder().deliver, Recorder().deliver_event)
    [shard] = doomed._shards
    shard._lease_ms = 800
    assert await doomed.presence("crash", +1) == 1
    assert await doomed.presence("crash", +1) == 2
    for task in shard._tasks:  # the process dies: no more renewals, no leaves
        task.cancel()
    assert await live.presence("crash", +1) == 3
    await asyncio.sleep(1.2)  # past the doomed lease; the live one (15 s) holds
    assert await live.presence("crash", 0) == 1
    assert await redis.hkeys(f"{prefix}:room:{{crash}}:members") == [b"replica-0"]
    await doomed.close()


async def test_counts_come_back_after_redis_loses_them(make_broker, prefix, redis):
    broker, _ = await make_broker(room_idle_seconds=1)  # renewals every 0.25 s
    assert await broker.presence("lost", +1) == 1
    assert await broker.presence("lost", +1) == 2
    key = f"{prefix}:room:{{lost}}:members"
    await redis.delete(key)  # as after a Redis restart
    count = await eventually(lambda: redis.hget(key, "replica-0"), 5, "the renewal to re-assert the count")
    assert count.startswith(b"2:")
    assert await broker.presence("lost", 0) == 2


async def test_idle_rooms_expire_and_come_back_with_a_new_epoch(make_broker, redis, prefix):
    broker, _ = await make_broker(room_idle_seconds=1)
    await broker.subscribe("kept")
    await publish(broker, "kept", "x")
    await publish(broker, "idle", "x")
    old = await broker.history("idle", None, None, 10)
    idle = RoomKeys(prefix, "idle")
    assert 0 < await redis.pttl(idle.stream) <= 1000
    deadline = time.monotonic() + 5
    while await redis.exists(idle.epoch, idle.seq, idle.stream):
        assert time.monotonic() < deadline, "idle room never expired"
        await asyncio.sleep(0.05)
    # Both rooms were last written together: only renewal keeps "kept" alive.
    kept = RoomKeys(prefix, "kept")
    assert await redis.exists(kept.epoch, kept.seq, kept.stream) == 3
    again = await broker.history("idle", 1, old.epoch, 10)
    assert again.continuity_lost and again.epoch != old.epoch and again.last_seq == 0
    assert await publish(broker, "idle", "y") == 1


# --- Redis outages --------------------------------------------------------------------


@pytest.fixture
def throwaway_redis(tmp_path):
    server = ThrowawayRedis(tmp_path)
    yield server
    server.kill()


async def test_outage_fails_fast_then_recovers_with_a_new_epoch(make_broker, throwaway_redis):
    throwaway_redis.start()
    broker, rec = await make_broker(redis_url=throwaway_redis.url)
    assert broker.ready
    await broker.subscribe("r")
    await publish(broker, "r", "one")
    await publish(broker, "r", "two")
    await eventually(lambda: rec.seqs("r") == [1, 2])
    before = await broker.history("r", None, None, 10)

    throwaway_redis.kill()
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable):
        await publish(broker, "r", "lost")
    assert time.monotonic() - started < 2.5
    with pytest.raises(BrokerUnavailable):
        await broker.presence("r", 1)
    await eventually(lambda: not broker.ready, 2.5, "ready to turn false")

    throwaway_redis.start()  # same port, empty: Redis lost its data
    await eventually(lambda: broker.ready, 10, "recovery without help")
    assert await publish(broker, "r", "fresh") == 1
    await eventually(lambda: rec.seqs("r") == [1, 2, 1], message="delivery in the new epoch")
    after = await broker.history("r", 2, before.epoch, 10)
    assert after.continuity_lost and after.epoch != before.epoch
    assert [orjson.loads(p)["text"] for p in after.messages] == ["fresh"]


async def test_start_without_redis_is_not_ready_and_publish_fails_fast(make_broker):
    started = time.monotonic()
    broker, _ = await make_broker(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    assert not broker.ready and time.monotonic() - started < 3
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable):
        await publish(broker, "r", "x")
    with pytest.raises(BrokerUnavailable):
        await broker.subscribe("r")
    assert time.monotonic() - started < 2.5


# --- batching, bursts, idempotent resends ----------------------------------------------


def evalsha_calls(redis: ThrowawayRedis) -> int:
    stats = redis.command("INFO", "commandstats").decode()
    for line in stats.splitlines():
        if line.startswith("cmdstat_evalsha:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


async def test_messages_of_one_tick_reach_redis_in_one_script_call(make_broker, throwaway_redis):
    throwaway_redis.start()
    broker, rec = await make_broker(redis_url=throwaway_redis.url)
    for room in ("a", "b", "c"):
        await broker.subscribe(room)
    before = evalsha_calls(throwaway_redis)
    seqs = await asyncio.gather(*(publish(broker, room, f"{room}{i}")
                                  for i in range(50) for room in ("a", "b", "c")))
    assert evalsha_calls(throwaway_redis) == before + 1  # 150 messages, 3 rooms, one round trip
    assert seqs == [i + 1 for i in range(50) for _ in range(3)]
    await eventually(lambda: all(rec.seqs(r) == list(range(1, 51)) for r in "abc"))
    assert [orjson.loads(p)["text"] for p in rec.payloads("b")] == [f"b{i}" for i in range(50)]


async def test_a_burst_beyond_any_pool_size_is_never_refused(make_broker):
    # 2,000 publishes in flight at once (a busy replica's tick, or 2,000 senders waiting on
    # one slow reply): one pipelined connection, no pool to exhaust, nothing refused.
    broker, rec = await make_broker()
    await broker.subscribe("burst")
    results = await asyncio.gather(*(publish(broker, "burst", str(i)) for i in range(2000)),
                                   return_exceptions=True)
    assert results == list(range(1, 2001))
    await eventually(lambda: rec.seqs("burst") == list(range(1, 2001)))


async def test_a_resent_cid_is_acknowledged_with_the_original_and_stored_once(make_broker, redis,
                                                                              prefix):
    broker, rec = await make_broker()
    await broker.subscribe("idem")
    first = await broker.publish(Draft("idem", "alice", "hi", "c-1", time.perf_counter()))
    again = await broker.publish(Draft("idem", "alice", "hi", "c-1", time.perf_counter()))
    other = await broker.publish(Draft("idem", "bob", "hi", "c-1", time.perf_counter()))
    assert (first.seq, first.duplicate) == (1, False)
    assert (again.seq, again.duplicate) == (1, True)
    assert orjson.loads(again.original) == {**orjson.loads(rec.payloads("idem")[0]), "cid": "c-1"}
    assert (other.seq, other.duplicate) == (2, False)  # a cid is the sender's own
    await eventually(lambda: rec.seqs("idem") == [1, 2])
    assert await redis.xlen(RoomKeys(prefix, "idem").stream) == 2


async def test_the_dedupe_window_is_the_last_history_size_seqs(make_broker, redis, prefix):
    broker, _ = await make_broker(history_size=5, history_on_join=5)
    for i in range(200):
        await broker.publish(Draft("win", "alice", str(i), f"c{i}", time.perf_counter()))
    assert await redis.zcard(RoomKeys(prefix, "win").cids) <= 5 + 64  # trimmed every 64 seqs
    recent = await broker.publish(Draft("win", "alice", "196", "c196", time.perf_counter()))
    assert (recent.seq, recent.duplicate) == (197, True)
    old = await broker.publish(Draft("win", "alice", "190", "c190", time.perf_counter()))
    assert (old.seq, old.duplicate) == (201, False)  # seq 191 is out of the window: a new message


async def test_history_size_0_keeps_no_dedupe_window(make_broker):
    broker, _ = await make_broker(history_size=0, history_on_join=0)
    seqs = [(await broker.publish(Draft("none", "a", "x", "same", time.perf_counter()))).seq
            for _ in range(2)]
    assert seqs == [1, 2]


async def test_unavailable_during_a_stall_then_a_resend_is_not_stored_twice(make_broker, tmp_path):
    # Redis stalls (DEBUG SLEEP) longer than the deadline: the publish is reported unavailable
    # although Redis runs it once awake. The client's resend with the same cid must not
    # store it a second time.
    redis = ThrowawayRedis(tmp_path, "--enable-debug-command", "yes").start()
    try:
        broker, rec = await make_broker(redis_url=redis.url)
        await broker.subscribe("stall")
        sleeper = asyncio.create_task(asyncio.to_thread(redis.command, "DEBUG", "SLEEP", "2.5"))
        await asyncio.sleep(0.2)
        with pytest.raises(BrokerUnavailable):
            await broker.publish(Draft("stall", "alice", "once", "c-9", time.perf_counter()))
        await sleeper
        resent = await eventually(lambda: _try_publish(broker, Draft("stall", "alice", "once",
                                                                     "c-9", time.perf_counter())),
                                  10, "the broker to reconnect after the stall")
        assert (resent.seq, resent.duplicate) == (1, True)
        await eventually(lambda: rec.seqs("stall") == [1])
        history = await broker.history("stall", None, None, 10)
        assert [orjson.loads(p)["text"] for p in history.messages] == ["once"]
    finally:
        redis.kill()


async def _try_publish(broker, draft):
    try:
        return await broker.publish(draft)
    except BrokerUnavailable:
        return None


# --- two real replicas ----------------------------------------------------------------


async def test_two_servers_share_a_room_in_one_order(prefix, start_server):
    args = ("--broker", "redis", "--redis-url", REDIS_URL, "--redis-prefix", prefix)
    s1, s2 = start_server(*args), start_server(*args)

    async def next_of(ws, kind: str, **fields) -> dict:
        async with asyncio.timeout(5):
            while True:
                frame = orjson.loads((await ws.receive()).data)
                if frame["type"] == kind and fields.items() <= frame.items():
                    return frame

    async with aiohttp.ClientSession() as http:
        for server in (s1, s2):
            async with http.get(server.http_url + "/readyz") as response:
                assert response.status == 200
        alice = await http.ws_connect(s1.ws_url("shared", "name=alice"))
        await next_of(alice, "history")
        bob = await http.ws_connect(s2.ws_url("shared", "name=bob"))
        history = await next_of(bob, "history")
        joined = await next_of(alice, "presence", name="bob")  # announced through Redis
        assert (joined["event"], joined["count"]) == ("join", 2)

        for i in range(15):
            await alice.send_str(orjson.dumps({"type": "message", "text": f"a{i}"}).decode())
            await bob.send_str(orjson.dumps({"type": "message", "text": f"b{i}"}).decode())
        seen = {}
        for name, ws in (("alice", alice), ("bob", bob)):
            seen[name] = [await next_of(ws, "message") for _ in range(30)]
        assert [m["seq"] for m in seen["alice"]] == list(range(1, 31))
        assert seen["alice"] == seen["bob"]
        assert sorted(m["text"] for m in seen["alice"]) == sorted(
            [f"a{i}" for i in range(15)] + [f"b{i}" for i in range(15)])

        query = f"name=carol&since=20&epoch={history['epoch']}"
        late = await http.ws_connect(s2.ws_url("shared", query))
        resumed = await next_of(late, "history")
        assert not resumed["continuity_lost"]
        assert [m["seq"] for m in resumed["messages"]] == list(range(21, 31))
        for ws in (alice, bob, late):
            await ws.close()


async def test_a_resend_through_the_server_is_acknowledged_to_the_sender_alone(prefix, start_server):
    server = start_server("--broker", "redis", "--redis-url", REDIS_URL, "--redis-prefix", prefix)
    async with aiohttp.ClientSession() as http:
        alice = await http.ws_connect(server.ws_url("idem", "name=alice"))
        bob = await http.ws_connect(server.ws_url("idem", "name=bob"))
        for ws in (alice, bob):
            await _frame(ws, "history")
        for _ in range(2):  # the resend, as after an `unavailable` whose message was stored
            await alice.send_json({"type": "message", "text": "once", "cid": "k1"})
        await alice.send_json({"type": "message", "text": "next", "cid": "k2"})
        to_alice = [await _frame(alice, "message") for _ in range(3)]
        # The acknowledgement of the resend may come after seq 2: the server reads the next
        # frame without waiting for Redis, and the client matches acknowledgements by cid.
        assert sorted((m["seq"], m["cid"]) for m in to_alice) == [(1, "k1"), (1, "k1"), (2, "k2")]
        to_bob = [await _frame(bob, "message") for _ in range(2)]
        assert [(m["seq"], m["text"]) for m in to_bob] == [(1, "once"), (2, "next")]
        for ws in (alice, bob):
            await ws.close()
    assert server.metric("scalechat_messages_deduplicated_total") == 1
    assert server.metric("scalechat_messages_received_total") == 2


async def test_shutdown_announces_every_leave_before_the_broker_closes(prefix, start_server, redis):
    server = start_server("--broker", "redis", "--redis-url", REDIS_URL, "--redis-prefix", prefix)
    watcher_server = start_server("--broker", "redis", "--redis-url", REDIS_URL,
                                  "--redis-prefix", prefix)
    members = f"{prefix}:room:{{bye}}:members"
    async with aiohttp.ClientSession() as http:
        watcher = await http.ws_connect(watcher_server.ws_url("bye", "name=watcher"))
        await _frame(watcher, "history")
        leaving = []
        for i in range(3):
            ws = await http.ws_connect(server.ws_url("bye", f"name=u{i}"))
            await _frame(ws, "history")
            leaving.append(ws)
        await eventually(lambda: redis.hlen(members), 5, "presence in Redis")
        assert server.stop() == 0
        for ws in leaving:
            while (await ws.receive(timeout=5)).type is aiohttp.WSMsgType.TEXT:
                pass  # presence frames queued before the close
            assert ws.close_code == 1001
        leaves = []
        while len(leaves) < 3:
            frame = await _frame(watcher, "presence")
            if frame["event"] == "leave":
                leaves.append(frame)
        assert sorted(f["name"] for f in leaves) == ["u0", "u1", "u2"]
        assert leaves[-1]["count"] == 1  # the watcher alone
        await watcher.close()
    assert "not announced" not in server.log()
    assert "broker unavailable" not in server.log()


async def _frame(ws, kind: str) -> dict:
    async with asyncio.timeout(5):
        while True:
            frame = await ws.receive_json()
            if frame["type"] == kind:
                return frame
