"""Before the upgrade: half-open clients are closed at the deadline and capped, oldest first,
while real clients upgrade and /healthz answers; malformed requests get a 400 and a line
per interval, not a traceback each. Against the real server process on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import re

import aiohttp

from raw_ws import http_exchange
from support import eventually

PARTIAL_HEAD = b"GET /ws/slow HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
CLOSED_LINE = "connections closed before the WebSocket upgrade"


class SlowClient(asyncio.Protocol):
    """Sends a request head that never ends, one byte at a time (slowloris)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.loop = asyncio.get_running_loop()
        self.opened_at = self.loop.time()
        self.closed_at: float | None = None
        transport.write(PARTIAL_HEAD)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed_at = self.loop.time()

    @property
    def open(self) -> bool:
        return self.closed_at is None


async def slow_clients(port: int, count: int, *, every: float = 0.0) -> list[SlowClient]:
    loop = asyncio.get_running_loop()
    clients = []
    for _ in range(count):
        _, client = await loop.create_connection(SlowClient, "127.0.0.1", port)
        clients.append(client)
        if every:
            await asyncio.sleep(every)  # pacing the attack, not waiting for a condition
    return clients


async def drip(clients: list[SlowClient], every: float) -> None:
    """One more header byte on every open socket each ``every`` seconds, until cancelled."""
    while True:
        await asyncio.sleep(every)
        for client in clients:
            if client.open:
                client.transport.write(b"a")


async def real_client_gets_through(session: aiohttp.ClientSession, server, room: str,
                                   headers: dict[str, str] | None = None) -> None:
    async with asyncio.timeout(5):
        ws = await session.ws_connect(server.ws_url(room, "name=real"), headers=headers)
        assert json.loads((await ws.receive()).data)["type"] == "history"
        await ws.send_str(json.dumps({"type": "message", "text": "through", "cid": room}))
        while json.loads((await ws.receive()).data).get("cid") != room:
            pass
        await ws.close()
        async with session.get(server.http_url + "/healthz") as response:
            assert response.status == 200


def log_lines(server, text: str) -> list[str]:
    return [line for line in server.log().splitlines() if text in line]


async def test_half_open_requests_are_closed_at_the_deadline_while_real_clients_get_through(
        start_server):
    deadline = 3.0
    server = start_server("--handshake-seconds", str(deadline))
    slow = await slow_clients(server.port, 300)
    dripping = asyncio.create_task(drip(slow, 0.25))
    try:
        await eventually(lambda: server.metric("scalechat_pending_handshakes") == 300, 2,
                         "the server to accept them all")
        async with aiohttp.ClientSession() as session:
            await real_client_gets_through(session, server, "during")
        assert all(client.open for client in slow), "closed before the deadline"
        await eventually(lambda: not any(client.open for client in slow), deadline + 5,
                         "every slow client closed")
    finally:
        dripping.cancel()
    ages = sorted(client.closed_at - client.opened_at for client in slow)
    assert deadline - 0.2 <= ages[0] and ages[-1] <= deadline + 1.5, (ages[0], ages[-1])
    assert server.metric("scalechat_handshakes_closed_total", 'reason="timeout"') == 300
    assert server.metric("scalechat_handshakes_closed_total", 'reason="overflow"') == 0
    assert server.metric("scalechat_pending_handshakes") == 0
    # The first closure is logged at once, the other 299 in one line at most 10 s later.
    assert len(log_lines(server, CLOSED_LINE)) == 1
    async with aiohttp.ClientSession() as session:
        await real_client_gets_through(session, server, "after")


async def test_a_slow_body_and_an_idle_keep_alive_connection_are_closed_at_the_deadline(
        start_server):
    deadline = 1.5
    server = start_server("--handshake-seconds", str(deadline))
    loop = asyncio.get_running_loop()
    opened = loop.time()
    slow_body = (b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n"
                 + b"x" * 10)  # answered, then the rest of the body never comes
    idle = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"  # answered, then kept alive
    streams = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(2)]
    for (_, writer), request in zip(streams, (slow_body, idle)):
        writer.write(request)
    for reader, writer in streams:
        async with asyncio.timeout(deadline + 3):
            received = await reader.read()  # until the server closes
        assert received.startswith(b"HTTP/1.1 200 ") and b'{"status": "ok"}' in received
        assert deadline - 0.2 <= loop.time() - opened <= deadline + 2
        writer.close()
    assert server.metric("scalechat_handshakes_closed_total", 'reason="timeout"') == 2


async def test_a_connection_sending_more_than_its_byte_budget_before_upgrading_is_closed(
        start_server):
    server = start_server("--max-handshake-bytes", "8192")
    headers = b"".join(b"X-Big-%d: %s\r\n" % (i, b"v" * 1000) for i in range(20))  # 20 KB
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /ws/big HTTP/1.1\r\nHost: 127.0.0.1\r\n" + headers)
    try:
        async with asyncio.timeout(5):
            assert await reader.read() == b""  # closed, nothing answered
    except ConnectionResetError:  # closed with part of our head unread
        pass
    writer.close()
    await eventually(lambda: server.metric("scalechat_handshakes_closed_total",
                                           'reason="too_big"') == 1, 5, "the closure counted")
    async with aiohttp.ClientSession() as session:  # a cookie of 6 KB is within the budget
        await real_client_gets_through(session, server, "cookie", {"Cookie": "big=" + "c" * 6000})


async def test_beyond_the_cap_the_oldest_half_open_connection_is_closed(start_server):
    cap = 50
    server = start_server("--max-pending-handshakes", str(cap), "--handshake-seconds", "60")
    slow: list[SlowClient] = []
    pending_seen = []

    async def attack():
        for _ in range(6):
            slow.extend(await slow_clients(server.port, 50, every=0.005))
            pending_seen.append(server.metric("scalechat_pending_handshakes"))

    attacking = asyncio.create_task(attack())
    async with aiohttp.ClientSession() as session:
        rounds = 0
        while not attacking.done():  # real clients all through the attack
            await real_client_gets_through(session, server, f"r{rounds}")
            rounds += 1
    await attacking
    # The newest stay open: `cap` less the real clients' connections pending at the last
    # closure (the session's keep-alive one, say).
    kept = sum(client.open for client in slow)
    assert cap - 3 <= kept <= cap
    assert [client.open for client in slow] == [False] * (300 - kept) + [True] * kept
    assert rounds >= 3 and max(pending_seen) <= cap
    assert server.metric("scalechat_handshakes_closed_total", 'reason="overflow"') >= 300 - cap
    assert len(log_lines(server, CLOSED_LINE)) == 1
    for client in slow:
        client.transport.abort()


async def test_malformed_requests_get_our_400_and_one_log_line_not_a_traceback_each(chat_server):
    requests = [b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
                b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
                b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n"] * 10
    for request in requests:
        status, body = await http_exchange(chat_server.port, request)
        assert status == 400 and re.fullmatch(rb"malformed HTTP request: [a-z ]+\n", body), body
    assert chat_server.metric("scalechat_http_malformed_requests_total") == len(requests)
    log = chat_server.log()
    assert "Traceback" not in log and "ERROR" not in log
    assert len(log_lines(chat_server, "malformed HTTP requests")) == 1
