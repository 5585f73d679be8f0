"""The local cluster with real components: replicas, Redis, nginx, Prometheus.

Tests that kill nothing share one module-scoped cluster (2 replicas on the
Redis at 127.0.0.1:6379 under a fresh prefix); the crash tests start their own.
Every cluster is taken down in a ``finally``; every wait polls with a deadline.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import aiohttp
import orjson
import pytest

from support import eventually

from scalechat.cluster import Cluster, UsageError
from scalechat.cluster import nginx, redis_server
from scalechat.cluster.processes import ProcessRecord, find_program, free_port, http_status, kill
from scalechat.cluster.redis_server import RedisPlan
from scalechat.cluster.state import ClusterState

pytestmark = pytest.mark.timeout(60)
CLI = [sys.executable, "-m", "scalechat.cluster.cluster_cli"]


# --- helpers --------------------------------------------------------------------------


async def http_eventually(url: str, status: int, timeout: float, message: str) -> None:
    await eventually(lambda: http_status(url, 0.5) == status, timeout, message)


def describe(clients) -> str:
    """What each client got, for failure messages."""
    return "; ".join(f"{c.name} on {c.nodes}: seqs {[m['seq'] for m in c.messages]}, "
                     f"errors {[e['code'] for e in c.errors]}, drops {c.drops}" for c in clients)


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def where(redis_url: str) -> tuple[str, int]:
    """Host and port of a Redis URL, however the server spells it back."""
    parts = urllib.parse.urlsplit(redis_url)
    return parts.hostname, parts.port


def room_name(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}"


def gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (a zombie counts as gone)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in (b"Z", b"X")


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


class RoomClient:
    """One member of a room. Records every message frame it gets (history included); when
    ``resume``, reconnects after a drop with ``since`` and ``epoch`` of the last one seen."""

    def __init__(self, session: aiohttp.ClientSession, url: str, name: str, *,
                 resume: bool = True, since: int | None = None, epoch: str | None = None) -> None:
        self.session, self.url, self.name, self.resume = session, url, name, resume
        self.messages: list[dict] = []
        self.histories: list[dict] = []
        self.errors: list[dict] = []
        self.epoch, self.last_seq = epoch, since
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.connected = asyncio.Event()
        self.drops = 0
        self._task: asyncio.Task | None = None

    @property
    def nodes(self) -> list[str]:
        """The replica of each connection, from its history frame."""
        return [h["node"] for h in self.histories]

    @property
    def cids(self) -> list[str]:
        return [m["cid"] for m in self.messages]

    async def start(self) -> RoomClient:
        self._task = asyncio.create_task(self._run())
        await eventually(lambda: self.connected.is_set() or self._task.done(), 10,
                         f"{self.name} to join")
        if self._task.done():
            self._task.result()  # raise what failed
        return self

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.ws is not None:
            await self.ws.close()

    async def _run(self) -> None:
        while True:
            params = {"name": self.name}
            if self.epoch is not None:
                params.update(since=str(self.last_seq or 0), epoch=self.epoch)
            try:
                ws = await self.session.ws_connect(self.url, params=params)
            except (aiohttp.ClientError, OSError):
                if not self.resume:
                    raise
                await asyncio.sleep(0.05)  # retry pace while nginx fails over
                continue
            self.ws = ws
            async for msg in ws:
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    break
                self._on_frame(orjson.loads(msg.data))
            self.ws = None
            self.connected.clear()
            self.drops += 1
            await ws.close()
            if not self.resume:
                return

    def _on_frame(self, frame: dict) -> None:
        if frame["type"] == "history":
            self.histories.append(frame)
            self.epoch = frame["epoch"]
            for message in frame["messages"]:
                self._on_message(message)
            if self.last_seq is None:
                self.last_seq = 0  # joined a room with no messages yet
            self.connected.set()
        elif frame["type"] == "message":
            self._on_message(frame)
        elif frame["type"] == "error":
            self.errors.append(frame)

    def _on_message(self, message: dict) -> None:
        self.messages.append(message)
        self.epoch, self.last_seq = message["id"].rsplit("-", 1)[0], message["seq"]


class Sender:
    """Sends numbered messages through a RoomClient. A message counts once its echo came
    back (acked); it is sent again only when an ``unavailable`` error frame names it."""

    def __init__(self, client: RoomClient) -> None:
        self.client = client
        self.sent = 0
        self._errors_seen = 0

    def acked(self) -> list[str]:
        prefix = f"{self.client.name}-"
        return [m["cid"] for m in self.client.messages
                if m["from"] == self.client.name and (m["cid"] or "").startswith(prefix)]

    async def send_new(self) -> str:
        cid = f"{self.client.name}-{self.sent}"
        self.sent += 1
        await self._send(cid)
        return cid

    async def resend_rejected(self) -> int:
        errors = self.client.errors[self._errors_seen:]
        self._errors_seen += len(errors)
        acked = set(self.acked())
        rejected = [e["cid"] for e in errors if e["code"] == "unavailable" and e.get("cid")
                    and e["cid"] not in acked]
        for cid in rejected:
            await self._send(cid)
        return len(rejected)

    async def run(self, stop: asyncio.Event, interval: float) -> None:
        while not stop.is_set():
            await self.send_new()
            await self.resend_rejected()
            await asyncio.sleep(interval)  # the traffic's pace

    async def _send(self, cid: str) -> None:
        async with asyncio.timeout(15):
            await self.client.connected.wait()
        ws = self.client.ws
        if ws is None:
            return  # dropped meanwhile: never sent, never acked
        try:
            await ws.send_str(orjson.dumps({"type": "message", "text": f"text {cid}",
                                            "cid": cid}).decode())
        except (ConnectionError, aiohttp.ClientError):
            pass  # the connection broke under it: not acked, so not counted


async def node_of(session: aiohttp.ClientSession, url: str) -> str:
    """The replica that serves ``url``, from the history frame."""
    async with session.ws_connect(url) as ws:
        frame = await ws.receive_json(timeout=10)
        assert frame["type"] == "history", frame
        return frame["node"]


async def upgrade_node(url: str) -> str:
    """X-Scalechat-Node of the 101 that answers a bare upgrade request to ``url``."""
    parts = urllib.parse.urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(f"GET {parts.path}?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                     f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                     "Sec-WebSocket-Version: 13\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    finally:
        writer.close()
    status, *lines = head.decode().split("\r\n")
    assert status.startswith("HTTP/1.1 101"), status
    headers = dict(line.split(":", 1) for line in lines if line)
    return {k.lower(): v.strip() for k, v in headers.items()}["x-scalechat-node"]


# --- the shared cluster -----------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = Cluster.up(tmp_path_factory.mktemp("cluster"), replicas=2, port=0)
    try:
        yield cluster
    finally:
        cluster.down()


async def test_a_room_stays_on_one_replica_whatever_the_query(cluster):
    balancer = cluster.status()["balancer"]
    queries = ["", "?name=a", "?name=b&since=3", "?since=0&epoch=x&name=c", "?name=d&z=1&since=7"]
    async with aiohttp.ClientSession() as session:
        for room in (room_name("stick"), room_name("stick"), room_name("stick")):
            url = balancer.format(room=room)
            nodes = {await node_of(session, url + query) for query in queries}
            nodes |= {await upgrade_node(url + query) for query in queries}
            assert len(nodes) == 1, f"room {room} split over {nodes}"


async def test_rooms_spread_over_every_replica(cluster):
    balancer = cluster.status()["balancer"]
    async with aiohttp.ClientSession() as session:
        nodes = await asyncio.gather(*(node_of(session, balancer.format(room=room_name(f"r{i}")))
                                       for i in range(50)))
    split = Counter(nodes)
    print(f"50 rooms over the replicas: {dict(sorted(split.items()))}")
    assert set(split) == {r.node for r in cluster.replicas}


async def test_members_on_different_replicas_see_one_order(cluster):
    room = room_name("shared")
    replica_urls = [r["url"].format(room=room) for r in cluster.status()["replicas"]]
    async with aiohttp.ClientSession() as session:
        clients = [RoomClient(session, replica_urls[i % 2], f"m{i}", resume=False) for i in range(4)]
        try:
            for client in clients:
                await client.start()
            assert [c.nodes[0] for c in clients] == ["replica-0", "replica-1"] * 2
            senders = [Sender(c) for c in clients[:2]]
            for _ in range(15):  # 30 messages: within the default burst of 40
                await asyncio.gather(*(s.send_new() for s in senders))
            await eventually(lambda: all(len(c.messages) == 30 for c in clients), 10,
                             "every member to get all 30 messages")
            first = [(m["seq"], m["cid"]) for m in clients[0].messages]
            assert [seq for seq, _ in first] == list(range(1, 31))
            for client in clients[1:]:
                assert [(m["seq"], m["cid"]) for m in client.messages] == first
            assert all(c.drops == 0 and not c.errors for c in clients)
        finally:
            await asyncio.gather(*(c.close() for c in clients))


async def test_prometheus_scrapes_every_replica_directly(cluster):
    status = cluster.status()
    prometheus = status["prometheus"]
    wanted = {r["metrics_url"] for r in status["replicas"]}

    def targets_up():
        active = get_json(f"{prometheus}/api/v1/targets")["data"]["activeTargets"]
        return {t["scrapeUrl"] for t in active if t["health"] == "up"} == wanted

    await eventually(targets_up, 30, "Prometheus to scrape every replica")
    query = urllib.parse.quote("scalechat_messages_delivered_total")

    def series():
        result = get_json(f"{prometheus}/api/v1/query?query={query}")["data"]["result"]
        return result if len(result) == len(wanted) else None

    result = await eventually(series, 30, "one delivered-total series per replica")
    assert len({s["metric"]["instance"] for s in result}) == len(wanted)
    assert {s["metric"]["node"] for s in result} == {r.node for r in cluster.replicas}


def test_status_json_names_every_url(cluster):
    done = cli("status", "--json", "--run-dir", str(cluster.run_dir))
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert set(status) >= {"balancer", "http", "replicas", "prometheus", "redis", "routing"}
    assert status["routing"] == "room-hash"
    assert status["balancer"] == f"ws://127.0.0.1:{cluster.state.port}/ws/{{room}}"
    assert http_status(f"{status['http']}/healthz") == 200
    assert http_status(f"{status['prometheus']}/-/ready") == 200
    assert redis_server.ping(status["redis"])
    assert [r["node"] for r in status["replicas"]] == ["replica-0", "replica-1"]
    for replica in status["replicas"]:
        assert replica["running"] and replica["pid"] > 0
        assert replica["url"] == replica["http"].replace("http://", "ws://") + "/ws/{room}"
        assert http_status(f"{replica['http']}/readyz") == 200
        assert http_status(replica["metrics_url"]) == 200


def test_bad_input_gets_one_line_errors(cluster, tmp_path):
    run_dir = str(tmp_path / "other")
    cases = [
        (["up", "--replicas", "0", "--run-dir", run_dir], 2, "replicas must be between 1 and 64"),
        (["up", "--port", str(cluster.state.port), "--run-dir", run_dir], 1, "is not free"),
        (["up", "--nginx-bin", "/nonexistent/nginx", "--run-dir", run_dir], 1,
         "apt-get install nginx"),
        (["up", "--port", "0", "--run-dir", str(cluster.run_dir)], 1, "already running"),
        (["down", "--run-dir", run_dir], 1, "no cluster in"),
        (["up", "--redis-shards", "0", "--run-dir", run_dir], 2,
         "--redis-shards must be between 1 and 16, got 0"),
        (["up", "--redis-url", redis_server.DEFAULT_URL, "--redis-shards", "2",
          "--run-dir", run_dir], 2, "--redis-shards 2 does not match the 1 URL(s) of --redis-url"),
        (["up", "--redis-url", f"{redis_server.DEFAULT_URL},", "--run-dir", run_dir], 2,
         "--redis-url has an empty entry (shard 1)"),
    ]
    for args, code, text in cases:
        done = cli(*args)
        assert done.returncode == code, (args, done.stdout, done.stderr)
        assert text in done.stderr and "Traceback" not in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert all(r["running"] for r in cluster.status()["replicas"])


# --- Redis shards -----------------------------------------------------------------------


@pytest.mark.parametrize("url, own, shards, expected", [
    (None, False, None, RedisPlan(shared=(redis_server.DEFAULT_URL,))),
    (None, False, 1, RedisPlan(shared=(redis_server.DEFAULT_URL,))),
    (None, True, None, RedisPlan(own=1)),
    (None, True, 3, RedisPlan(own=3)),
    (None, False, 3, RedisPlan(own=3)),
    ("redis://a:6379/0, redis://b:6379/0", False, None,
     RedisPlan(shared=("redis://a:6379/0", "redis://b:6379/0"))),
    ("redis://a:6379/0,redis://b:6379/0", False, 2,
     RedisPlan(shared=("redis://a:6379/0", "redis://b:6379/0"))),
], ids=["default-shared", "one-shard-shared", "own", "own-3", "shards-imply-own", "url-list",
        "url-list-matching-shards"])
def test_redis_flags_say_which_shards_to_share_or_start(url, own, shards, expected):
    assert redis_server.plan(url, own, shards) == expected


@pytest.mark.parametrize("url, shards, message", [
    (None, 0, "--redis-shards must be between 1 and 16, got 0"),
    (None, 17, "--redis-shards must be between 1 and 16, got 17"),
    ("redis://a:6379/0", 2, "--redis-shards 2 does not match the 1 URL(s) of --redis-url"),
    ("redis://a:6379/0,redis://b:6379/0", 1, "--redis-shards 1 does not match the 2 URL(s)"),
    ("redis://a:6379/0,,redis://b:6379/0", None, "--redis-url has an empty entry (shard 1)"),
    ("redis://a:6379/0,redis://a:6379/0", None, "lists redis://a:6379/0 more than once"),
    ("a:6379", None, "--redis-url entry 'a:6379' is not a redis://, rediss:// or unix:// URL"),
])
def test_redis_flags_that_cannot_work_are_refused_with_the_flag_named(url, shards, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        redis_server.plan(url, False, shards)


def test_a_state_file_from_before_sharding_still_names_its_own_redis(tmp_path):
    proc = ProcessRecord("redis", 4242, 1, ("redis-server",), "redis.log")
    data = ClusterState(tmp_path, 8080, "redis://127.0.0.1:7000/0", "p", None,
                        redis_servers=(proc,)).to_dict()
    del data["redis_servers"]
    data["redis"] = proc.to_dict()
    state = ClusterState.from_dict(data)
    assert state.redis_servers == (proc,) and state.redis == proc
    assert state.redis_urls == ("redis://127.0.0.1:7000/0",)


async def test_two_redis_shards_run_as_two_own_servers_that_every_replica_gets(tmp_path):
    cluster = Cluster.up(tmp_path / "cluster", replicas=2, port=0, redis_shards=2,
                         with_prometheus=False)
    pids = [p.pid for p in cluster.state.processes]
    try:
        status = cluster.status()
        shards = status["redis_shards"]
        urls = [shard["url"] for shard in shards]
        assert [shard["shard"] for shard in shards] == [0, 1] and len(set(urls)) == 2
        assert status["redis"] == ",".join(urls)
        for shard in shards:
            assert shard["process"]["running"] and redis_server.ping(shard["url"])
            assert status["processes"][f"redis-{shard['shard']}"] == shard["process"]
        for replica in status["replicas"]:  # the same shards, in the same order
            got = get_json(f"{replica['http']}/info")["settings"]["redis_url"]
            got = got.split(",") if isinstance(got, str) else got
            assert [where(url) for url in got] == [where(url) for url in urls], replica["node"]
        async with aiohttp.ClientSession() as session:
            client = await RoomClient(session, status["balancer"].format(room=room_name("sharded")),
                                      "s", resume=False).start()
            try:
                sender = Sender(client)
                cid = await sender.send_new()
                await eventually(lambda: cid in sender.acked(), 10,
                                 "the echo through a sharded cluster")
            finally:
                await client.close()
        done = cli("status", "--run-dir", str(cluster.run_dir))
        assert done.returncode == 0, done.stderr
        for shard in shards:
            assert re.search(rf"redis-{shard['shard']}\s+{re.escape(shard['url'])}\s+\(shard "
                             rf"{shard['shard']} of 2;.*own redis-server, pid "
                             rf"{shard['process']['pid']}\)", done.stdout), done.stdout
        done = cli("down", "--run-dir", str(cluster.run_dir))
        assert done.returncode == 0, done.stderr
        assert all(gone(pid) for pid in pids)
        assert not any(redis_server.ping(url, 0.2) for url in urls)
    finally:
        cluster.down()
    assert all(gone(pid) for pid in pids)


# --- routing ----------------------------------------------------------------------------


def test_only_room_hash_routing_hashes(tmp_path):
    layout = nginx.NginxLayout(tmp_path, tmp_path / "logs")
    hashed = nginx.render_config(layout, 8080, [9001, 9002])
    spread = nginx.render_config(layout, 8080, [9001, 9002], nginx.Routing.RANDOM)
    assert "hash $ws_room consistent;" in hashed and "random;" not in hashed
    assert "random;" in spread and "hash $ws_room" not in spread
    with pytest.raises(UsageError, match="routing must be one of room-hash, random"):
        Cluster.up(tmp_path / "cluster", port=0, routing="sticky")
    assert not (tmp_path / "cluster").exists()  # refused before anything started


async def test_random_routing_spreads_the_members_of_one_room(tmp_path):
    cluster = Cluster.up(tmp_path / "cluster", replicas=2, port=0, with_prometheus=False,
                         routing="random")
    try:
        status = cluster.status()
        assert status["routing"] == "random"
        url = status["balancer"].format(room=room_name("spread"))
        async with aiohttp.ClientSession() as session:
            nodes = [await node_of(session, f"{url}?name=m{i}") for i in range(20)]
        split = Counter(nodes)
        print(f"20 members of one room over the replicas: {dict(sorted(split.items()))}")
        # All 20 on one replica by chance: 2 * 2**-20.
        assert set(split) == {r.node for r in cluster.replicas}
        done = cli("status", "--run-dir", str(cluster.run_dir))
        assert done.returncode == 0 and "(random;" in done.stdout, done.stdout
    finally:
        cluster.down()


# --- crashes ----------------------------------------------------------------------------


async def test_clients_of_a_killed_replica_resume_through_nginx(tmp_path):
    cluster = Cluster.up(tmp_path / "cluster", replicas=2, port=0, with_prometheus=False,
                         serve_args=["--rate-limit=1000", "--rate-burst=1000"])
    pids = [p.pid for p in cluster.state.processes]
    clients: list[RoomClient] = []
    try:
        url = cluster.status()["balancer"].format(room=room_name("crash"))
        async with aiohttp.ClientSession() as session:
            try:
                clients = [RoomClient(session, url, f"c{i}") for i in range(4)]
                for client in clients:
                    await client.start()
                victim_node = clients[0].nodes[0]
                assert all(c.nodes == [victim_node] for c in clients)
                victim = next(r.index for r in cluster.replicas if r.node == victim_node)
                senders = [Sender(c) for c in clients[:2]]
                stop = asyncio.Event()
                traffic = [asyncio.create_task(s.run(stop, 0.02)) for s in senders]
                await eventually(lambda: all(len(s.acked()) >= 10 for s in senders), 10,
                                 "traffic before the kill")
                await asyncio.to_thread(cluster.kill_replica, victim)
                await eventually(lambda: all(c.drops and c.connected.is_set() for c in clients),
                                 15, "every client to reconnect")
                assert all(c.nodes[-1] != victim_node for c in clients), [c.nodes for c in clients]
                assert not any(h["continuity_lost"] for c in clients for h in c.histories)
                marks = [len(s.acked()) for s in senders]
                await eventually(lambda: all(len(s.acked()) >= m + 10
                                             for s, m in zip(senders, marks)), 10,
                                 "traffic after the reconnect")
                stop.set()
                await asyncio.gather(*traffic)
                acked = {cid for s in senders for cid in s.acked()}
                await eventually(lambda: all(acked <= set(c.cids) for c in clients), 10,
                                 "every acked message at every client")
                for client in clients:
                    counts = Counter(client.cids)
                    assert all(counts[cid] == 1 for cid in acked), client.name
                    seqs = [m["seq"] for m in client.messages]
                    assert seqs == list(range(1, len(seqs) + 1)), f"{client.name}: gap or repeat"
                print(f"{len(acked)} acked messages; reconnected to {clients[0].nodes[-1]}")
            finally:
                await asyncio.gather(*(c.close() for c in clients))
        replica = await asyncio.to_thread(cluster.restart_replica, victim)
        assert cluster.status()["replicas"][victim]["running"]
        assert http_status(f"{replica.http}/readyz") == 200
        pids = [p.pid for p in cluster.state.processes]
        done = cli("down", "--run-dir", str(cluster.run_dir))
        assert done.returncode == 0, done.stderr
        assert all(gone(pid) for pid in pids)
        assert not (cluster.run_dir / "cluster.json").exists()
    finally:
        cluster.down()
    assert all(gone(pid) for pid in pids)


async def test_redis_outage_and_recovery(tmp_path):
    binary = find_program("redis-server")
    assert binary, "redis-server is not installed"
    port = free_port()
    url = redis_server.url_for(port)
    redis = [redis_server.start(binary, port, tmp_path / "redis", tmp_path / "redis.log")]
    clients: list[RoomClient] = []
    try:
        await eventually(lambda: redis_server.ping(url, 0.2), 10, "the test's Redis")
        cluster = Cluster.up(tmp_path / "cluster", replicas=2, port=0, redis_url=url,
                             with_prometheus=False)
        try:
            status = cluster.status()
            room = room_name("outage")
            readyz = [f"{r['http']}/readyz" for r in status["replicas"]]
            async with aiohttp.ClientSession() as session:
                try:
                    clients = [RoomClient(session, status["replicas"][0]["url"].format(room=room), "a"),
                               RoomClient(session, status["replicas"][1]["url"].format(room=room), "b"),
                               RoomClient(session, status["balancer"].format(room=room), "c")]
                    for client in clients:
                        await client.start()
                    sender = Sender(clients[0])
                    for _ in range(5):
                        await sender.send_new()
                    await eventually(lambda: all(len(c.messages) == 5 for c in clients), 10,
                                     lambda: f"messages before the outage: {describe(clients)}")
                    old_epoch, old_seq = clients[0].epoch, clients[0].last_seq

                    await asyncio.to_thread(kill, redis[0])
                    for probe in readyz:
                        await http_eventually(probe, 503, 10, f"{probe} to report 503")
                    during = [await sender.send_new() for _ in range(3)]
                    await eventually(lambda: {e.get("cid") for e in clients[0].errors
                                              if e["code"] == "unavailable"} >= set(during),
                                     10, "unavailable errors during the outage")
                    assert not set(during) & set(sender.acked())

                    redis.append(redis_server.start(binary, port, tmp_path / "redis",
                                                    tmp_path / "redis.log"))
                    for probe in readyz:
                        await http_eventually(probe, 200, 20, f"{probe} to recover")
                    acked_before = set(sender.acked())
                    await sender.resend_rejected()
                    after = [await sender.send_new() for _ in range(5)]

                    def all_acked():
                        return set(during + after) <= set(sender.acked())

                    deadline = time.monotonic() + 15
                    while not all_acked() and time.monotonic() < deadline:
                        await sender.resend_rejected()  # a stale pooled connection may fail once
                        await asyncio.sleep(0.05)
                    assert all_acked(), (sender.acked(), clients[0].errors)
                    recovered = [cid for cid in sender.acked() if cid not in acked_before]
                    print(f"outage: {len(during)} rejected, {len(clients[0].errors) - len(during)} "
                          f"more rejected after /readyz recovered, {len(recovered)} acked after")

                    def delivered(client):
                        got = [cid for cid in client.cids if cid in set(recovered)]
                        return got if len(got) == len(recovered) else None

                    await eventually(lambda: all(delivered(c) for c in clients), 10,
                                     "members to get every message acked after recovery")
                    for client in clients:
                        assert delivered(client) == recovered, client.name
                        assert client.drops == 0, f"{client.name} was disconnected"
                    assert clients[0].epoch != old_epoch  # Redis lost its data: a new epoch

                    joiner = await RoomClient(session, status["balancer"].format(room=room), "d",
                                              resume=False).start()
                    stale = await RoomClient(session, status["balancer"].format(room=room), "e",
                                             resume=False, since=old_seq, epoch=old_epoch).start()
                    clients += [joiner, stale]
                    assert set(recovered) <= set(joiner.cids)
                    assert stale.histories[0]["continuity_lost"] is True
                    assert stale.histories[0]["epoch"] != old_epoch
                finally:
                    await asyncio.gather(*(c.close() for c in clients))
        finally:
            cluster.down()
    finally:
        for proc in redis:
            kill(proc)
