"""Hostile traffic against the real server process: memory stays within its budget in bytes,
clients that stop reading are gone within a bounded time, presence floods are coalesced,
byte and join rates are limited.

Each test starts ``scalechat serve`` with small limits so the effect shows within
seconds; every wait polls with a deadline, every socket is on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time

import aiohttp
import orjson
import pytest

from support import eventually

pytestmark = pytest.mark.timeout(90)
EMOJI_TEXT = "\U0001F600" * 4000  # 16,000 bytes of UTF-8: the default text limit at 4 bytes each
UNLIMITED = ("--rate-limit", "10000", "--rate-burst", "10000", "--rate-limit-bytes", "1e12")


def rss(server) -> int:
    with open(f"/proc/{server.proc.pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def open_fds(server) -> int:
    return len(os.listdir(f"/proc/{server.proc.pid}/fd"))


async def frames(ws, kind: str, count: int, timeout: float = 10.0) -> list[dict]:
    got = []
    async with asyncio.timeout(timeout):
        while len(got) < count:
            frame = await ws.receive_json()
            if frame["type"] == kind:
                got.append(frame)
    return got


async def fill(session, server, room: str, texts: list[str]) -> None:
    """Post ``texts`` to ``room`` and wait for their echoes."""
    ws = await session.ws_connect(server.ws_url(room, "name=filler"))
    await frames(ws, "history", 1)
    for i, text in enumerate(texts):
        await send(ws, text, str(i))
    await frames(ws, "message", len(texts), 30)
    await ws.close()


def send(ws, text: str, cid: str):
    """UTF-8 as is (aiohttp's send_json would escape each emoji as 12 bytes of ASCII)."""
    return ws.send_str(orjson.dumps({"type": "message", "text": text, "cid": cid}).decode())


def silent_client(port: int, room: str, query: str = "") -> socket.socket:
    """A client that upgrades, then never reads: its receive buffer stays as small as allowed."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    path = f"/ws/{room}" + (f"?{query}" if query else "")
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                  "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    return sock


# --- 1. a memory budget in bytes ------------------------------------------------------------


async def test_history_stays_within_the_budget_and_the_oldest_rooms_lose_it_first(start_server):
    budget = 4 << 20
    server = start_server("--memory-budget-bytes", str(budget), *UNLIMITED)
    async with aiohttp.ClientSession() as session:
        first = None
        for r in range(12):  # 12 rooms x 40 messages x ~16 KB: ~7.7 MB offered to a 4 MB budget
            await fill(session, server, f"room{r}", [EMOJI_TEXT] * 40)
            if first is None:
                ws = await session.ws_connect(server.ws_url("room0", "name=peek"))
                first = (await frames(ws, "history", 1))[0]
                await ws.close()
        assert server.metric("scalechat_memory_budget_bytes") == budget
        assert server.metric("scalechat_history_bytes") <= budget
        assert server.metric("scalechat_history_dropped_total") > 0
        # The least recently active room lost its history first: a resume gets continuity_lost.
        ws = await session.ws_connect(server.ws_url("room0", f"since=1&epoch={first['epoch']}"))
        resumed = (await frames(ws, "history", 1))[0]
        assert resumed["continuity_lost"] and resumed["messages"] == []
        await ws.close()
        # The latest room kept its newest messages, in order, without a gap.
        ws = await session.ws_connect(server.ws_url("room11", "since=0"))
        latest = (await frames(ws, "history", 1))[0]
        seqs = [m["seq"] for m in latest["messages"]]
        assert seqs and seqs == list(range(seqs[0], 41))
        await ws.close()


async def test_a_room_keeps_at_most_history_room_bytes(start_server):
    server = start_server("--history-room-bytes", "100000", *UNLIMITED)
    async with aiohttp.ClientSession() as session:
        await fill(session, server, "capped", [EMOJI_TEXT] * 20)  # 20 x ~16 KB
        ws = await session.ws_connect(server.ws_url("capped", "since=0"))
        history = (await frames(ws, "history", 1))[0]
        kept = sum(len(orjson.dumps(m)) for m in history["messages"])
        assert 0 < kept <= 100000 and history["continuity_lost"]
        assert [m["seq"] for m in history["messages"]][-1] == 20
        await ws.close()
    assert server.metric("scalechat_history_bytes") <= 100000


@pytest.mark.parametrize("text", [
    "\x01" * 4000,  # JSON escapes: 6 bytes each on the wire and in store
    "\U0001F600" * 4000,  # 4 bytes each
    '"\\' * 2000,  # escaped quote and backslash: 2 bytes each
])
async def test_a_message_is_stored_in_the_bytes_it_was_sent_in(start_server, text):
    server = start_server(*UNLIMITED)
    sent = orjson.dumps({"type": "message", "text": text})
    async with aiohttp.ClientSession() as session:
        before = server.metric("scalechat_history_bytes")
        ws = await session.ws_connect(server.ws_url("adversarial"))
        await frames(ws, "history", 1)
        await ws.send_str(sent.decode())
        await frames(ws, "message", 1)
        stored = server.metric("scalechat_history_bytes") - before
        assert stored <= len(sent) + 200  # the text as sent, plus room, seq, id, sender, ts
        await ws.close()


async def test_over_its_bytes_per_second_a_sender_is_read_later_and_loses_nothing(start_server):
    server = start_server("--rate-limit-bytes", "40000", "--rate-limit", "1000",
                          "--rate-burst", "1000")
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(server.ws_url("bytes"))
        await frames(ws, "history", 1)
        for i in range(20):  # 20 x 16 KB at once: the bucket holds 4 s of 40 KB/s
            await send(ws, EMOJI_TEXT, str(i))
        echoes = await frames(ws, "message", 20, 30)
        assert [m["cid"] for m in echoes] == [str(i) for i in range(20)]
        await ws.close()
    assert server.metric("scalechat_reads_throttled_total") >= 1
    assert server.metric("scalechat_messages_rejected_total", 'reason="rate_limited"') == 0


# --- 2. history to a joiner: shared, and counted against its send buffer ---------------------


async def test_joiners_that_never_read_share_the_history_instead_of_copying_it(start_server):
    server = start_server(*UNLIMITED)
    async with aiohttp.ClientSession() as session:
        await fill(session, server, "big", [EMOJI_TEXT] * 60)  # ~1 MB of history
        await asyncio.sleep(0.5)
        before = rss(server)
        silent = [silent_client(server.port, "big", "since=0") for _ in range(60)]
        try:
            await eventually(lambda: server.metric("scalechat_connections") == 60, 15,
                             "60 silent joiners")
            await asyncio.sleep(0.5)
            grown = rss(server) - before
            # Copied, each would hold half its 1 MiB send buffer: 60 x 512 KiB = 30 MiB.
            assert grown < 12 << 20, f"RSS grew {grown >> 20} MiB for 60 joiners"
        finally:
            for sock in silent:
                sock.close()


# --- 3. a condemned socket is gone within a bounded time ------------------------------------


async def test_clients_that_stop_reading_are_gone_and_their_slots_reused(start_server):
    # Big messages: the kernel's socket buffers (up to ~4 MB each on loopback) fill first.
    server = start_server("--max-connections", "12", "--send-buffer-bytes", "262144",
                          "--max-text-chars", "60000", "--max-message-bytes", "300000", *UNLIMITED)
    silent = [silent_client(server.port, "zombies", "name=z") for _ in range(10)]
    try:
        await eventually(lambda: server.metric("scalechat_connections") == 10, 10, "10 joiners")
        fds_with_silent = open_fds(server)
        async with aiohttp.ClientSession() as session:
            sender = await session.ws_connect(server.ws_url("zombies", "name=sender"))
            await frames(sender, "history", 1)
            for i in range(30):  # 30 x 240 KB: past the kernel's and scalechat's buffers
                await send(sender, EMOJI_TEXT * 15, str(i))
                await frames(sender, "message", 1)  # the sender reads its echoes
            started = time.monotonic()
            await eventually(lambda: server.metric("scalechat_connections") == 1, 10,
                             "the silent clients to be closed")
            assert time.monotonic() - started < 6  # close timeout 2 s, after the flood
            assert server.metric("scalechat_slow_consumer_disconnects_total") == 10
            # 10 freed; the sender holds one, metric scrapes may hold two more for a moment
            assert open_fds(server) <= fds_with_silent - 10 + 3
            newcomers = [await session.ws_connect(server.ws_url("zombies")) for _ in range(3)]
            for ws in newcomers:
                assert (await frames(ws, "history", 1))[0]["type"] == "history"
                await ws.close()
            async with asyncio.timeout(5):  # the count dropped with them (presence leaves)
                while (await frames(sender, "presence", 1))[0]["count"] > 4:
                    pass
            await sender.close()
    finally:
        for sock in silent:
            sock.close()


# --- 5. presence is rate-limited --------------------------------------------------------------


async def test_a_join_leave_loop_costs_the_others_a_few_presence_frames_a_second(start_server):
    server = start_server()
    async with aiohttp.ClientSession() as session:
        watcher = await session.ws_connect(server.ws_url("flood", "name=watcher"))
        await frames(watcher, "history", 1)
        started = time.monotonic()
        loops = 0
        while time.monotonic() - started < 2.0:
            ws = await session.ws_connect(server.ws_url("flood", "name=flapper"))
            await frames(ws, "history", 1)
            await ws.close()
            loops += 1
        await asyncio.sleep(0.3)  # the last coalesced release
        seen = 0
        while True:
            try:
                frame = await watcher.receive_json(timeout=0.3)
            except TimeoutError:
                break
            seen += frame["type"] == "presence"
        assert loops >= 30, loops  # ~2 x loops presence events happened
        assert seen <= 20 + 10 * 2.5 + 2, (seen, loops)  # burst + rate x elapsed
        last = frame if frame["type"] == "presence" else None
        await watcher.close()
    assert last is None or last["count"] == 1


async def test_joins_per_address_are_limited_with_429(start_server):
    server = start_server("--joins-per-address", "2")  # bursts of 20
    async with aiohttp.ClientSession() as session:
        statuses = []
        for _ in range(25):
            try:
                ws = await session.ws_connect(server.ws_url("door"))
                statuses.append(101)
                await ws.close()
            except aiohttp.WSServerHandshakeError as exc:
                statuses.append(exc.status)
        assert statuses[:20] == [101] * 20 and 429 in statuses[20:]
    assert server.metric("scalechat_connections_refused_total", 'reason="join_rate"') >= 1
