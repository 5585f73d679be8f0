"""Functional tests against the real server process (``scalechat serve``)."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request

import aiohttp
import jwt
import pytest

from scalechat.loadgen.wsclient import HandshakeError, connect


async def recv_json(ws: aiohttp.ClientWebSocketResponse, timeout: float = 5.0) -> dict:
    msg = await ws.receive(timeout=timeout)
    assert msg.type is aiohttp.WSMsgType.TEXT, f"expected a text frame, got {msg}"
    return json.loads(msg.data)


async def recv_until(ws, predicate, timeout: float = 5.0) -> dict:
    """Next frame matching ``predicate``; skips others (e.g. presence)."""
    deadline = time.monotonic() + timeout
    while True:
        frame = await recv_json(ws, max(0.01, deadline - time.monotonic()))
        if predicate(frame):
            return frame


def of_type(kind):
    return lambda frame: frame["type"] == kind


async def join(session, server, room, query="", **kwargs):
    ws = await session.ws_connect(server.ws_url(room, query), **kwargs)
    history = await recv_json(ws)
    assert history["type"] == "history"
    return ws, history


def send(ws, text, cid=None):
    frame = {"type": "message", "text": text}
    if cid is not None:
        frame["cid"] = cid
    return ws.send_str(json.dumps(frame))


def http_status(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


# --- rooms, seq, history, presence ---------------------------------------------------


async def test_rooms_are_isolated_and_seq_has_no_gaps(chat_server, session):
    a1, _ = await join(session, chat_server, "alpha", "name=a1")
    a2, _ = await join(session, chat_server, "alpha", "name=a2")
    b1, _ = await join(session, chat_server, "beta", "name=b1")
    for i in range(20):
        await send(a1 if i % 2 else a2, f"alpha {i}", cid=str(i))
        await send(b1, f"beta {i}")
    for ws, room in ((a1, "alpha"), (a2, "alpha"), (b1, "beta")):
        frames = [await recv_until(ws, of_type("message")) for _ in range(20)]
        assert [f["seq"] for f in frames] == list(range(1, 21))
        assert {f["room"] for f in frames} == {room}
        assert all(f["text"].startswith(room) for f in frames)
    echo = [f for f in frames if f.get("cid")]  # b1 sent without cid
    assert echo == []


async def test_sender_gets_its_echo_with_cid_and_metadata(chat_server, session):
    ws, history = await join(session, chat_server, "echo", "name=alice")
    assert history["name"] == "alice" and history["epoch"] and history["messages"] == []
    await send(ws, "hello <b>", cid="c-1")
    frame = await recv_until(ws, of_type("message"))
    assert frame["from"] == "alice" and frame["text"] == "hello <b>" and frame["cid"] == "c-1"
    assert frame["seq"] == 1 and frame["id"] and abs(frame["ts"] / 1000 - time.time()) < 60


async def test_history_on_join_and_since_resume(start_server, session):
    server = start_server("--history-on-join", "5")
    ws, first = await join(session, server, "h", "name=w")
    for i in range(12):
        await send(ws, f"m{i}")
    for _ in range(12):
        await recv_until(ws, of_type("message"))
    _, latest = await join(session, server, "h", "name=late")
    assert [m["seq"] for m in latest["messages"]] == [8, 9, 10, 11, 12] and latest["last_seq"] == 12
    _, resumed = await join(session, server, "h", f"name=r&since=3&epoch={first['epoch']}")
    assert [m["seq"] for m in resumed["messages"]] == list(range(4, 13))
    assert resumed["continuity_lost"] is False
    _, stale = await join(session, server, "h", "name=s&since=3&epoch=other")
    assert stale["continuity_lost"] is True and [m["seq"] for m in stale["messages"]] == [8, 9, 10, 11, 12]


async def test_restart_changes_epoch_and_reports_lost_continuity(start_server, session):
    server = start_server()
    ws, history = await join(session, server, "r", "name=a")
    await send(ws, "before restart")
    await recv_until(ws, of_type("message"))
    await ws.close()
    server.stop()
    server = start_server(port=server.port)
    _, after = await join(session, server, "r", f"name=a&since=1&epoch={history['epoch']}")
    assert after["epoch"] != history["epoch"] and after["continuity_lost"] is True


async def test_presence_counts_joins_and_leaves(chat_server, session):
    a, _ = await join(session, chat_server, "p", "name=ann")
    assert await recv_json(a) == {"type": "presence", "room": "p", "event": "join", "name": "ann", "count": 1}
    b, _ = await join(session, chat_server, "p", "name=ben")
    assert (await recv_json(a))["count"] == 2
    await b.close()
    left = await recv_until(a, lambda f: f["type"] == "presence" and f["event"] == "leave")
    assert left["name"] == "ben" and left["count"] == 1


# --- refusals before the upgrade -----------------------------------------------------


@pytest.mark.parametrize("path,reason", [
    ("/ws/bad%20room", "room must match"),
    ("/ws/", "room must match"),
    ("/ws/-x", "room must match"),
    ("/ws/ok?name=" + "x" * 40, "name must be"),
    ("/ws/ok?since=abc", "since must be"),
])
async def test_bad_requests_get_400_with_reason(chat_server, path, reason):
    with pytest.raises(HandshakeError) as info:
        await connect(f"ws://127.0.0.1:{chat_server.port}{path}")
    assert info.value.status == 400 and reason in info.value.body


async def test_disallowed_origin_gets_403(start_server, session):
    server = start_server("--allowed-origins", "https://chat.example")
    with pytest.raises(HandshakeError) as info:
        await connect(server.ws_url("o"), headers={"Origin": "https://evil.example"})
    assert info.value.status == 403 and "evil.example" in info.value.body
    for origin in ("https://chat.example", f"http://127.0.0.1:{server.port}"):
        ws = await connect(server.ws_url("o"), headers={"Origin": origin})
        assert json.loads(await ws.recv())["type"] == "history"
        await ws.close()


async def test_connection_limit_gets_503(start_server, session):
    server = start_server("--max-connections", "2")
    held = [await join(session, server, "full") for _ in range(2)]
    with pytest.raises(HandshakeError) as info:
        await connect(server.ws_url("full"))
    assert info.value.status == 503 and "connection limit" in info.value.body
    await held[0][0].close()
    await asyncio.sleep(0)  # the slot frees when the server sees the close

    async def admitted():
        try:
            ws = await connect(server.ws_url("full"))
        except HandshakeError:
            return None
        return ws

    deadline = time.monotonic() + 5
    while (ws := await admitted()) is None:
        assert time.monotonic() < deadline, "slot never freed"
        await asyncio.sleep(0.05)
    await ws.close()


async def test_auth_requires_a_valid_token(start_server, session):
    secret = "a-test-secret-that-is-32-bytes-long!"
    server = start_server("--auth-secret", secret)
    good = jwt.encode({"name": "tok-user", "exp": int(time.time()) + 60}, secret, algorithm="HS256")
    expired = jwt.encode({"name": "x", "exp": int(time.time()) - 10}, secret, algorithm="HS256")
    forged = jwt.encode({"name": "x"}, "another-secret-of-32-bytes-or-more", algorithm="HS256")
    for query, reason in (("", "missing ?token="), (f"token={expired}", "expired"),
                          (f"token={forged}", "invalid token"), ("token=garbage", "invalid token")):
        with pytest.raises(HandshakeError) as info:
            await connect(server.ws_url("a", query))
        assert info.value.status == 401 and reason in info.value.body
    _, history = await join(session, server, "a", f"token={good}&name=ignored")
    assert history["name"] == "tok-user"


# --- bad input after the upgrade -----------------------------------------------------


async def test_bad_frames_get_error_frames_and_the_socket_stays_open(start_server, session):
    server = start_server("--max-text-chars", "10")
    ws, _ = await join(session, server, "bad")
    cases = [("{not json", "bad_json"), ('{"type":"dance"}', "unknown_type"),
             ('{"type":"message","text":"  ","cid":"e1"}', "empty_text"),
             ('{"type":"message","text":"%s","cid":"e2"}' % ("y" * 11), "text_too_long")]
    for raw, code in cases:
        await ws.send_str(raw)
        frame = await recv_until(ws, of_type("error"))
        assert frame["code"] == code and frame["reason"]
    await send(ws, "still ok", cid="fine")
    assert (await recv_until(ws, of_type("message")))["cid"] == "fine"
    assert server.metric("scalechat_messages_rejected_total", 'reason="bad_json"') == 1


async def test_oversized_frame_closes_with_1009(start_server, session):
    server = start_server("--max-message-bytes", "1024")
    ws, _ = await join(session, server, "big")
    await send(ws, "x" * 2000)
    msg = await ws.receive(timeout=5)
    while msg.type is aiohttp.WSMsgType.TEXT:
        msg = await ws.receive(timeout=5)
    assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1009


async def test_binary_frame_closes_with_1003(chat_server, session):
    ws, _ = await join(session, chat_server, "bin")
    await ws.send_bytes(b"\x00\x01")
    msg = await ws.receive(timeout=5)
    while msg.type is aiohttp.WSMsgType.TEXT:
        msg = await ws.receive(timeout=5)
    assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1003


async def test_invalid_utf8_closes_with_1007(chat_server):
    ws = await connect(chat_server.ws_url("utf"))
    ws.send_text(b'{"type":"message","text":"\xff\xfe"}')
    code, _reason = await asyncio.wait_for(ws.closed, 5)
    assert code == 1007


async def test_rate_limit_errors_then_1008(start_server, session):
    server = start_server("--rate-limit", "1", "--rate-burst", "3")
    ws, _ = await join(session, server, "rl")
    for i in range(12):
        await send(ws, f"spam {i}", cid=f"s{i}")
    frames, close = [], None
    while close is None:
        msg = await ws.receive(timeout=5)
        if msg.type is aiohttp.WSMsgType.TEXT:
            frames.append(json.loads(msg.data))
        else:
            close = msg
    accepted = [f for f in frames if f["type"] == "message"]
    limited = [f for f in frames if f["type"] == "error"]
    assert [f["cid"] for f in accepted] == ["s0", "s1", "s2"]
    assert {f["code"] for f in limited} == {"rate_limited"} and limited[0]["cid"] == "s3"
    assert len(limited) == 3  # burst of drops closes
    assert close.type is aiohttp.WSMsgType.CLOSE and close.data == 1008


async def test_silent_client_is_closed_after_heartbeat_timeout(start_server):
    server = start_server("--heartbeat-seconds", "0.4")
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /ws/hb HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 b"Sec-WebSocket-Version: 13\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101")
    # Never answer the pings: the server must give up on us by itself.
    received = b""
    async with asyncio.timeout(10):
        while chunk := await reader.read(65536):
            received += chunk
    assert b"\x89" in received  # it did ping (opcode 0x9)
    writer.close()


async def test_compression_is_not_negotiated_by_default(chat_server, session):
    ws = await session.ws_connect(chat_server.ws_url("z"), compress=15)
    assert ws.compress == 0
    await ws.close()


async def test_compression_when_enabled_still_delivers_in_order(start_server, session):
    server = start_server("--compression")
    ws, _ = await join(session, server, "zz", compress=15)
    assert ws.compress == 15
    for i in range(30):
        await send(ws, f"{i} " + "compressible " * 50, cid=str(i))
    frames = [await recv_until(ws, of_type("message")) for _ in range(30)]
    assert [f["cid"] for f in frames] == [str(i) for i in range(30)]
    await ws.close()


# --- slow consumers ------------------------------------------------------------------


async def test_slow_consumer_is_cut_off_without_delaying_the_others(start_server, session):
    server = start_server("--send-buffer-bytes", "65536", "--rate-limit", "1000", "--rate-burst", "1000",
                          "--rate-limit-bytes", "1e9", "--max-text-chars", "60000")
    fast, _ = await join(session, server, "slow", "name=fast")
    sender, _ = await join(session, server, "slow", "name=sender")
    text = "x" * 30000

    async def round_trips(first: int, count: int) -> list[float]:
        latencies = []
        for i in range(first, first + count):
            start = time.perf_counter()
            await send(sender, text, cid=str(i))
            frame = await recv_until(fast, lambda f, i=i: f.get("cid") == str(i))
            latencies.append(time.perf_counter() - start)
            assert frame["seq"] == i + 1
            await recv_until(sender, lambda f, i=i: f.get("cid") == str(i))  # the sender reads too
        return sorted(latencies)

    before = await round_trips(0, 50)
    slow = await connect(server.ws_url("slow", "name=slow"))
    assert json.loads(await slow.recv())["type"] == "history"
    slow.pause_reading()
    during = await round_trips(50, 500)  # ~15 MB to the slow client: far past every buffer
    slow.resume_reading()
    code, reason = await asyncio.wait_for(slow.closed, 10)
    assert (code, reason) == (1013, "slow consumer")
    assert server.metric("scalechat_slow_consumer_disconnects_total") == 1
    # The fast member got every message at its usual pace (medians, generous for a noisy machine).
    assert during[len(during) // 2] <= 3 * before[len(before) // 2] + 0.01
    await sender.close()
    await fast.close()


# --- shutdown, metrics, info ---------------------------------------------------------


async def test_sigterm_closes_every_socket_with_1001_and_exits(start_server, session):
    server = start_server("--grace-seconds", "5")
    sockets = [(await join(session, server, f"room{i % 3}"))[0] for i in range(6)]
    server.proc.send_signal(15)
    for ws in sockets:
        msg = await ws.receive(timeout=10)
        while msg.type is aiohttp.WSMsgType.TEXT:
            msg = await ws.receive(timeout=10)
        assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1001 and msg.extra == "going away"
    assert await asyncio.to_thread(server.proc.wait, 10) == 0
    assert "stopped" in server.log()


async def test_metrics_answer_while_the_event_loop_is_blocked(start_server, session):
    server = start_server("--debug-endpoints")
    ws, _ = await join(session, server, "m", "name=m")
    await send(ws, "counted")
    await recv_until(ws, of_type("message"))
    stall = asyncio.create_task(session.post(f"{server.http_url}/debug/stall?seconds=4"))
    await asyncio.sleep(0.5)  # let the stall begin
    scrape = await asyncio.to_thread(lambda: urllib.request.urlopen(server.metrics_url, timeout=2).read().decode())
    assert not stall.done(), "the loop was not blocked during the scrape"
    assert "scalechat_messages_received_total 1.0" in scrape
    assert 'scalechat_host_info{' in scrape and "process_cpu_seconds_total" in scrape
    assert "scalechat_connections 1.0" in scrape and "scalechat_rooms 1.0" in scrape
    assert "scalechat_message_processing_seconds_count 1.0" in scrape
    assert "scalechat_messages_delivered_total 1.0" in scrape
    (await stall).release()


async def test_info_health_and_readiness(chat_server):
    status, body = http_status(chat_server.http_url + "/info")
    info = json.loads(body)
    assert status == 200 and info["host"]["cpu_count"] >= 1 and "cgroup_cpu_quota" in info["host"]
    assert info["settings"]["port"] == chat_server.port and info["settings"]["auth_secret"] == ""
    assert http_status(chat_server.http_url + "/healthz")[0] == 200
    assert http_status(chat_server.http_url + "/readyz") == (200, '{"ready": true}')


def test_invalid_setting_stops_startup_naming_it(tmp_path):
    import subprocess
    import sys
    result = subprocess.run([sys.executable, "-m", "scalechat.cli", "serve", "--rate-burst", "0"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "rate_burst" in result.stderr and "Traceback" not in result.stderr
    result = subprocess.run([sys.executable, "-m", "scalechat.cli", "serve"], capture_output=True,
                            text=True, timeout=30, env={"SCALECHAT_PORT": "eighty", "PATH": "/usr/bin"})
    assert result.returncode == 2 and "SCALECHAT_PORT" in result.stderr and "port" in result.stderr
